"""Language-model data: datasets from what the user passed, collation, and the loaders.

Users may pass token ids (a tensor), raw strings, a UTF-8 text file path, or
a ``torch.utils.data.Dataset`` (of token ids, or of texts such as Hugging
Face ``{"text": ...}`` rows); None means the built-in corpus
(``training.corpus``: the standard library's source, byte-tokenized).

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
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

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
from utils.training.items import is_text_item, item_ids, item_ids_of, item_text, rows_of_batch

IGNORE_INDEX = -100  # label value that the loss and accuracy skip


class BlockDataset(Dataset):
    """Non-overlapping blocks of ``block_len`` tokens from one long id stream."""

    def __init__(self, ids: torch.Tensor, block_len: int) -> None:
        n_blocks = ids.numel() // block_len
        if n_blocks == 0:
            raise ValueError(f"{ids.numel()} tokens are too few for one block of {block_len}; pass more data")
        self.blocks = ids[: n_blocks * block_len].view(n_blocks, block_len)

    def __len__(self) -> int:
        return self.blocks.size(0)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.blocks[index]


class SequenceDataset(Dataset):
    """A list of variable-length 1-D id tensors, padded per batch by ``collate_lm_batch``."""

    def __init__(self, sequences: list[torch.Tensor]) -> None:
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.sequences[index]


@dataclass(frozen=True)
class LMData:
    """Train and validation datasets ready for ``make_loader``."""

    train: Dataset
    val: Dataset
    source: str


def prepare_lm_data(
    train_data: Any,
    val_data: Any,
    *,
    vocab_size: int,
    seq_len: int,
    val_fraction: float = 0.1,
    max_corpus_bytes: int = DEFAULT_CORPUS_BYTES,
) -> LMData:
    """Turn whatever the user passed into train and validation datasets.

    Args:
        train_data: None (the standard-library corpus), a tensor of token ids
            (1-D stream or 2-D rows), a list of strings or of ``{"text": ...}``
            dicts, a path to a UTF-8 text file, a list of id sequences, or a
            map-style ``Dataset`` whose items are id sequences, dicts with
            ``input_ids``, strings, or dicts with ``text``.
        val_data: the same kinds, or None to hold out the last ``val_fraction``
            of ``train_data`` (a deterministic split).
        vocab_size: the model's vocabulary; text needs at least 256.
        seq_len: the longest sequence a batch may hold.
        val_fraction: share held out for validation when ``val_data`` is None.
        max_corpus_bytes: cap on the built-in corpus size.

    Raises:
        TypeError: for a data type or data item it cannot use.
        ValueError: for bad settings, ids outside the vocabulary, text with a
            vocabulary under 256, raw text passed as one string, a file that is
            missing or not UTF-8 text, or too little data to split.
    """
    check_number_in_range(val_fraction, "val_fraction", 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    check_positive_int(vocab_size, "vocab_size")
    check_positive_int(seq_len, "seq_len")
    check_positive_int(max_corpus_bytes, "max_corpus_bytes")
    if train_data is None:
        _check_text_vocab(vocab_size, "train_data=None (the built-in text corpus)")
        ids = torch.frombuffer(bytearray(load_stdlib_corpus(max_corpus_bytes)), dtype=torch.uint8).long()
        # The corpus tail is held out even when val_data is given, so train is the same either way.
        train, held_out = _split_stream(ids, seq_len, val_fraction)
        source = "python-stdlib"
    else:
        train, held_out, source = _as_dataset(train_data, "train_data", vocab_size, seq_len), None, "user"
    if val_data is not None:
        return LMData(train, _as_dataset(val_data, "val_data", vocab_size, seq_len), source)
    if held_out is None:
        train, held_out = _split_dataset(train, val_fraction)
    return LMData(train, held_out, source)


def _as_dataset(data: Any, arg: str, vocab_size: int, seq_len: int) -> Dataset:
    dataset = _build_dataset(data, arg, vocab_size, seq_len)
    if len(dataset) == 0:
        raise ValueError(f"{arg} holds no sequences; pass at least one non-empty sequence")
    return dataset


def _build_dataset(data: Any, arg: str, vocab_size: int, seq_len: int) -> Dataset:
    """Pick the builder for the kind of ``data``; every builder's errors name ``arg``."""
    rows = rows_of_batch(data)  # a tokenizer's BatchEncoding: one {'input_ids', 'attention_mask'} row each
    if rows is not None:
        return _list_dataset(rows, arg, vocab_size, seq_len) if rows else SequenceDataset([])
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
        "a list of strings, a path to a text file, or a torch.utils.data.Dataset"
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
    _check_ids(torch.cat(seqs), arg, vocab_size)
    return SequenceDataset(_chunk(seqs, seq_len))


