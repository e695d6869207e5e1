"""Batches for language-model training: padding a list of sequences (``collate_lm_batch``) and the loaders.

Every count the loop needs (real tokens, next-token targets, and for text the UTF-8
bytes those targets stand for) is taken here, on the CPU, so the loop never syncs for it.

Example:
    >>> loader = make_loader(dataset, batch_size=8, shuffle=True, seed=0, pad_token_id=0)
    >>> batch = next(iter(loader))
    >>> batch["input_ids"].shape, batch["n_targets"]
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from utils.training.items import item_ids

IGNORE_INDEX = -100  # label value that the loss and accuracy skip


def check_ids(ids: torch.Tensor, arg: str, vocab_size: int) -> None:
    """Raise, naming ``arg``, unless ``ids`` is non-empty and every id is in ``[0, vocab_size)``."""
    if ids.numel() == 0:
        raise ValueError(f"{arg} is empty")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{arg} holds token ids in [{low}, {high}], outside the vocabulary [0, {vocab_size - 1}]")


def collate_lm_batch(
    items: list[Any],
    pad_token_id: int,
    vocab_size: int | None = None,
    max_len: int | None = None,
    token_bytes: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Pad a list of id sequences into a batch.

    Returns a dict with ``input_ids`` (B, T), ``labels`` (B, T) with padding
    set to ``IGNORE_INDEX``, ``attention_mask`` (B, T) or None when nothing is
    padded, ``n_tokens`` (real tokens) and ``n_targets`` (next-token targets).
    With ``token_bytes`` (the UTF-8 bytes each id of the text's tokenizer stands
    for) it also holds ``n_target_bytes``, the bytes of text the targets cover.
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
        check_ids(input_ids, "a data item", vocab_size)
    padded = any(s.numel() < T for s in seqs)
    real = labels != IGNORE_INDEX
    batch = {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": real.long() if padded else None,
        "n_tokens": int(real.sum()),
        "n_targets": int(real[:, 1:].sum()),
    }
    if token_bytes is not None:
        targets = labels[:, 1:][real[:, 1:]]
        batch["n_target_bytes"] = int(token_bytes[targets].sum())
    return batch


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
    token_bytes: torch.Tensor | None = None,
) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` and the epoch, and this rank's share of it.

    Shuffled loaders use a ``DistributedSampler`` in every run, a single
    process included (as rank 0 of 1): each epoch's order is
    ``randperm(seed + epoch)``, so call ``loader.sampler.set_epoch(epoch)``.
    Then N ranks with ``batch_size`` B each see, step by step, exactly the
    samples one process sees with ``N * B``. Unshuffled loaders give rank r
    the items r, r + N, ... with no padding, so sums over ranks count every
    item once. Items longer than ``max_len`` are an error, never silently cut.
    ``token_bytes`` makes each batch count the bytes of text its targets cover
    (for bits per byte; see ``collate_lm_batch``).
    """
    if shuffle:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    else:
        sampler = range(rank, len(dataset), world_size) if world_size > 1 else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=lambda items: collate_lm_batch(items, pad_token_id, vocab_size, max_len, token_bytes),
        pin_memory=pin_memory,
    )


def text_token_bytes(dataset: Dataset) -> torch.Tensor | None:
    """The byte table of the tokenizer that made ``dataset`` from text (through any ``Subset``), or None.

    Datasets built from text carry their tokenizer's ``token_bytes``; token ids passed as
    they are carry none, so only text is scored in bits per byte.
    """
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return getattr(dataset, "token_bytes", None)


__all__ = ["IGNORE_INDEX", "check_ids", "collate_lm_batch", "make_loader", "text_token_bytes"]
