"""What one training step of a model costs on this machine: its memory, the memory free, and its time.

These are the measurements behind the setup wizard's checks and estimates.
``estimate_training_memory`` reads Tier 1's memory check (the one place the
wizard reads that table); ``time_training_steps`` times the engine's own
``training_step`` on a copy of the model, so the wizard times what training
runs. ``utils.ui.run_estimate`` extrapolates the time to a whole run.

Example:
    >>> estimate_training_memory(model, config, seq_len=64, batch_size=8)["estimate_mb"]
    >>> format_duration(5400.0)
    '1.5 h'
"""

from __future__ import annotations

import os
import statistics
import time
import types
from typing import Any

import torch
import torch.nn as nn

from utils.checks import check_positive_int
from utils.device import MB, synchronize
from utils.diagnostics.memory import measure_training_memory
from utils.model_copy import private_copy
from utils.model_helpers import make_forward_fn, model_device, random_input_ids
from utils.training import loop
from utils.training.optim import build_optimizer
from utils.training.precision import MixedPrecisionStep, PrecisionPlan

# Optimizer steps timed per estimate, after one warm-up step (allocator growth, kernel selection).
TIMED_STEPS = 2


# -- memory --------------------------------------------------------------------------


def estimate_training_memory(model: nn.Module, config: Any, seq_len: int, batch_size: int) -> dict[str, Any]:
    """Parameters, gradients, AdamW state and activations for one training step, from Tier 1's memory check.

    The check runs at batch 1 and this sequence length (CUDA: the allocator's
    peak; elsewhere its saved-tensor estimate); activations grow linearly with
    the batch, so they are scaled to ``batch_size``. FP32 figures: mixed precision needs less.

    Returns:
        dict with estimate_mb, static_mb, activation_mb_per_sequence and method (a label saying how).
    """
    memory = measure_training_memory(model, config, batch_size=1, seq_len=seq_len)
    static_mb, activation_mb = float(memory["static_mb"]), float(memory["activation_mb"])
    return {
        "estimate_mb": static_mb + activation_mb * batch_size,
        "static_mb": static_mb,
        "activation_mb_per_sequence": activation_mb,
        "method": f"estimate: Tier 1 memory check at batch 1 x {seq_len} tokens ({memory['method']}), "
        f"activations x {batch_size}; fp32 with AdamW",
    }


def available_memory_mb(device: torch.device) -> tuple[float | None, str]:
    """Free memory on ``device`` in MiB, and what it is: CUDA's free memory, or the system RAM available."""
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return free_bytes / MB, f"free on {device}"
    if device.type != "cpu":
        return None, f"unknown on {device.type}"
    try:
        import psutil

        return psutil.virtual_memory().available / MB, "of system RAM available"
    except ImportError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / MB, "of system RAM free"
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
        return None, "unknown (install psutil to read it)"


# -- time ----------------------------------------------------------------------------


def time_training_steps(
    model: nn.Module,
    vocab_size: int,
    seq_len: int,
    batch_size: int,
    plan: PrecisionPlan,
    device: torch.device,
    *,
    timed_steps: int = TIMED_STEPS,
) -> float:
    """Median seconds of one training step (forward, loss, backward, clip, AdamW update) of a copy of ``model``.

    Each step is the engine's own ``training_step``, on random tokens.

    Raises:
        torch.cuda.OutOfMemoryError: the shape does not fit the GPU.
    """
    check_positive_int(timed_steps, "timed_steps")
    # The user's weights stay untouched: a copy proved independent, or the model itself, restored afterwards
    # (then it is timed where it is, since moving it would not be undone).
    with private_copy(model) as trial:
        device = device if trial is not model else model_device(model)
        trial.to(device).train()
        optimizer = build_optimizer(trial, learning_rate=1e-4)
        parts = _step_parts(trial, plan, optimizer, device)
        input_ids = random_input_ids(batch_size, seq_len, vocab_size, device)
        batch = {"input_ids": input_ids, "labels": input_ids, "attention_mask": None}
        times_s = []
        with torch.random.fork_rng(devices=_rng_devices(device)):  # dropout here leaves the caller's stream alone
            for _ in range(1 + timed_steps):
                times_s.append(_timed_step(parts, batch))
        del optimizer, parts
    return statistics.median(times_s[1:])  # the first step pays for allocation and kernel selection


def _step_parts(
    model: nn.Module, plan: PrecisionPlan, optimizer: torch.optim.Optimizer, device: torch.device
) -> types.SimpleNamespace:
    """The parts the engine's ``training_step`` reads, for one process training ``model`` uncompiled."""
    return types.SimpleNamespace(
        model=model,
        train_module=model,  # no DistributedDataParallel wrapper here
        forward=make_forward_fn(model),
        plan=plan,
        amp_step=MixedPrecisionStep(plan, optimizer, grad_clip=1.0),
        device=device,
    )


def _timed_step(parts: types.SimpleNamespace, batch: dict[str, Any]) -> float:
    """Seconds of one engine training step that ends in an optimizer update, synchronized at both edges."""
    synchronize(parts.device)  # deliberate: a timing edge
    start = time.perf_counter()
    loop.training_step(parts, batch, group_targets=batch["input_ids"].numel(), update=True)
    synchronize(parts.device)  # deliberate: a timing edge
    return time.perf_counter() - start


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def format_duration(seconds: float) -> str:
    """'0.36 s', '42 s', '7.5 min' or '3.2 h'."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["TIMED_STEPS", "available_memory_mb", "estimate_training_memory", "format_duration", "time_training_steps"]