def _text_dataset(texts: Iterable[str], arg: str, vocab_size: int, seq_len: int, what: str) -> Dataset:
    """UTF-8 byte ids of each text, cut into ``seq_len`` pieces; empty texts are dropped."""
    _check_text_vocab(vocab_size, f"{arg} ({what})")  # before ``texts`` is read, so a bad vocab fails fast
    if vocab_size > ByteTokenizer.vocab_size:
        warnings.warn(
            f"{arg} is text, which is encoded as UTF-8 bytes (ids 0-255): only {ByteTokenizer.vocab_size} of the "
            f"model's {vocab_size} token ids are used; pass token ids from your own tokenizer to use them all",
            stacklevel=6,
        )
    tokenizer = ByteTokenizer()
    return SequenceDataset(_chunk([torch.tensor(tokenizer.encode(t)) for t in texts if t], seq_len))


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
    return BlockDataset(torch.frombuffer(bytearray(raw), dtype=torch.uint8).long(), seq_len)


def _tensor_dataset(data: torch.Tensor, arg: str, vocab_size: int, seq_len: int) -> Dataset:
    if data.is_floating_point() or data.is_complex():
        raise TypeError(f"{arg} must hold integer token ids, got dtype {data.dtype}")
    ids = data.detach().cpu().long()
    _check_ids(ids, arg, vocab_size)
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


def _check_ids(ids: torch.Tensor, arg: str, vocab_size: int) -> None:
    if ids.numel() == 0:
        raise ValueError(f"{arg} is empty")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{arg} holds token ids in [{low}, {high}], outside the vocabulary [0, {vocab_size - 1}]")


def _split_stream(ids: torch.Tensor, seq_len: int, val_fraction: float) -> tuple[Dataset, Dataset]:
    n_val = max(seq_len, int(ids.numel() * val_fraction))
    if ids.numel() - n_val < seq_len:
        raise ValueError(f"{ids.numel()} tokens are too few to hold out validation data; pass more text")
    return BlockDataset(ids[:-n_val], seq_len), BlockDataset(ids[-n_val:], seq_len)


def _split_dataset(dataset: Dataset, val_fraction: float) -> tuple[Dataset, Dataset]:
    n = len(dataset)
    n_val = max(1, int(n * val_fraction))
    if n - n_val < 1:
        raise ValueError(f"train_data has only {n} sequence(s); pass val_data or more data")
    indices = list(range(n))
    return torch.utils.data.Subset(dataset, indices[:-n_val]), torch.utils.data.Subset(dataset, indices[-n_val:])


def collate_lm_batch(
    items: list[Any], pad_token_id: int, vocab_size: int | None = None, max_len: int | None = None
) -> dict[str, Any]:
    """Pad a list of id sequences into a batch.

    Returns a dict with ``input_ids`` (B, T), ``labels`` (B, T) with padding
    set to ``IGNORE_INDEX``, ``attention_mask`` (B, T) or None when nothing is
    padded, ``n_tokens`` (real tokens) and ``n_targets`` (next-token targets).
    The counts are taken here, on the CPU, so the training loop never syncs for them.
    """
    seqs = [item_ids(item) for item in items]
    T = max(s.numel() for s in seqs)
    if max_len is not None and T > max_len:
        raise ValueError(
            f"a data item has {T} tokens, more than seq_len={max_len}; shorten your dataset's items "
            "or pass a larger seq_len (up to the model's max_seq_len)"
        )
    input_ids = torch.full((len(seqs), T), pad_token_id, dtype=torch.long)
    labels = torch.full((len(seqs), T), IGNORE_INDEX, dtype=torch.long)
    for row, s in enumerate(seqs):
        input_ids[row, : s.numel()] = s
        labels[row, : s.numel()] = s
    if vocab_size is not None:
        _check_ids(input_ids, "a data item", vocab_size)
    padded = any(s.numel() < T for s in seqs)
    real = labels != IGNORE_INDEX
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": real.long() if padded else None,
        "n_tokens": int(real.sum()),
        "n_targets": int(real[:, 1:].sum()),
    }


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    pad_token_id: int,
    vocab_size: int | None = None,
    max_len: int | None = None,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` and the epoch, and this rank's share of it.

    Shuffled loaders use a ``DistributedSampler`` in every run, a single
    process included (as rank 0 of 1): each epoch's order is
    ``randperm(seed + epoch)``, so call ``loader.sampler.set_epoch(epoch)``.
    Then N ranks with ``batch_size`` B each see, step by step, exactly the
    samples one process sees with ``N * B``. Unshuffled loaders give rank r
    the items r, r + N, ... with no padding, so sums over ranks count every
    item once. Items longer than ``max_len`` are an error, never silently cut.
    """
    if shuffle:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    else:
        sampler = range(rank, len(dataset), world_size) if world_size > 1 else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=lambda items: collate_lm_batch(items, pad_token_id, vocab_size, max_len),
        pin_memory=pin_memory,
    )
