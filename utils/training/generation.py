"""Hear the model speak: ``generate`` samples text from any model the library can train.

The model is called through the same forward adapter as in training
(``model_helpers.make_forward_fn``), so any forward that takes ``input_ids`` and
returns logits works. A model that offers a key/value cache (a Hugging Face
causal LM: ``use_cache`` with ``cache``, or ``past_key_values`` before transformers 5)
feeds one new token per step; any other recomputes its context. The context never exceeds the model's
``max_seq_len``: past it, the oldest tokens slide out (and a cache is dropped).

Sampling draws from its own ``torch.Generator`` seeded with ``seed``: the same call
gives the same text on a CPU, and the global random state is left as it was.

Example:
    >>> out = generate(model, "def ", tokenizer=results["tokenizer"], max_new_tokens=40, temperature=0.8, top_k=40)
    >>> print(out.text)
    >>> out.new_ids
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from utils.checks import check_int, check_non_negative_number, check_number_in_range, check_positive_int
from utils.device import resolve_device
from utils.model_helpers import (
    config_size,
    detect_vocab_size,
    extract_logits,
    make_forward_fn,
    model_device,
    model_mode,
    validate_model,
)
from utils.training.text_tokenizer import TextTokenizer
from utils.training.tokenization import resolve_tokenizer


@dataclass(frozen=True)
class Generation:
    """What ``generate`` returns; ``str()`` of it is ``text``.

    Attributes:
        text: the prompt and the continuation, decoded together.
        completion: the continuation alone.
        ids: the prompt's ids and the new ones.
        new_ids: the new ids only.
        used_cache: whether the model's key/value cache fed the steps.
    """

    text: str
    completion: str
    ids: list[int]
    new_ids: list[int]
    used_cache: bool = False

    def __str__(self) -> str:
        return self.text


def generate(
    model: nn.Module,
    prompt: str | Sequence[int],
    *,
    tokenizer: Any = "bytes",
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    config: Any = None,
) -> Generation:
    """Continue ``prompt`` with ``max_new_tokens`` tokens sampled from ``model``.

    Args:
        model: any model the library trains: forward takes ``input_ids`` (B, T), returns logits (B, T, V).
        prompt: the text to continue (or its token ids); at least one token.
        tokenizer: what the model was trained with: 'bytes', 'gpt2', a ``TextTokenizer``
            (``results['tokenizer']``), a tokenizer.json path, a run's or export's folder, or a
            tokenizer object. A 'bpe' must be the trained one, not the word 'bpe'.
        max_new_tokens: tokens to add.
        temperature: 0 picks the most likely token each step (greedy); higher is more random.
        top_k: sample only among the k most likely tokens (None: all).
        top_p: sample only among the most likely tokens whose probabilities add up to top_p (None: all).
        seed: seeds the sampling; the same seed gives the same text on a CPU.
        device: 'auto' leaves the model where it is; a device moves it there first.
        config: the model's config (default ``model.config``), for ``vocab_size`` and ``max_seq_len``.

    Returns:
        A ``Generation``: ``text``, ``completion``, ``ids``, ``new_ids``, ``used_cache``.

    Raises:
        ValueError, TypeError: a bad argument, an empty prompt, or prompt ids outside the vocabulary.
    """
    validate_model(model)
    _check_sampling(max_new_tokens, temperature, top_k, top_p, seed)
    config = config if config is not None else getattr(model, "config", None)
    if device != "auto":
        model.to(resolve_device(device))
    on = model_device(model)
    vocab_size = detect_vocab_size(model, config)
    text_tokenizer = tokenizer if isinstance(tokenizer, TextTokenizer) else resolve_tokenizer(tokenizer, vocab_size)
    prompt_ids = _prompt_ids(prompt, text_tokenizer, vocab_size)
    generator = torch.Generator(device=on).manual_seed(seed)
    context = _Context(model, prompt_ids, config_size(config, "max_seq_len"), on)
    with model_mode(model, training=False), torch.no_grad():
        for _ in range(max_new_tokens):
            logits = context.next_logits()
            context.append(
                pick_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            )
    new_ids = context.ids[len(prompt_ids) :]
    return Generation(
        text=text_tokenizer.decode(context.ids),
        completion=text_tokenizer.decode(new_ids),
        ids=list(context.ids),
        new_ids=new_ids,
        used_cache=context.used_cache,
    )


def pick_next_token(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """One token id from next-token ``logits`` (V,): greedy at temperature 0, else a seeded draw.

    ``top_k`` keeps the k largest logits; ``top_p`` keeps the smallest set of most likely
    tokens whose probability reaches ``top_p`` (the most likely one always stays).
    """
    # int() reads the id on the host: a deliberate sync per generated token.
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered, order = logits.sort(descending=True)
        probs = ordered.softmax(-1)
        dropped = probs.cumsum(-1) - probs >= top_p  # the mass before a token already reaches top_p
        logits = logits.masked_fill(torch.zeros_like(dropped).scatter(0, order, dropped), float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


class _Context:
    """The ids so far and, for a model that offers one, its key/value cache."""

    def __init__(self, model: nn.Module, ids: list[int], max_len: int | None, device: torch.device) -> None:
        self.model, self.ids, self.max_len, self.device = model, list(ids), max_len, device
        self.forward = make_forward_fn(model)
        self.cache_name = cache_keyword(model)
        self.cache_ok = self.cache_name is not None
        self.past: Any = None
        self.used_cache = False

    def next_logits(self) -> torch.Tensor:
        """The logits (V,) for the token after ``ids``."""
        fits = self.max_len is None or len(self.ids) <= self.max_len
        if self.cache_ok and fits:
            new = self.ids[-1:] if self.past is not None else self.ids
            output = self.model(input_ids=self._tensor(new), **{self.cache_name: self.past}, use_cache=True)
            self.used_cache = self.used_cache or self.past is not None
            self.past = getattr(output, self.cache_name, None)
            self.cache_ok = self.past is not None  # a model that returns no cache recomputes from now on
        else:
            window = self.ids if self.max_len is None else self.ids[-self.max_len :]  # the oldest slide out
            output = self.forward(self._tensor(window), None)
        return extract_logits(output)[0, -1]

    def append(self, token: int) -> None:
        self.ids.append(token)

    def _tensor(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, T)


def cache_keyword(model: nn.Module) -> str | None:
    """The keyword a model's forward takes its key/value cache by ('cache', or the older 'past_key_values'), or None.

    Only a parameter of that name counts (with ``use_cache``), not a catch-all ``**kwargs``.
    """
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward that hides its signature offers no cache we can see
        return None
    if "use_cache" not in params:
        return None
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def _prompt_ids(prompt: Any, tokenizer: TextTokenizer, vocab_size: int) -> list[int]:
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, (list, tuple, torch.Tensor)):
        ids = [int(i) for i in (prompt.tolist() if isinstance(prompt, torch.Tensor) else prompt)]
    else:
        raise TypeError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
    if not ids:
        raise ValueError("prompt holds no token; pass at least one character (or token id) to continue")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(
            f"prompt holds token ids {bad[:5]} outside the model's vocabulary [0, {vocab_size - 1}]; "
            "pass the tokenizer the model was trained with"
        )
    return ids


def _check_sampling(max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any) -> None:
    check_positive_int(max_new_tokens, "max_new_tokens")
    check_non_negative_number(temperature, "temperature")
    check_positive_int(top_k, "top_k", allow_none=True)
    if top_p is not None:
        check_number_in_range(top_p, "top_p", 0.0, 1.0, low_inclusive=False, high_inclusive=True)
    check_int(seed, "seed")


__all__ = ["Generation", "cache_keyword", "generate", "pick_next_token"]
