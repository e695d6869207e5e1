"""The training engine: ``train(model, config, settings)``, beneath every way the library trains.

``test_fine_tuning`` (Tier 3), the AMP benchmark and ``benchmarks/`` all call
``train`` with a ``TrainingSettings``. It reads top to bottom: check, set up,
loop over epochs (training steps, then validation), checkpoint, collect.

Setup and what travels through the loop (``TrainingParts``, ``TrainingState``,
``StepRecords``, ``TrainingOutputs``) are in ``training.parts``; each helper's
signature shows which of them it reads and writes. The settings are in
``training.settings``, the checkpoints in ``training.resume``, the results dict
in ``training.results``; their public names are importable from here too.

Example:
    >>> settings = TrainingSettings(n_epochs=1, learning_rate=1e-3, max_steps=50, precision="bf16")
    >>> results = train(model, config, settings)
    >>> results["loss_history"][:3]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

from utils.causality import refuse_encoder_decoder
from utils.model_helpers import extract_logits, validate_model
from utils.training import checkpoint as ckpt
from utils.training.callbacks import EarlyStopping
from utils.training.distributed import all_reduce_mean, all_reduce_sum, gradient_sync
from utils.training.fsdp import lockstep_batches, plain_tensor, release_model
from utils.training.losses import bits_per_byte_row, next_token_loss_sums
from utils.training.parts import (
    StepRecords,
    TrainingOutputs,
    TrainingParts,
    TrainingState,
    build_parts,
    read_model_sizes,
    seed_everything,
    start_wandb_run,
    to_device,
)
from utils.training.results import THROUGHPUT_WARMUP_STEPS, collect_results
from utils.training.resume import continue_epoch, load_best_weights, save_training_checkpoint, start_run, update_best
from utils.training.sampling import finish_sampling, start_sampling
from utils.training.settings import EPOCH_ROW_KEYS, TrainingSettings, total_steps
from utils.training.text_tokenizer import saved_tokenizer

CALLBACK_HOOKS = ("on_train_begin", "on_log", "on_epoch_end", "on_train_end")


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss (or, in fp16, every gradient of a logging window) was NaN or Inf."""


