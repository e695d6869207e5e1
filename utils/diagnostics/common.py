"""What several checks share: which autocast precisions to compare, argument checks, and input ids.

Tier 1's output-stability and speed checks both compare autocast with FP32,
so the precision names, the per-device default and the plans live here once.
Tier 2's attention and attribution checks both take optional real
``input_ids``, checked here once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from utils.checks import check_choice, check_positive_int, check_sequence, is_collection
from utils.device import cuda_supports_bf16
from utils.model_helpers import ModelProbe, random_input_ids
from utils.training.precision import PRECISION_TABLE, resolve_precision

# Precision names come from the one precision table: fp32 runs with autocast off, the rest under autocast.
AUTOCAST_PRECISIONS = tuple(name for name in PRECISION_TABLE if name != "fp32")


def default_amp_precisions(device: torch.device) -> tuple[str, ...]:
    """The autocast precisions worth comparing with FP32 on ``device``."""
    if device.type == "cuda":
        # A GPU without native bf16 only emulates it, so comparing it tells nothing about real runs.
        return tuple(name for name in AUTOCAST_PRECISIONS if name != "bf16" or cuda_supports_bf16(device))
    if device.type == "cpu":
        return ("bf16",)  # fp16 autocast on CPU is slow and rarely what a CPU user would run
    return ()


def check_positive_ints(values: Iterable[int], name: str) -> tuple[int, ...]:
    """The sorted distinct values, or a ValueError naming ``name`` (and the bad item, by index).

    Example:
        >>> check_positive_ints([4, 1, 4], "batch_sizes")
        (1, 4)
    """
    return check_sequence(values, name, check_positive_int, items="positive ints", example="(1, 4)", convert=int)


def check_precision_names(
    values: Any, name: str, allowed: tuple[str, ...], *, allow_empty: bool = True
) -> tuple[str, ...]:
    """The distinct names in ``values``, in their order, each one of ``allowed``; else a ValueError naming ``name``."""
    if not is_collection(values):
        raise ValueError(f"{name} must be a sequence such as {allowed[-1:]!r}, got {values!r}")
    for index, value in enumerate(values):
        check_choice(value, f"{name}[{index}]", allowed)
    names = tuple(dict.fromkeys(values))
    if not names and not allow_empty:
        raise ValueError(f"{name} must name at least one of {allowed}, got {values!r}")
    return names


def amp_plans(device: torch.device, precisions: Sequence[str]) -> list[tuple[str, Any]]:
    """(name, PrecisionPlan) per checked autocast precision, or (name, error) where this device cannot run it."""
    plans = []
    for name in precisions:
        try:
            plans.append((name, resolve_precision(name, device=device)))
        except ValueError as err:  # e.g. bf16 on a GPU that only emulates it
            plans.append((name, err))
    return plans


def resolve_input_ids(probe: ModelProbe, input_ids: torch.Tensor | None, batch_size: int, seq_len: int) -> torch.Tensor:
    """The user's ``input_ids`` checked and moved to the model, or random ones."""
    if input_ids is None:
        return random_input_ids(batch_size, seq_len, probe.vocab_size, probe.device)
    check_input_ids(input_ids, probe)
    return input_ids.to(probe.device)


def check_input_ids(input_ids: Any, probe: ModelProbe) -> None:
    """Token ids the model can embed: an integer (B, T) tensor, T within max_seq_len, ids in [0, vocab_size)."""
    integer = isinstance(input_ids, torch.Tensor) and input_ids.dtype in (torch.int64, torch.int32)
    if not integer or input_ids.ndim != 2 or input_ids.numel() == 0:
        raise ValueError(
            f"input_ids must be a non-empty torch.long tensor of shape (batch, seq), got {input_ids!r:.80}; "
            "e.g. torch.tensor([[5, 6, 7]])"
        )
    if probe.max_seq_len and input_ids.shape[1] > probe.max_seq_len:
        raise ValueError(
            f"input_ids has {input_ids.shape[1]} tokens per sequence, more than max_seq_len={probe.max_seq_len}; "
            "truncate it"
        )
    low, high = int(input_ids.min()), int(input_ids.max())  # deliberate sync, once, at the edge
    if low < 0 or high >= probe.vocab_size:
        raise ValueError(
            f"input_ids holds token ids from {low} to {high}, outside the vocabulary [0, {probe.vocab_size}); "
            "check the tokenizer against config.vocab_size"
        )
