"""The results of a run as data: histories, best epoch, timing, throughput and MFU (``collect_results``)."""

from __future__ import annotations

from typing import Any

from utils.device import tf32_enabled
from utils.model_helpers import count_parameters
from utils.records import environment_record
from utils.training import checkpoint as ckpt
from utils.training.distributed import sum_host_values
from utils.training.flops import compute_mfu, peak_tflops
from utils.training.parts import StepRecords, TrainingOutputs, TrainingParts, TrainingState
from utils.training.settings import TrainingSettings

# Optimizer steps left out of the throughput and MFU figures: the first steps
# pay for torch.compile, cuDNN/cuBLAS autotuning and the allocator's growth.
THROUGHPUT_WARMUP_STEPS = 3

# "Did it learn?": the validation loss ended at least this share below the mean train loss of the
# first logging window (the untrained level). The AMP benchmark and the comparison both judge by it.
LEARNED_MARGIN = 0.05


def learned(results: dict[str, Any]) -> bool:
    """True when a run's ``val_loss`` ended ``LEARNED_MARGIN`` below its ``initial_loss``."""
    initial, final = results.get("initial_loss"), results.get("val_loss")
    return initial is not None and final is not None and final < (1 - LEARNED_MARGIN) * initial


def collect_results(
    parts: TrainingParts, state: TrainingState, records: StepRecords, outputs: TrainingOutputs
) -> dict[str, Any]:
    """Assemble the results dict from the tracker, the histories and the timer."""
    step_times = outputs.timer.step_times_s()
    train_time_s = sum(step_times)
    (samples, tokens), throughput = _measure_throughput(parts, state, records, step_times)
    tracker, history, window = outputs.tracker, records.history, parts.settings.log_every
    last = tracker.epoch_rows[-1] if tracker.epoch_rows else {}
    checkpoint_dir = parts.settings.checkpoint_dir
    return {
        "loss_history": history["loss"],
        "grad_norm_history": history["grad_norm"],
        "loss_scale_history": history["loss_scale"],
        "lr_history": history["lr"],
        "initial_loss": _mean(history["loss"][:window]),
        "final_loss": _mean(history["loss"][-window:]),
        "val_loss": last.get("val/loss"),
        "val_accuracy": last.get("val/accuracy"),
        "best_epoch": state.best_epoch,
        "best_value": state.best_value,
        "monitor": parts.settings.monitor,
        "best_checkpoint_path": _existing_best_path(parts.settings),
        "stopped_early": state.stop_training and state.optimizer_step < parts.total_steps,
        "metrics_summary": tracker.get_summary(),
        "step_history": tracker.get_step_history(),
        "training_time_seconds": train_time_s,
        "step_times_s": step_times,
        "samples_per_second": samples / train_time_s if train_time_s else None,
        "tokens_per_second": tokens / train_time_s if train_time_s else None,
        "mfu": throughput["mfu"],
        "throughput": throughput,
        "amp_enabled": parts.plan.amp_enabled,
        "precision": parts.plan.name,
        "precision_reason": parts.plan.reason,
        "skipped_steps": state.skipped_steps,
        "final_loss_scale": history["loss_scale"][-1] if history["loss_scale"] else None,
        "optimizer_steps": state.optimizer_step,
        "device": str(parts.device),
        "world_size": parts.dist.world_size,
        **parts.placement.record(),  # strategy, fsdp (what was sharded, on which mesh), activation_checkpointing
        "compiled": parts.settings.compile_options is not None,
        "checkpoint_path": str(ckpt.checkpoint_path(checkpoint_dir)) if checkpoint_dir else None,
        "parameters": count_parameters(parts.model)["total"],
        "data_source": parts.data_source,
        # The setup's causal probe: True, False (it sees the tokens it predicts) or None (cannot tell), and why.
        "causal": parts.causality.causal,
        "causal_note": parts.causality.reason,
        "environment": environment_record(parts.device, precision=parts.plan.name, compile=parts.settings.compile),
    }


def _existing_best_path(settings: TrainingSettings) -> str | None:
    if settings.checkpoint_dir is None:
        return None
    path = ckpt.best_checkpoint_path(settings.checkpoint_dir)
    return str(path) if path.is_file() else None


def _measure_throughput(
    parts: TrainingParts, state: TrainingState, records: StepRecords, step_times: list[float]
) -> tuple[tuple[float, float], dict[str, Any]]:
    """Totals over all ranks, and steady-state tokens/s (first steps left out), FLOPs per token and MFU.

    Rank 0's clock times the steps; samples and tokens are summed over ranks, once, here.

    Returns:
        ((samples, tokens) over every step, the ``throughput`` dict).
    """
    skip = min(THROUGHPUT_WARMUP_STEPS, max(0, len(step_times) - 1))
    timed_s = sum(step_times[skip:])
    samples, tokens, timed_tokens = sum_host_values(
        [state.samples_seen, sum(records.tokens), sum(records.tokens[skip:])], parts.dist, parts.device
    )
    tokens_per_s = timed_tokens / timed_s if timed_s else None
    peak = peak_tflops(parts.device, parts.plan.name, tf32=tf32_enabled())
    achieved = tokens_per_s * parts.flops.flops / 1e12 if tokens_per_s else None
    world_size = parts.dist.world_size
    return (samples, tokens), {
        "tokens_per_second": tokens_per_s,
        "timed_steps": len(step_times) - skip,
        "warmup_steps_excluded": skip,
        "flops_per_token": parts.flops.flops,
        "flops_note": parts.flops.note,
        "achieved_tflops_per_device": achieved / world_size if achieved is not None else None,
        "peak_tflops_per_device": peak.tflops,
        "peak_note": peak.note,
        "mfu": compute_mfu(tokens_per_s, parts.flops.flops, peak.tflops, world_size),
        "world_size": world_size,
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


__all__ = ["THROUGHPUT_WARMUP_STEPS", "collect_results"]
