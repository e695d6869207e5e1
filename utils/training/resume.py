"""A run's checkpoints while it trains: the ``last.pt`` payload and ``best.pt``.

``start_run`` gives fresh counters, records and outputs, or restores those of
``last.pt`` (optimizer, schedule, scaler, histories, callback states, RNG);
``save_training_checkpoint`` writes that payload after each epoch.
``update_best`` keeps the best epoch's weights in ``best.pt``, and
``load_best_weights`` loads them back at the end. The files themselves (atomic
writes, data-only reads) are ``training.checkpoint``'s.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from utils.training import checkpoint as ckpt
from utils.training.callbacks import is_improvement
from utils.training.distributed import barrier
from utils.training.fsdp import (
    full_optimizer_state_dict,
    full_state_dict,
    load_full_optimizer_state_dict,
    load_full_state_dict,
)
from utils.training.metrics_tracker import MetricsTracker
from utils.training.parts import (
    StepRecords,
    TrainingOutputs,
    TrainingParts,
    TrainingState,
    make_progress_bar,
    seed_everything,
)
from utils.training.timing import StepTimer


def start_run(
    parts: TrainingParts, callbacks: Sequence[Any], resume: dict[str, Any] | None
) -> tuple[TrainingState, StepRecords, TrainingOutputs]:
    """Fresh counters, records and outputs, or those of the checkpoint when resuming."""
    # After setup, so dropout sees the same stream every run; offset per rank so that
    # ranks drop different units (DDP has already made their weights equal).
    seed_everything(parts.settings.seed + parts.dist.rank)
    state = TrainingState(
        parts.model, parts.plan, parts.optimizer, rank=parts.dist.rank, world_size=parts.dist.world_size
    )
    records = StepRecords()
    use_wandb = parts.settings.use_wandb and parts.dist.is_main
    tracker = MetricsTracker(use_wandb=use_wandb, wandb_prefix=parts.settings.wandb_prefix)
    outputs = TrainingOutputs(tracker=tracker, timer=StepTimer(parts.device), callbacks=list(callbacks))
    if resume is not None:
        _restore_training_state(parts, state, records, outputs, resume)
        if state.optimizer_step >= parts.total_steps:
            raise ValueError(
                f"resume_from={str(parts.settings.resume_from)!r}: the run already took {state.optimizer_step} "
                f"optimizer steps, all that n_epochs={parts.settings.n_epochs} and max_steps="
                f"{parts.settings.max_steps} allow; raise them to train on"
            )
    outputs.pbar = make_progress_bar(parts, state.optimizer_step)
    return state, records, outputs


def _restore_training_state(
    parts: TrainingParts,
    state: TrainingState,
    records: StepRecords,
    outputs: TrainingOutputs,
    checkpoint: dict[str, Any],
) -> None:
    """Optimizer, schedule, scaler, counters, histories and RNG, from a checkpoint (weights are already in)."""
    load_full_optimizer_state_dict(parts.model, parts.optimizer, checkpoint["optimizer"])
    parts.scheduler.load_state_dict(checkpoint["scheduler"])
    if parts.amp_step.enabled != (checkpoint["scaler"] is not None):
        warnings.warn(
            f"resuming a {checkpoint['precision']} run in {parts.plan.name}: the loss scaler state is not carried over",
            stacklevel=5,
        )
    parts.amp_step.load_state_dict(checkpoint["scaler"])
    progress = checkpoint.get("epoch_progress", {"complete": True})
    state.start_epoch = checkpoint["epoch"] + (1 if progress["complete"] else 0)
    if not progress["complete"]:  # stopped by max_steps inside the epoch: go on from its next batch
        state.epoch_batches, state.epoch_complete = progress["batches"], False
        state.epoch_sums = (progress["loss_sum"], progress["correct"], progress["n_targets"])
    state.optimizer_step = records.last_read_step = checkpoint["optimizer_step"]
    state.skipped_steps = records.last_read_skipped = checkpoint["skipped_steps"]
    records.history = {key: list(values) for key, values in checkpoint["history"].items()}
    rows = list(checkpoint["epoch_rows"])
    if not progress["complete"] and rows and rows[-1].get("epoch") == checkpoint["epoch"]:
        rows.pop()  # the cut epoch's row: the resumed epoch writes the whole epoch's row at its end
    outputs.tracker.epoch_rows.extend(rows)
    outputs.tracker.step_rows.extend(checkpoint["step_rows"])
    state.best_value, state.best_epoch = checkpoint["best"]["value"], checkpoint["best"]["epoch"]
    _restore_callback_states(outputs.callbacks, checkpoint["callbacks"])
    if parts.dist.is_main:
        ckpt.restore_rng_state(checkpoint["rng"])  # the other ranks keep their own dropout streams


def _epoch_progress(state: TrainingState) -> dict[str, Any]:
    """Whether the checkpointed epoch ran to its end; if not, how far it got and its train sums so far."""
    loss_sum, correct, n_targets = state.epoch_sums
    return {
        "complete": state.epoch_complete,
        "batches": state.epoch_batches,
        "loss_sum": loss_sum,
        "correct": correct,
        "n_targets": n_targets,
    }


def continue_epoch(loader: Iterable[dict], state: TrainingState) -> tuple[Iterator[dict], tuple[float, int, int]]:
    """This epoch's batches still to train, and its train sums so far: all and zeros, unless resuming inside it.

    A resumed epoch skips the micro-batches it trained before the step cap (its order depends only on
    the seed and the epoch), so it goes on exactly where it stopped.
    """
    if state.epoch_complete:
        state.epoch_batches, state.epoch_sums = 0, (0.0, 0, 0)
        return iter(loader), (0.0, 0, 0)
    state.epoch_complete = True  # until this pass stops early again
    return itertools.islice(loader, state.epoch_batches, None), state.epoch_sums


def _callback_keys(callbacks: list[Any]) -> list[str]:
    """'EarlyStopping', 'EarlyStopping#2' ...: a stable name per callback that has state to save."""
    seen: dict[str, int] = {}
    keys = []
    for cb in callbacks:
        name = type(cb).__name__
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


def _callback_states(callbacks: list[Any]) -> dict[str, Any]:
    return {
        key: cb.state_dict()
        for key, cb in zip(_callback_keys(callbacks), callbacks)
        if callable(getattr(cb, "state_dict", None))
    }


def _restore_callback_states(callbacks: list[Any], saved: dict[str, Any]) -> None:
    for key, cb in zip(_callback_keys(callbacks), callbacks):
        if not callable(getattr(cb, "load_state_dict", None)):
            continue
        if key in saved:
            cb.load_state_dict(saved[key])
        else:
            warnings.warn(f"the checkpoint holds no state for callback {key}; it starts afresh", stacklevel=6)


def save_training_checkpoint(
    parts: TrainingParts, state: TrainingState, records: StepRecords, outputs: TrainingOutputs
) -> None:
    """Rank 0 writes ``last.pt``; every rank waits for it, so a resume right after sees the file.

    Under FSDP, every rank takes part in gathering the whole weights and optimizer state onto rank 0.
    """
    weights, optimizer_state = full_state_dict(parts.model), full_optimizer_state_dict(parts.model, parts.optimizer)
    if parts.dist.is_main:
        checkpoint = {
            "model": weights,
            "optimizer": optimizer_state,
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.amp_step.state_dict(),
            "precision": parts.plan.name,
            "epoch": state.epoch,
            "optimizer_step": state.optimizer_step,
            "skipped_steps": state.skipped_steps,
            "history": records.history,
            "epoch_rows": outputs.tracker.epoch_rows,
            "step_rows": outputs.tracker.step_rows,
            "rng": ckpt.capture_rng_state(),
            "best": {"value": state.best_value, "epoch": state.best_epoch},
            "callbacks": _callback_states(outputs.callbacks),
            "epoch_progress": _epoch_progress(state),
            "tokenizer": parts.tokenizer.to_json() if parts.tokenizer is not None else None,  # resume encodes alike
        }
        ckpt.save_checkpoint(ckpt.checkpoint_path(parts.settings.checkpoint_dir), checkpoint)
    barrier(parts.dist)


def update_best(parts: TrainingParts, state: TrainingState, row: dict[str, Any]) -> None:
    """Track the best monitored value; with a checkpoint folder, rank 0 writes its weights to best.pt."""
    s = parts.settings
    if not is_improvement(row.get(s.monitor), state.best_value, s.mode):
        return
    state.best_value, state.best_epoch = float(row[s.monitor]), state.epoch
    if s.checkpoint_dir is None:
        return
    weights = full_state_dict(parts.model)  # under FSDP, a gather every rank takes part in
    if parts.dist.is_main:
        path = ckpt.best_checkpoint_path(s.checkpoint_dir)
        ckpt.save_best(path, weights, epoch=state.epoch, monitor=s.monitor, mode=s.mode, value=state.best_value)


def load_best_weights(parts: TrainingParts) -> bool:
    """Load best.pt into the model (every rank reads the file rank 0 wrote). False when there is none."""
    barrier(parts.dist)
    path = ckpt.best_checkpoint_path(parts.settings.checkpoint_dir)
    if not path.is_file():
        return False
    load_full_state_dict(parts.model, ckpt.load_best(path)["model"])
    return True


__all__ = ["load_best_weights", "save_training_checkpoint", "start_run", "update_best"]
