"""Language-model data: datasets from what the user passed, tokenized by the run's tokenizer.

Users may pass token ids (a tensor), raw strings, a UTF-8 text file path, a
``torch.utils.data.Dataset`` (of token ids, or of texts such as Hugging Face
``{"text": ...}`` rows), a Hugging Face ``datasets`` dataset, or a data file or
folder (``training.text_data``); None means the built-in corpus (``training.corpus``:
the standard library's source). Text is tokenized as UTF-8 bytes, or by the
``tokenizer=`` of the run (``training.tokenization``); batches are made in
``training.loaders``.

Example:
    >>> data = prepare_lm_data(None, None, vocab_size=256, seq_len=128)
    >>> loader = make_loader(data.train, batch_size=8, shuffle=True, seed=0, pad_token_id=0)
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from utils.checks import check_number_in_range, check_positive_int

# Re-exported: callers import the corpus and tokenizer names from utils.training.data too.
from utils.training.corpus import (  # noqa: F401
    DEFAULT_CORPUS_BYTES,
    ByteTokenizer,
    check_text_bytes,
    load_stdlib_corpus,
    stdlib_source_files,
    text_file_path,
)
from utils.training.items import is_text_item, item_ids, item_ids_of, item_text, rows_of_batch  # noqa: F401

# Re-exported: the batches are made in utils.training.loaders; callers import these names from here too.
from utils.training.loaders import (  # noqa: F401
    IGNORE_INDEX,
    check_ids,
    collate_lm_batch,
    make_loader,
    text_token_bytes,
)
from utils.training.text_data import (
    TextOptions,
    TextSource,
    corpus_sources,
    encode_texts,
    held_out_size,
    is_data_path,
    is_hf_dataset,
    read_text_source,
    text_source_of,
    training_texts,
)
from utils.training.tokenization import TextTokenizer, check_fits, is_bytes_spec, resolve_tokenizer


class BlockDataset(Dataset):
    """Non-overlapping blocks of ``block_len`` tokens from one long id stream.

    ``token_bytes``: for a stream made from text, the byte table of its tokenizer (see ``text_token_bytes``).
    """

    def __init__(self, ids: torch.Tensor, block_len: int, token_bytes: torch.Tensor | None = None) -> None:
        n_blocks = ids.numel() // block_len
        if n_blocks == 0:
            raise ValueError(f"{ids.numel()} tokens are too few for one block of {block_len}; pass more data")
        self.blocks = ids[: n_blocks * block_len].view(n_blocks, block_len)
        self.token_bytes = token_bytes

    def __len__(self) -> int:
        return self.blocks.size(0)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.blocks[index]


class SequenceDataset(Dataset):
    """A list of variable-length 1-D id tensors, padded per batch by ``collate_lm_batch``."""

    def __init__(self, sequences: list[torch.Tensor], token_bytes: torch.Tensor | None = None) -> None:
        self.sequences = sequences
        self.token_bytes = token_bytes  # as for BlockDataset

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.sequences[index]


@dataclass(frozen=True)
class LMData:
    """Train and validation datasets ready for ``make_loader``, and the tokenizer their text was encoded with."""

    train: Dataset
    val: Dataset
    source: str
    tokenizer: TextTokenizer | None = None


def prepare_lm_data(
    train_data: Any,
    val_data: Any,
    *,
    vocab_size: int,
    seq_len: int,
    val_fraction: float = 0.1,
    max_corpus_bytes: int = DEFAULT_CORPUS_BYTES,
    tokenizer: Any = "bytes",
    text_column: str | None = None,
    seed: int = 0,
    progress: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> LMData:
    """Turn whatever the user passed into train and validation datasets.

    Args:
        train_data: None (the standard-library corpus), a tensor of token ids
            (1-D stream or 2-D rows), a list of strings or of ``{"text": ...}``
            dicts, a path to a UTF-8 text file, a list of id sequences, a
            map-style ``Dataset`` whose items are id sequences, dicts with
            ``input_ids``, strings, or dicts with ``text``, a Hugging Face
            ``datasets`` dataset, or a .jsonl/.json/.csv/.parquet file or a folder of them.
        val_data: the same kinds, or None to hold out the last ``val_fraction``
            of ``train_data`` (a deterministic split).
        vocab_size: the model's vocabulary; text needs at least 256.
        seq_len: the longest sequence a batch may hold.
        val_fraction: share held out for validation when ``val_data`` is None.
        max_corpus_bytes: cap on the built-in corpus size.
        tokenizer: how text becomes ids (``utils.training.tokenization``): 'bytes', 'bpe'
            (trained here on the training text only: the corpus's training part, or the
            first ``1 - val_fraction`` of ``train_data``'s text when ``val_data`` is None),
            'gpt2', 'auto', a tokenizer.json path or a tokenizer object.
        text_column: the column of a Hugging Face dataset or data file that holds the text.
        seed: seeds the sample a 'bpe' trains on when the text is very large.
        progress: say what 'auto' chose, and show a bar while a large text is tokenized.
        cache_dir: where the ids of large files and datasets are kept for the next run.

    Raises:
        TypeError: for a data type or data item it cannot use.
        ValueError: for bad settings, ids outside the vocabulary, text with a
            vocabulary under 256, raw text passed as one string, a file that is
            missing or not UTF-8 text, too little data to split, or a tokenizer
            with more ids than the model.
    """
    check_number_in_range(val_fraction, "val_fraction", 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    check_positive_int(vocab_size, "vocab_size")
    check_positive_int(seq_len, "seq_len")
    check_positive_int(max_corpus_bytes, "max_corpus_bytes")
    options = TextOptions(text_column, progress, Path(cache_dir) if cache_dir is not None else None)
    if not is_bytes_spec(tokenizer, vocab_size):
        return _prepare_tokenized(
            train_data, val_data, tokenizer, vocab_size, seq_len, val_fraction, max_corpus_bytes, seed, options
        )
    bytes_tokenizer = tokenizer if isinstance(tokenizer, TextTokenizer) else TextTokenizer("bytes")
    if tokenizer == "auto":
        bytes_tokenizer.note = f"tokenizer='auto' chose 'bytes' for the model's vocab_size={vocab_size}"
        _say(bytes_tokenizer, options)
    if train_data is None:
        _check_text_vocab(vocab_size, "train_data=None (the built-in text corpus)")
        ids = torch.frombuffer(bytearray(load_stdlib_corpus(max_corpus_bytes)), dtype=torch.uint8).long()
        # The corpus tail is held out even when val_data is given, so train is the same either way.
        train, held_out = _split_stream(ids, seq_len, val_fraction, bytes_tokenizer.token_bytes)
        source = "python-stdlib"
    else:
        train, held_out = _as_dataset(train_data, "train_data", vocab_size, seq_len, options), None
        source = "user"
    if val_data is not None:
        val = _as_dataset(val_data, "val_data", vocab_size, seq_len, options)
        return LMData(train, val, source, bytes_tokenizer)
    if held_out is None:
        train, held_out = _split_dataset(train, val_fraction)
    return LMData(train, held_out, source, bytes_tokenizer)


def _prepare_tokenized(
    train_data: Any,
    val_data: Any,
    spec: Any,
    vocab_size: int,
    seq_len: int,
    val_fraction: float,
    max_corpus_bytes: int,
    seed: int,
    options: TextOptions,
) -> LMData:
    """``prepare_lm_data`` with a tokenizer other than bytes: read the text, resolve (or train) it, encode."""
    if train_data is None:
        train_text, held_text = corpus_sources(max_corpus_bytes, seq_len, val_fraction)
        train_source, share = train_text, 1.0
    else:
        train_source, held_text, share = text_source_of(train_data, "train_data", options), None, 1 - val_fraction
    val_source = text_source_of(val_data, "val_data", options) if val_data is not None else None
    share = 1.0 if val_data is not None else share
    texts = (lambda: training_texts(train_source, share)) if isinstance(train_source, TextSource) else None
    tokenizer = resolve_tokenizer(spec, vocab_size, training_text=texts, seed=seed)
    _say(tokenizer, options)
    train = _dataset_of(train_source, "train_data", vocab_size, seq_len, tokenizer, options)
    held_out = _dataset_of(held_text, "the corpus tail", vocab_size, seq_len, tokenizer, options) if held_text else None
    source = "python-stdlib" if train_data is None else "user"
    if val_source is not None:
        return LMData(
            train, _dataset_of(val_source, "val_data", vocab_size, seq_len, tokenizer, options), source, tokenizer
        )
    if held_out is None:
        train, held_out = _split_dataset(train, val_fraction)
    return LMData(train, held_out, source, tokenizer)


def _dataset_of(
    source: Any, arg: str, vocab_size: int, seq_len: int, tokenizer: TextTokenizer, options: TextOptions
) -> Dataset:
    """A text source encoded by ``tokenizer`` (cut into blocks, or each text into pieces), or ids as they are."""
    if not isinstance(source, TextSource):
        return _as_dataset(source, arg, vocab_size, seq_len, options)
    check_fits(tokenizer, vocab_size)
    ids = encode_texts(tokenizer, source, options)
    if source.stream:
        dataset = BlockDataset(
            torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long), seq_len, tokenizer.token_bytes
        )
    else:
        dataset = SequenceDataset(_chunk(ids, seq_len), tokenizer.token_bytes)
    if len(dataset) == 0:
        raise ValueError(f"{arg} holds no text; pass at least one non-empty text")
    return dataset


def _say(tokenizer: TextTokenizer, options: TextOptions) -> None:
    """What 'auto' chose, and the tokenizer a run trains with, in one line (with ``progress``)."""
    if options.progress and (tokenizer.note or tokenizer.kind != "bytes"):
        chosen = f"{tokenizer.note}: " if tokenizer.note else ""
        print(f"{chosen}tokenizer {tokenizer.name} ({tokenizer.vocab_size} ids)")


def _as_dataset(data: Any, arg: str, vocab_size: int, seq_len: int, options: TextOptions) -> Dataset:
    dataset = _build_dataset(data, arg, vocab_size, seq_len, options)
    if len(dataset) == 0:
        raise ValueError(f"{arg} holds no sequences; pass at least one non-empty sequence")
    return dataset


def _build_dataset(data: Any, arg: str, vocab_size: int, seq_len: int, options: TextOptions) -> Dataset:
    """Pick the builder for the kind of ``data``; every builder's errors name ``arg``."""
    rows = rows_of_batch(data)  # a tokenizer's BatchEncoding: one {'input_ids', 'attention_mask'} row each
    if rows is not None:
        return _list_dataset(rows, arg, vocab_size, seq_len) if rows else SequenceDataset([])
    if is_hf_dataset(data) or is_data_path(data):  # a Hugging Face dataset, or data files: their text (or id rows)
        source = read_text_source(data, arg, options.text_column)
        if isinstance(source, TextSource):
            return _text_dataset(source.texts, arg, vocab_size, seq_len, source.what)
        return _list_dataset(source, arg, vocab_size, seq_len) if source else SequenceDataset([])
    if isinstance(data, Dataset):
        return _user_dataset(data, arg, vocab_size, seq_len)
    if isinstance(data, (str, os.PathLike)):
        return _file_dataset(data, arg, vocab_size, seq_len)
    if isinstance(data, torch.Tensor):
        return _tensor_dataset(data, arg, vocab_size, seq_len)
    if isinstance(data, (list, tuple)) and data:
        return _list_dataset(data, arg, vocab_size, seq_len)
    raise TypeError(
        f"{arg} has unsupported type {type(data).__name__}; pass None, a tensor of token ids, "
        "a list of strings, a path to a text file or data files, a torch.utils.data.Dataset, "
        "or a Hugging Face datasets.Dataset"
    )


def _user_dataset(data: Dataset, arg: str, vocab_size: int, seq_len: int) -> Dataset:
    """A map-style Dataset: text items are read once and tokenized; id items pass through as they are."""
    if isinstance(data, IterableDataset) or not hasattr(data, "__len__"):
        # The loaders index the data through a sampler and split it by position, so both are needed.
        raise TypeError(
            f"{arg} of type {type(data).__name__} has no len() or indexing; pass a map-style Dataset "
            "(with __len__ and __getitem__), a list, or a tensor of token ids"
        )
    if len(data) == 0:
        return data  # _as_dataset reports it
    first = data[0]
    if is_text_item(first):
        items = itertools.chain([first], (data[index] for index in range(1, len(data))))  # each item read once
        texts = (item_text(item, arg, index) for index, item in enumerate(items))
        return _text_dataset(texts, arg, vocab_size, seq_len, "a Dataset of texts")
    item_ids_of(first, arg, 0)  # an unusable item fails here, not in the first training batch
    return data


def _list_dataset(items: Sequence[Any], arg: str, vocab_size: int, seq_len: int) -> Dataset:
    """A list of texts or of id sequences, decided by the first item; a mixed list is an error."""
    if is_text_item(items[0]):
        what = "a list of strings" if isinstance(items[0], str) else "a list of {'text': ...} dicts"
        texts = (item_text(item, arg, index) for index, item in enumerate(items))
        return _text_dataset(texts, arg, vocab_size, seq_len, what)
    seqs = [item_ids_of(item, arg, index) for index, item in enumerate(items)]
    check_ids(torch.cat(seqs), arg, vocab_size)
    return SequenceDataset(_chunk(seqs, seq_len))


def _text_dataset(texts: Iterable[str], arg: str, vocab_size: int, seq_len: int, what: str) -> Dataset:
    """UTF-8 byte ids of each text, cut into ``seq_len`` pieces; empty texts are dropped."""
    _check_text_vocab(vocab_size, f"{arg} ({what})")  # before ``texts`` is read, so a bad vocab fails fast
    if vocab_size > ByteTokenizer.vocab_size:
        warnings.warn(
            f"{arg} is text, which is encoded as UTF-8 bytes (ids 0-255): only {ByteTokenizer.vocab_size} of the "
            f"model's {vocab_size} token ids are used; pass tokenizer='auto' (a BPE trained on your text, or "
            "GPT-2's for 50257) or your own tokenizer to use them all",
            stacklevel=6,
        )
    tokenizer = ByteTokenizer()
    seqs = [torch.tensor(tokenizer.encode(t)) for t in texts if t]
    return SequenceDataset(_chunk(seqs, seq_len), TextTokenizer("bytes").token_bytes)


def _file_dataset(data: str | os.PathLike, arg: str, vocab_size: int, seq_len: int) -> Dataset:
    """The bytes of a UTF-8 text file, cut into blocks of ``seq_len``."""
    path = text_file_path(data, arg)
    _check_text_vocab(vocab_size, f"{arg} (a text file)")
    raw = path.read_bytes()
    check_text_bytes(raw, arg, path)
    if len(raw) < seq_len:  # also keeps an empty file away from torch.frombuffer, which rejects it
        raise ValueError(
            f"{arg}={str(path)!r} holds {len(raw)} bytes, too few for one block of {seq_len}; pass a longer text file"
        )
    ids = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    return BlockDataset(ids, seq_len, TextTokenizer("bytes").token_bytes)


def _tensor_dataset(data: torch.Tensor, arg: str, vocab_size: int, seq_len: int) -> Dataset:
    if data.is_floating_point() or data.is_complex():
        raise TypeError(f"{arg} must hold integer token ids, got dtype {data.dtype}")
    ids = data.detach().cpu().long()
    check_ids(ids, arg, vocab_size)
    if ids.ndim == 1:
        if ids.numel() < seq_len:
            raise ValueError(
                f"{arg} holds {ids.numel()} tokens, too few for one block of {seq_len}; pass more token ids"
            )
        return BlockDataset(ids, seq_len)
    if ids.ndim == 2:
        if ids.size(1) > seq_len:
            raise ValueError(
                f"{arg} rows have {ids.size(1)} tokens but the model takes at most {seq_len}; "
                "pass a 1-D tensor to have it cut into blocks, or shorter rows"
            )
        return SequenceDataset(list(ids))
    raise ValueError(f"{arg} must be 1-D (a token stream) or 2-D (batch, seq), got shape {tuple(ids.shape)}")


def _chunk(seqs: list[torch.Tensor], seq_len: int) -> list[torch.Tensor]:
    """Cut sequences longer than ``seq_len`` into pieces, so no text is lost; drop empties."""
    return [piece for s in seqs for piece in s.long().split(seq_len) if piece.numel() > 0]


def _check_text_vocab(vocab_size: int, what: str) -> None:
    if vocab_size < ByteTokenizer.vocab_size:
        raise ValueError(
            f"{what} is tokenized as bytes (256 ids), but config.vocab_size={vocab_size}; "
            "use a model with vocab_size >= 256, or pass train_data as a tensor of ids below vocab_size"
        )


def _split_stream(
    ids: torch.Tensor, seq_len: int, val_fraction: float, token_bytes: torch.Tensor
) -> tuple[Dataset, Dataset]:
    n_val = held_out_size(ids.numel(), seq_len, val_fraction)
    if ids.numel() - n_val < seq_len:
        raise ValueError(f"{ids.numel()} tokens are too few to hold out validation data; pass more text")
    return BlockDataset(ids[:-n_val], seq_len, token_bytes), BlockDataset(ids[-n_val:], seq_len, token_bytes)


def _split_dataset(dataset: Dataset, val_fraction: float) -> tuple[Dataset, Dataset]:
    n = len(dataset)
    n_val = max(1, int(n * val_fraction))
    if n - n_val < 1:
        raise ValueError(f"train_data has only {n} sequence(s); pass val_data or more data")
    indices = list(range(n))
    return torch.utils.data.Subset(dataset, indices[:-n_val]), torch.utils.data.Subset(dataset, indices[-n_val:])
