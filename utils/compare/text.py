"""Each side's tokenizer in a comparison, and held-out text both sides are scored on.

``tokenizer=`` is resolved once per side against that side's vocabulary: the same
spec gives both sides the same tokenizer when their vocabularies agree, and may
give them different ones when not ('auto' picks GPT-2's for a 50257-id baseline,
say; 'bpe' trains one of each side's size). When the tokenizations differ, each
side reads the same held-out text through its own tokenizer, as many of its
sequences as cover the bytes your side's ``n_samples`` sequences cover, and the
verdict compares bits per byte, which does not depend on the tokenizer.

Example:
    >>> settings = with_resolved_tokenizer(settings, your_vocab)
    >>> base_settings, base_eval = baseline_text(settings, spec, (your_vocab, rival.vocab_size), test_data, eval_data)
"""

from __future__ import annotations

from typing import Any

import torch

from utils.compare.measure import epochs_for, held_out_data
from utils.training import loop
from utils.training.data import text_token_bytes
from utils.training.items import item_ids
from utils.training.text_data import corpus_sources
from utils.training.text_tokenizer import TextTokenizer
from utils.training.tokenization import is_bytes_spec, resolve_tokenizer


def with_resolved_tokenizer(settings: loop.TrainingSettings, vocab_size: int) -> loop.TrainingSettings:
    """The settings with ``tokenizer=`` resolved for one side (a 'bpe' trained once, on the corpus's training text).

    A bytes spec stays as it is, so the byte-level comparison runs exactly as it always has.
    """
    if is_bytes_spec(settings.tokenizer, vocab_size):
        return settings

    def corpus_text() -> list[str]:
        return corpus_sources(settings.max_corpus_bytes, settings.seq_len, 0.1)[0].texts

    tokenizer = resolve_tokenizer(settings.tokenizer, vocab_size, training_text=corpus_text, seed=settings.seed)
    return settings.replace(tokenizer=tokenizer)


def baseline_text(
    settings: loop.TrainingSettings,
    spec: Any,
    vocab_sizes: tuple[int, int],
    test_data: Any,
    eval_data: torch.utils.data.Dataset,
) -> tuple[loop.TrainingSettings, torch.utils.data.Dataset]:
    """The baseline's settings and evaluation data: yours when it reads text as yours does, else its own.

    Args:
        settings: your side's, with its tokenizer resolved; spec: ``tokenizer=`` as the user gave it.
        vocab_sizes: (yours, the baseline's); one vocabulary means one tokenizer.
    """
    your_vocab, vocab_size = vocab_sizes
    if vocab_size == your_vocab:  # every spec resolves alike for one vocabulary ('bpe' is deterministic)
        return settings, eval_data
    theirs = with_resolved_tokenizer(settings.replace(tokenizer=spec), vocab_size)
    if same_tokenizer(theirs.tokenizer, settings.tokenizer):
        return settings, eval_data
    matched, n_train = matching_evaluation_data(eval_data, test_data, vocab_size, theirs)
    # Its own tokens per epoch: enough epochs for the same optimizer steps as yours.
    return theirs.replace(n_epochs=epochs_for(theirs.max_steps, n_train, theirs)), matched


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two resolved ``tokenizer=`` values encode alike (the same name, or the same tokenizer.json)."""
    if isinstance(a, TextTokenizer) and isinstance(b, TextTokenizer):
        return a is b or a.to_json() == b.to_json()
    return a == b


def covered_bytes(dataset: torch.utils.data.Dataset) -> int | None:
    """The UTF-8 bytes of text a dataset's sequences hold (None for token ids, which have no text)."""
    table = text_token_bytes(dataset)
    if table is None:
        return None
    return sum(int(table[item_ids(dataset[i])].sum()) for i in range(len(dataset)))


def matching_evaluation_data(
    reference: torch.utils.data.Dataset, test_data: Any, vocab_size: int, settings: loop.TrainingSettings
) -> tuple[torch.utils.data.Dataset, int]:
    """The first held-out sequences under ``settings.tokenizer`` that cover the bytes ``reference`` covers.

    Returns:
        (those sequences, the number of training sequences under that tokenizer).
    """
    data = held_out_data(test_data, vocab_size, settings)
    target, table = covered_bytes(reference), text_token_bytes(data.val)
    if target is None or table is None:  # token ids: nothing to match by, so score the same count
        return torch.utils.data.Subset(data.val, range(min(len(reference), len(data.val)))), len(data.train)
    n, covered = 0, 0
    while n < len(data.val) and covered < target:
        covered += int(table[item_ids(data.val[n])].sum())
        n += 1
    return torch.utils.data.Subset(data.val, range(max(1, n))), len(data.train)


__all__ = ["baseline_text", "covered_bytes", "matching_evaluation_data", "same_tokenizer", "with_resolved_tokenizer"]
