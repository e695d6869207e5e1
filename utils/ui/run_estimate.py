"""How long a whole wizard run takes here: the config inspected, a few steps timed, extrapolated to the run.

It sits above ``utils.ui.inspect`` (the step count, the shape and the
precision come from the inspection) and ``utils.ui.estimate`` (the timed
steps), which is why it is a module of its own: the inspection's memory check
reads ``estimate``, so the two cannot share one.

Example:
    >>> estimate = estimate_training_time(model, config, ConfigPresets.get("tiny"))
    >>> format_duration(estimate["total_s"]), estimate["method"]
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn as nn

from utils.checks import check_positive_int
from utils.device import resolve_device
from utils.ui.config import WizardConfig
from utils.ui.estimate import TIMED_STEPS, time_training_steps
from utils.ui.inspect import Inspection, inspect_config

# A validation batch is a forward pass only: about a third of a training step (forward + backward).
VALIDATION_STEP_FRACTION = 1 / 3


def estimate_training_time(
    model: nn.Module, model_config: Any, wizard_config: WizardConfig, *, timed_steps: int = TIMED_STEPS
) -> dict[str, Any]:
    """Time a few optimizer steps of ``model`` at the config's shape on its device, and extrapolate to the run.

    The steps run on a copy of the model (the user's weights never change), with
    random tokens, through the engine's own training step (AdamW, the
    mixed-precision step, the next-token loss). Without the user's data yet
    ('file' or 'folder' with no ``dataset_path``), the step count assumes
    ``max_corpus_bytes`` of text.

    Returns:
        dict with total_s, hours, seconds_per_step (per optimizer step),
        optimizer_steps, validation_s, device, precision, and method (how it was made).

    Raises:
        ValueError: a setting that the shape or the step count depends on is wrong (every problem listed).
        torch.OutOfMemoryError: one step does not fit the GPU.
    """
    check_positive_int(timed_steps, "timed_steps")
    cfg, model_config = wizard_config, model_config if model_config is not None else getattr(model, "config", None)
    found, assumed = _inspect_for_timing(cfg, model, model_config)
    device, seq_len, steps = resolve_device(cfg.device), found.model["seq_len"], found.optimizer_steps
    micro_s = time_training_steps(
        model, found.model["vocab_size"], seq_len, cfg.batch_size, found.plan, device, timed_steps=timed_steps
    )
    step_s = micro_s * cfg.gradient_accumulation_steps
    val_batches = math.ceil(found.data["n_val_sequences"] / cfg.batch_size)
    val_batches = min(val_batches, cfg.max_val_batches) if cfg.max_val_batches is not None else val_batches
    validation_s = cfg.n_epochs * val_batches * micro_s * VALIDATION_STEP_FRACTION
    data_note = f"{found.data['n_bytes']:,} bytes of " + ("text assumed (no dataset_path yet)" if assumed else "data")
    return {
        "total_s": steps * step_s + validation_s,
        "hours": (steps * step_s + validation_s) / 3600,
        "seconds_per_step": step_s,
        "optimizer_steps": steps,
        "validation_s": validation_s,
        "device": str(device),
        "precision": found.plan.name,
        "method": f"measured: median of {timed_steps} timed steps (after 1 warm-up) of batch {cfg.batch_size} x "
        f"{seq_len} tokens in {found.plan.name} on {device}; x {cfg.gradient_accumulation_steps} micro-batch(es) "
        f"per optimizer step, x {steps} steps for {data_note}, plus {val_batches} validation batch(es) per epoch "
        "(a forward is ~1/3 of a step)",
    }


def _inspect_for_timing(cfg: WizardConfig, model: nn.Module, model_config: Any) -> tuple[Inspection, bool]:
    """The inspection the estimate reads (no memory check), and whether the data size is assumed.

    Raises:
        ValueError: every problem the inspection found.
    """
    assumed = cfg.data_source in ("file", "folder") and cfg.dataset_path is None
    found = inspect_config(cfg.replace(data_source="builtin") if assumed else cfg, model, model_config, memory=False)
    problems = [message for step in found.errors.values() for message in step]
    if problems or found.optimizer_steps is None:
        raise ValueError("cannot estimate the training time: " + "; ".join(problems or ["the data was not read"]))
    return found, assumed


__all__ = ["VALIDATION_STEP_FRACTION", "estimate_training_time"]
