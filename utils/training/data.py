"""Language-model data: the built-in corpus, a byte tokenizer, and user data.

The default corpus is the source of Python's own standard library, read at
run time from ``sysconfig``: real text that ships with every Python, so
nothing is downloaded. Users may instead pass token ids (a tensor), raw
strings, a text file path, or a ``torch.utils.data.Dataset``.

Example:
    >>> data = prepare_lm_data(None, None, vocab_size=256, seq_len=128)
    >>> loader = make_loader(data.train, batch_size=8, shuffle=True, seed=0, pad_token_id=0)
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

IGNORE_INDEX = -100  # label value that the loss and accuracy skip
DEFAULT_CORPUS_BYTES = 1_000_000


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255. Fits any model with ``vocab_size >= 256``."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def stdlib_source_files() -> list[Path]:
    """The corpus files: the standard library's top-level ``*.py`` files, sorted by name."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"no Python source found in the standard library folder {stdlib}")
    return files


def load_stdlib_corpus(max_bytes: int = DEFAULT_CORPUS_BYTES) -> bytes:
    """The standard library's source as one byte string, at most ``max_bytes`` long.

    The same interpreter always gives the same bytes: the file list is fixed
    and sorted, and each file is introduced by a one-line header.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    chunks, size = [], 0
    for path in stdlib_source_files():
        chunk = f"# ---- {path.name} ----\n".encode() + path.read_bytes() + b"\n"
        chunks.append(chunk)
        size += len(chunk)
        if size >= max_bytes:
            break
    return b"".join(chunks)[:max_bytes]


def describe_stdlib_corpus(max_bytes: int = DEFAULT_CORPUS_BYTES) -> dict[str, Any]:
    """Where the default corpus comes from, for reports."""
    return {
        "source": "Python standard library source (sysconfig 'stdlib')",
        "folder": sysconfig.get_paths()["stdlib"],
        "python": sysconfig.get_python_version(),
        "max_bytes": max_bytes,
    }


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
            (1-D stream or 2-D rows), a list of strings, a path to a text file,
            a list of id sequences, or a ``Dataset`` of id sequences.
        val_data: the same kinds, or None to hold out the last ``val_fraction``
            of ``train_data`` (a deterministic split).
        vocab_size: the model's vocabulary; text needs at least 256.
        seq_len: the longest sequence a batch may hold.
        val_fraction: share held out for validation when ``val_data`` is None.
        max_corpus_bytes: cap on the built-in corpus size.

    Raises:
        TypeError: for a data type it cannot use.
        ValueError: for ids outside the vocabulary, text with a vocabulary
            under 256, or too little data to split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if train_data is None:
        ids = torch.frombuffer(bytearray(load_stdlib_corpus(max_corpus_bytes)), dtype=torch.uint8).long()
        _check_text_vocab(vocab_size, "train_data=None (the built-in text corpus)")
        train, val = _split_stream(ids, seq_len, val_fraction)
        return LMData(train, _as_dataset(val_data, "val_data", vocab_size, seq_len) if val_data is not None else val,
                      "python-stdlib")
    train = _as_dataset(train_data, "train_data", vocab_size, seq_len)
    if val_data is not None:
        return LMData(train, _as_dataset(val_data, "val_data", vocab_size, seq_len), "user")
    return LMData(*_split_dataset(train, val_fraction), "user")


def _as_dataset(data: Any, arg: str, vocab_size: int, seq_len: int) -> Dataset:
    dataset = _build_dataset(data, arg, vocab_size, seq_len)
    if len(dataset) == 0:
        raise ValueError(f"{arg} holds no sequences; pass at least one non-empty sequence")
    return dataset


def _build_dataset(data: Any, arg: str, vocab_size: int, seq_len: int) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise ValueError(f"{arg}={str(data)[:60]!r} is not an existing file; pass raw text as a list of strings")
        _check_text_vocab(vocab_size, f"{arg} (a text file)")
        ids = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8).long()
        return BlockDataset(ids, seq_len)
    if isinstance(data, torch.Tensor):
        return _tensor_dataset(data, arg, vocab_size, seq_len)
    if isinstance(data, (list, tuple)) and data and all(isinstance(x, str) for x in data):
        _check_text_vocab(vocab_size, f"{arg} (a list of strings)")
        tokenizer = ByteTokenizer()
        return SequenceDataset(_chunk([torch.tensor(tokenizer.encode(t)) for t in data if t], seq_len))
    if isinstance(data, (list, tuple)) and data:
        seqs = [torch.as_tensor(x) for x in data]
        if any(s.ndim != 1 or s.is_floating_point() for s in seqs):
            raise TypeError(f"{arg} must hold 1-D integer token-id sequences")
        _check_ids(torch.cat(seqs), arg, vocab_size)
        return SequenceDataset(_chunk(seqs, seq_len))
    raise TypeError(
        f"{arg} has unsupported type {type(data).__name__}; pass None, a tensor of token ids, "
        "a list of strings, a path to a text file, or a torch.utils.data.Dataset"
    )


def _tensor_dataset(data: torch.Tensor, arg: str, vocab_size: int, seq_len: int) -> Dataset:
    if data.is_floating_point() or data.is_complex():
        raise TypeError(f"{arg} must hold integer token ids, got dtype {data.dtype}")
    ids = data.detach().cpu().long()
    _check_ids(ids, arg, vocab_size)
    if ids.ndim == 1:
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
    seqs = [_item_ids(item) for item in items]
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


def _item_ids(item: Any) -> torch.Tensor:
    if isinstance(item, dict):
        item = item.get("input_ids")
    ids = torch.as_tensor(item)
    if ids.ndim != 1 or ids.is_floating_point():
        raise TypeError(
            "each data item must be a 1-D sequence of integer token ids (or a dict with 'input_ids'), "
            f"got {type(item).__name__} with shape {tuple(ids.shape)}"
        )
    return ids.long()


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