def train(
    model: nn.Module,
    config: Any,
    settings: TrainingSettings,
    train_data: Any = None,
    val_data: Any = None,
    *,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train ``model`` as a next-token language model under ``settings``; return the results as data.

    Args:
        model: an ``nn.Module`` whose forward takes ``input_ids`` (B, T) and returns logits (B, T, V).
        config: its config; ``vocab_size`` and ``max_seq_len`` are read from it when present.
        settings: a ``TrainingSettings`` (validated when made).
        train_data, val_data: as for ``test_fine_tuning``.
        callbacks: objects with any of the hooks in ``CALLBACK_HOOKS``.

    Returns:
        ``test_fine_tuning``'s results dict, without the figure.

    Raises:
        TypeError, ValueError: on bad arguments, an encoder-decoder model (not a next-token LM), or a
            checkpoint that does not fit, before any work.
        NonFiniteLossError: when the loss turns NaN/Inf (fp32/bf16), or every fp16 step of a logging
            window was skipped with the loss scale below 1; the last good checkpoint is kept.
    """
    validate_model(model)
    refuse_encoder_decoder(model, config, "training")
    resume = _check_before_work(model, settings, callbacks)
    if (saved := saved_tokenizer(resume)) is not None:  # a resumed run encodes its text as before: never a new BPE
        settings = settings.replace(tokenizer=saved)
    parts = build_parts(model, config, train_data, val_data, settings, weights=resume["model"] if resume else None)
    _print_batch_plan(parts)
    state, records, outputs = start_run(parts, callbacks, resume)
    outputs.sampler = start_sampling(parts, config, state)
    owned_run = start_wandb_run(parts, config) if outputs.tracker.use_wandb else None
    finished = False
    try:
        outputs.notify("on_train_begin", state)
        for epoch in range(state.start_epoch, settings.n_epochs):
            state.epoch = epoch
            _run_epoch(parts, state, records, outputs)
            if state.stop_training or state.optimizer_step >= parts.total_steps:
                break
        best_loaded = load_best_weights(parts) if settings.load_best else False
        results = collect_results(parts, state, records, outputs)
        results["best_loaded"] = best_loaded
        results.update(finish_sampling(parts, state, outputs, best_loaded))
        outputs.notify("on_train_end", state, results)
        finished = True
    finally:
        model.train()
        release_model(model)  # activation checkpointing undone; under FSDP, the shards registered
        outputs.close()
        if owned_run is not None:
            owned_run.finish(exit_code=0 if finished else 1)
    return results


def _check_before_work(model: nn.Module, settings: TrainingSettings, callbacks: Sequence[Any]) -> dict[str, Any] | None:
    """What can be checked before setup: the settings' type, the callbacks, wandb, and the resume checkpoint.

    Returns:
        The checkpoint to resume from (read safely and checked against the model), or None.
    """
    if not isinstance(settings, TrainingSettings):
        raise TypeError(f"settings must be a TrainingSettings, got {type(settings).__name__}")
    _validate_callbacks(callbacks)
    if settings.use_wandb:
        from utils.training.wandb_run import import_wandb

        import_wandb()  # without wandb installed: the install hint, before any work
    if settings.resume_from is None:
        return None
    return ckpt.load_for_resume(settings.resume_from, model, settings.n_epochs, max_steps=settings.max_steps)


def _run_epoch(parts: TrainingParts, state: TrainingState, records: StepRecords, outputs: TrainingOutputs) -> None:
    """Training steps, validation, the epoch row and its callbacks, then the checkpoint."""
    train_metrics = run_training_epoch(parts, state, records, outputs)
    val_metrics = run_validation_epoch(parts)
    row = outputs.tracker.log_epoch(
        state.epoch, train_metrics, val_metrics, learning_rate=current_lr(parts.optimizer), step=state.optimizer_step
    )
    update_best(parts, state, row)
    outputs.notify("on_epoch_end", state, row)
    if parts.settings.checkpoint_dir is not None:
        save_training_checkpoint(parts, state, records, outputs)


def _validate_callbacks(callbacks: Sequence[Any]) -> None:
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Iterable):
        raise TypeError(f"callbacks must be a list of callback objects, got {type(callbacks).__name__}")
    for cb in callbacks:
        if not any(callable(getattr(cb, hook, None)) for hook in CALLBACK_HOOKS):
            raise TypeError(f"callback {cb!r} has none of the hooks {CALLBACK_HOOKS}")
        if isinstance(cb, EarlyStopping) and cb.monitor not in EPOCH_ROW_KEYS:  # before a whole epoch trains
            raise ValueError(
                f"EarlyStopping(monitor={cb.monitor!r}) names no key of the epoch row; use one of {EPOCH_ROW_KEYS}"
            )


def _print_batch_plan(parts: TrainingParts) -> None:
    """The seed API's two lines at the start: how many micro-batches make a step, and how many rows a step sees."""
    settings = parts.settings
    if settings.progress and parts.dist.is_main:
        accumulation = settings.gradient_accumulation_steps
        print(f"Gradient accumulation steps: {accumulation}")
        print(f"Effective batch size: {settings.batch_size * accumulation * parts.dist.world_size}")


def accumulation_groups(loader: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Yield lists of ``size`` micro-batches; the last group may be shorter."""
    group: list[dict] = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def training_step(
    parts: TrainingParts, batch: dict, group_targets: int, update: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Forward and loss under autocast, backward outside it, and the update at a group boundary.

    The loss is summed over tokens and divided by the whole group's target
    count, so accumulated micro-batches (a short last group included) give
    the same gradient as one large batch.

    Returns:
        (loss, n_correct, grad_norm): the detached loss contribution, the
        correct-prediction count, and the pre-clip gradient norm (None when
        this micro-batch does not end a group). All stay on the device.
    """
    input_ids, labels, mask = to_device(batch, parts.device)
    # Under DDP, gradients are all-reduced only on the group's last micro-batch.
    with gradient_sync(parts.train_module, sync=update):
        with parts.plan.autocast():
            logits = extract_logits(parts.forward(input_ids, mask))
            loss_sum, n_correct = next_token_loss_sums(logits, labels)
            loss = loss_sum / group_targets
        parts.amp_step.backward(loss)
    # Under FSDP the norm is over the shards: a DTensor, made whole (one all-reduce) here.
    grad_norm = plain_tensor(parts.amp_step.update(parts.model.parameters())) if update else None
    return loss.detach(), n_correct, grad_norm


def run_training_epoch(
    parts: TrainingParts, state: TrainingState, records: StepRecords, outputs: TrainingOutputs
) -> dict[str, float]:
    """One pass over the training data (or until ``max_steps``). Returns the epoch's train metrics."""
    parts.train_module.train()
    parts.train_loader.sampler.set_epoch(state.epoch)  # a new order each epoch, the same on every rank
    batches, (done_loss, done_correct, n_targets) = continue_epoch(parts.train_loader, state)
    loss_sum = torch.full((), done_loss, device=parts.device)
    correct = torch.full((), done_correct, dtype=torch.long, device=parts.device)
    first_step = len(records.losses)
    outputs.timer.start()
    for group in accumulation_groups(batches, parts.settings.gradient_accumulation_steps):
        if state.optimizer_step >= parts.total_steps or state.stop_training:
            state.epoch_complete = False  # stopped inside the epoch: a resume goes on from this batch
            break
        state.epoch_batches += len(group)
        group_targets = max(1, sum(b["n_targets"] for b in group))  # host ints: no sync
        step_loss = torch.zeros((), device=parts.device)
        for i, batch in enumerate(group):
            loss, n_correct, grad_norm = training_step(parts, batch, group_targets, update=i == len(group) - 1)
            step_loss += loss
            correct += n_correct
            state.samples_seen += batch["input_ids"].size(0)
        outputs.timer.mark()
        records.tokens.append(sum(b["n_tokens"] for b in group))
        _finish_optimizer_step(parts, state, records, outputs, step_loss, grad_norm)
        loss_sum += step_loss * group_targets
        n_targets += group_targets
    outputs.timer.stop()
    _drain_step_history(parts, state, records, first_step)
    if not state.epoch_complete:  # a deliberate sync, once: the sums travel in last.pt
        state.epoch_sums = (float(loss_sum), int(correct), n_targets)
    loss, accuracy = _read_totals(parts, loss_sum, correct, n_targets)
    return {"train/loss": loss, "train/accuracy": accuracy}


def _read_totals(
    parts: TrainingParts, loss_sum: torch.Tensor, correct: torch.Tensor, n_targets: int
) -> tuple[float, float]:
    """Mean loss and accuracy over all ranks' targets: one collective and one deliberate sync."""
    totals = torch.stack([loss_sum, correct.to(loss_sum.dtype), loss_sum.new_tensor(n_targets)])
    loss_total, correct_total, targets = all_reduce_sum(totals, parts.dist).tolist()
    return loss_total / max(1.0, targets), correct_total / max(1.0, targets)


def _finish_optimizer_step(
    parts: TrainingParts,
    state: TrainingState,
    records: StepRecords,
    outputs: TrainingOutputs,
    step_loss: torch.Tensor,
    grad_norm: torch.Tensor,
) -> None:
    """Book-keeping after an update: schedule, skip count, records, logging. Host-side only."""
    records.losses.append(step_loss)
    records.grad_norms.append(grad_norm)
    loss_scale = parts.amp_step.loss_scale()  # a device-side copy: no sync
    if loss_scale is not None:
        records.loss_scales.append(loss_scale)
    records.history["lr"].append(current_lr(parts.optimizer))
    if parts.amp_step.stepped:
        parts.scheduler.step()
    else:
        state.skipped_steps += 1  # the scaler skipped this step (inf/NaN grads): the LR holds still
    state.optimizer_step += 1
    if outputs.pbar is not None:
        outputs.pbar.update(1)
    if state.optimizer_step % parts.settings.log_every == 0 or state.optimizer_step == parts.total_steps:
        _log_window(parts, state, records, outputs)
    if outputs.sampler is not None:  # sample_every: generating reads ids on the host, a deliberate sync
        outputs.sampler.after_step(parts, state)


def _log_window(parts: TrainingParts, state: TrainingState, records: StepRecords, outputs: TrainingOutputs) -> None:
    """Read the last ``log_every`` steps' loss and grad norm: one deliberate sync. Stop on a non-finite loss."""
    n = min(parts.settings.log_every, len(records.losses))
    losses = torch.stack(records.losses[-n:])
    norms = torch.stack(records.grad_norms[-n:]).float()
    finite = torch.isfinite(norms)
    mean_norm = torch.where(finite, norms, 0).sum() / finite.sum().clamp(min=1)
    values = [losses.mean(), mean_norm] + ([records.loss_scales[-1]] if records.loss_scales else [])
    # Grad norm and loss scale agree on every rank after DDP's all-reduce; the loss is each rank's own.
    read = all_reduce_mean(torch.stack([v.float() for v in values]), parts.dist).tolist()
    loss_scale = read[2] if len(read) > 2 else None
    _check_window_is_finite(parts, state, records, read[0], loss_scale)
    row = {
        "train/step": state.optimizer_step,
        "epoch": state.epoch,
        "train/loss": read[0],
        "train/grad_norm": read[1],
        "lr": records.history["lr"][-1],
        "amp/loss_scale": loss_scale,
        "amp/skipped_steps": state.skipped_steps,
    }
    outputs.tracker.log_step(row)
    if outputs.pbar is not None:
        outputs.pbar.set_postfix(loss=f"{row['train/loss']:.3f}", lr=f"{row['lr']:.2e}", refresh=False)
    outputs.notify("on_log", state, row)


def _check_window_is_finite(
    parts: TrainingParts, state: TrainingState, records: StepRecords, mean_loss: float, loss_scale: float | None
) -> None:
    """Stop at a host read that shows the run has gone non-finite; otherwise note where this window ended.

    In fp32/bf16 any NaN/Inf loss stops the run. In fp16 a skipped step is the
    GradScaler doing its job, so the run stops only when every step of the
    window was skipped and the scale has backed off below 1: gradients that
    overflow even then are NaN/Inf at any scale.
    """
    steps = state.optimizer_step - records.last_read_step
    skipped = state.skipped_steps - records.last_read_skipped
    records.last_read_step, records.last_read_skipped = state.optimizer_step, state.skipped_steps
    if parts.amp_step.enabled:
        if steps and skipped == steps and loss_scale is not None and loss_scale < 1.0:
            raise NonFiniteLossError(
                f"every one of the last {steps} fp16 optimizer steps (up to step {state.optimizer_step}, epoch "
                f"{state.epoch}) was skipped for inf/NaN gradients, and the loss scale has fallen to {loss_scale:g}: "
                f"the gradients are not finite at any scale. {_stop_advice(parts)}"
            )
        return
    if not math.isfinite(mean_loss):
        window = torch.stack(records.losses[-steps:]).float().tolist()  # failing anyway: one more read is fine
        first_bad = next((i for i, v in enumerate(window) if not math.isfinite(v)), 0)
        _raise_non_finite(parts, state.optimizer_step - steps + first_bad + 1, state.epoch, window[first_bad])


def _raise_non_finite(parts: TrainingParts, step: int, epoch: int, value: float) -> None:
    raise NonFiniteLossError(
        f"the training loss became {value} at optimizer step {step} (epoch {epoch}), in {parts.plan.name}. "
        f"{_stop_advice(parts)}"
    )


def _stop_advice(parts: TrainingParts) -> str:
    """What was kept, and what to try."""
    path = ckpt.checkpoint_path(parts.settings.checkpoint_dir) if parts.settings.checkpoint_dir else None
    kept = (
        f"Training stopped; the last good checkpoint, {path}, was kept."
        if path is not None and path.is_file()
        else "Training stopped; no checkpoint was written (pass checkpoint_dir= to keep the last good epoch)."
    )
    return (
        f"{kept} Try a lower learning_rate, grad_clip=1.0, or precision='fp32'; if the model's own outputs are "
        "NaN/Inf, Tier 1 test_output_stability shows where."
    )


def _drain_step_history(parts: TrainingParts, state: TrainingState, records: StepRecords, first_step: int) -> None:
    """Move this epoch's per-step device values into the host history: one sync. Stop on a non-finite loss."""
    new = slice(first_step, None)
    for key, values in (
        ("loss", records.losses[new]),
        ("grad_norm", records.grad_norms[new]),
        ("loss_scale", records.loss_scales[new]),
    ):
        if values:
            stacked = torch.stack(values).float()
            if key == "loss":
                stacked = all_reduce_mean(stacked, parts.dist)  # each rank's loss is over its own batch
            records.history[key].extend(stacked.tolist())
    if not parts.amp_step.enabled:  # steps after the last logging read are checked here, before any checkpoint
        epoch_losses = records.history["loss"][first_step:]
        bad = next((i for i, v in enumerate(epoch_losses) if not math.isfinite(v)), None)
        if bad is not None:
            _raise_non_finite(parts, first_step + bad + 1, state.epoch, epoch_losses[bad])


@torch.no_grad()
def run_validation_epoch(parts: TrainingParts) -> dict[str, float]:
    """Mean next-token loss and accuracy on the validation data, under the same autocast."""
    parts.train_module.eval()
    loss_sum = torch.zeros((), device=parts.device)
    correct = torch.zeros((), dtype=torch.long, device=parts.device)
    n_targets = 0
    n_bytes = None  # bytes of text the targets cover; None when the data is token ids, not text
    # Up to max_val_batches per rank; under FSDP, as many on every rank (each forward is a collective).
    sharded = parts.placement.sharded
    for batch in lockstep_batches(
        parts.val_loader, parts.settings.max_val_batches, parts.dist, parts.device, sharded=sharded
    ):
        input_ids, labels, mask = to_device(batch, parts.device)
        with parts.plan.autocast():
            logits = extract_logits(parts.eval_forward(input_ids, mask))
            batch_loss, batch_correct = next_token_loss_sums(logits, labels)
        loss_sum += batch_loss
        correct += batch_correct
        n_targets += batch["n_targets"]
        if "n_target_bytes" in batch:  # host ints from the collate: no sync
            n_bytes = (n_bytes or 0) + batch["n_target_bytes"]
    parts.train_module.train()
    loss, accuracy = _read_totals(parts, loss_sum, correct, n_targets)
    text = bits_per_byte_row(loss, n_targets, n_bytes, parts.dist, parts.device)  # text: val/bits_per_byte
    return {"val/loss": loss, "val/accuracy": accuracy, **text}


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


__all__ = [
    "CALLBACK_HOOKS",
    "EPOCH_ROW_KEYS",
    "THROUGHPUT_WARMUP_STEPS",
    "NonFiniteLossError",
    "StepRecords",
    "TrainingOutputs",
    "TrainingParts",
    "TrainingSettings",
    "TrainingState",
    "accumulation_groups",
    "build_parts",
    "collect_results",
    "current_lr",
    "read_model_sizes",
    "run_training_epoch",
    "run_validation_epoch",
    "seed_everything",
    "train",
    "total_steps",
    "training_step",
]
