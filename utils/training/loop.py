"""The training engine: ``train(model, config, settings)``, beneath every way the library trains.

``test_fine_tuning`` (Tier 3), the AMP benchmark and ``benchmarks/`` all call
``train`` with a ``TrainingSettings``. It reads top to bottom: check, set up,
loop over epochs (training steps, then validation), checkpoint, collect.

What travels through the loop is split by how it changes:

- ``TrainingParts`` (frozen): what setup builds once: model and its wrappers,
  loaders, optimizer, schedule, the mixed-precision step.
- ``TrainingState``: the counters (epoch, optimizer step, skipped steps,
  ``stop_training``). Callbacks receive it.
- ``StepRecords``: the per-step records (device tensors until a host read) and
  the histories.
- ``TrainingOutputs``: where results go: the metrics tracker, the step timer,
  the progress bar and the callbacks.

Each helper's signature shows which of them it reads and writes.

Example:
    >>> settings = TrainingSettings(n_epochs=1, learning_rate=1e-3, max_steps=50, precision="bf16")
    >>> results = train(model, config, settings)
    >>> results["loss_history"][:3]
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from utils.checks import (
    check_bool,
    check_choice,
    check_int,
    check_non_negative_int,
    check_non_negative_number,
    check_positive_int,
    check_positive_number,
    check_str,
)
from utils.device import resolve_device, tf32_enabled
from utils.model_helpers import (
    config_size,
    count_parameters,
    detect_vocab_size,
    extract_logits,
    get_config_value,
    make_forward_fn,
    model_mode,
    validate_model,
)
from utils.records import environment_record
from utils.training import checkpoint as ckpt
from utils.training.callbacks import MODES, is_improvement
from utils.training.data import DEFAULT_CORPUS_BYTES, make_loader, prepare_lm_data
from utils.training.distributed import (
    DistributedContext,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    gradient_sync,
    setup_distributed,
    sum_host_values,
    wrap_data_parallel,
)
from utils.training.flops import FlopsPerToken, compute_mfu, model_flops_per_token, peak_tflops
from utils.training.losses import next_token_loss_sums
from utils.training.metrics_tracker import MetricsTracker
from utils.training.optim import build_lr_scheduler, build_optimizer
from utils.training.precision import MixedPrecisionStep, PrecisionPlan, resolve_precision, validate_precision_args
from utils.training.timing import StepTimer

CALLBACK_HOOKS = ("on_train_begin", "on_log", "on_epoch_end", "on_train_end")
# The keys of an epoch row: any of them can be the monitored metric for best.pt and early stopping.
EPOCH_ROW_KEYS = ("val/loss", "val/accuracy", "val/perplexity", "train/loss", "train/accuracy", "lr", "epoch")

# Optimizer steps left out of the throughput and MFU figures: the first steps
# pay for torch.compile, cuDNN/cuBLAS autotuning and the allocator's growth.
THROUGHPUT_WARMUP_STEPS = 3


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss (or, in fp16, every gradient of a logging window) was NaN or Inf."""


@dataclass(frozen=True)
class TrainingSettings:
    """Every knob of one training run, validated once, when it is made.

    The fields are ``test_fine_tuning``'s keyword arguments (see its docstring),
    plus ``wandb_prefix``, which the AMP benchmark uses to log two arms into
    one W&B run ('fp32/...', 'bf16/...').

    Raises:
        ValueError, TypeError: on any bad value, naming the field.
    """

    n_epochs: int = 3
    learning_rate: float = 5e-5
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_steps: int | None = None
    warmup_steps: int | None = None
    grad_clip: float | None = 1.0
    weight_decay: float = 0.01
    log_every: int = 10
    seed: int = 0
    seq_len: int | None = None
    max_val_batches: int | None = 50
    max_corpus_bytes: int = DEFAULT_CORPUS_BYTES
    init_loss_scale: float = 2.0**16
    precision: str = "auto"
    use_amp: bool | None = False
    device: str | torch.device | None = "auto"
    compile: bool | dict[str, Any] = False
    checkpoint_dir: str | os.PathLike | None = None
    resume_from: str | os.PathLike | None = None
    use_wandb: bool = False
    wandb_project: str = "utils-transformer-tests"
    wandb_prefix: str = ""
    progress: bool = True
    monitor: str = "val/loss"  # the epoch-row metric that picks best.pt
    mode: str = "min"  # 'min': lower is better
    load_best: bool = False  # load best.pt's weights into the model at the end

    def __post_init__(self) -> None:
        for name in ("n_epochs", "batch_size", "gradient_accumulation_steps", "log_every", "max_corpus_bytes"):
            check_positive_int(getattr(self, name), name)
        for name in ("max_steps", "seq_len", "max_val_batches"):
            check_positive_int(getattr(self, name), name, allow_none=True)
        check_non_negative_int(self.warmup_steps, "warmup_steps", allow_none=True)
        check_positive_number(self.learning_rate, "learning_rate")
        check_positive_number(self.init_loss_scale, "init_loss_scale")
        check_positive_number(self.grad_clip, "grad_clip", allow_none=True)
        check_non_negative_number(self.weight_decay, "weight_decay")
        check_int(self.seed, "seed")
        for name in ("use_wandb", "progress", "load_best"):
            check_bool(getattr(self, name), name)
        check_choice(self.monitor, "monitor", EPOCH_ROW_KEYS)
        check_choice(self.mode, "mode", MODES)
        check_str(self.wandb_project, "wandb_project")
        if not isinstance(self.wandb_prefix, str):
            raise ValueError(f"wandb_prefix must be a string, got {self.wandb_prefix!r}")
        validate_precision_args(self.precision, self.use_amp)
        resolve_device(self.device)  # an unknown or unavailable device fails here, before any work
        _compile_options(self.compile)
        object.__setattr__(self, "checkpoint_dir", ckpt.check_checkpoint_dir(self.checkpoint_dir))
        if self.load_best and self.checkpoint_dir is None:
            raise ValueError("load_best=True needs checkpoint_dir=, the folder where best.pt is kept; pass one")
        if self.resume_from is not None and not isinstance(self.resume_from, (str, os.PathLike)):
            raise TypeError(f"resume_from must be a checkpoint file path, got {type(self.resume_from).__name__}")

    @property
    def compile_options(self) -> dict[str, Any] | None:
        """``torch.compile`` keyword arguments, or None for eager."""
        return _compile_options(self.compile)

    def replace(self, **changes: Any) -> TrainingSettings:
        """A copy with ``changes``, validated again."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainingParts:
    """What setup builds once; nothing here changes while training."""

    settings: TrainingSettings
    model: nn.Module
    train_module: nn.Module  # the model, or its DistributedDataParallel wrapper
    forward: Any  # calls train_module (compiled when asked)
    eval_forward: Any
    device: torch.device
    dist: DistributedContext
    flops: FlopsPerToken
    plan: PrecisionPlan
    amp_step: MixedPrecisionStep
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    total_steps: int
    data_source: str


@dataclass
class TrainingState:
    """The counters; callbacks receive this object and may set ``stop_training``."""

    model: nn.Module
    plan: PrecisionPlan
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    optimizer_step: int = 0
    skipped_steps: int = 0
    stop_training: bool = False  # a callback may set this to end training early
    rank: int = 0  # under torchrun, this process's rank (callbacks may act on rank 0 only)
    world_size: int = 1
    start_epoch: int = 0  # after the checkpoint's epoch when resuming
    samples_seen: int = 0
    best_value: float | None = None  # of settings.monitor, over the epochs so far
    best_epoch: int | None = None


@dataclass
class StepRecords:
    """Per optimizer step: device values until a host read, then the host histories."""

    losses: list[torch.Tensor] = field(default_factory=list)
    grad_norms: list[torch.Tensor] = field(default_factory=list)
    loss_scales: list[torch.Tensor] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # host ints, from the collate
    history: dict[str, list[float]] = field(
        default_factory=lambda: {"loss": [], "grad_norm": [], "loss_scale": [], "lr": []}
    )
    last_read_step: int = 0  # optimizer step and skip count at the last logging read
    last_read_skipped: int = 0


@dataclass
class TrainingOutputs:
    """Where results go: metric rows, step times, the progress bar and the callbacks."""

    tracker: MetricsTracker
    timer: StepTimer
    callbacks: list[Any]
    pbar: Any = None

    def notify(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if callable(method):
                method(*args)

    def close(self) -> None:
        if self.pbar is not None:
            self.pbar.close()


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
        TypeError, ValueError: on bad arguments or a checkpoint that does not fit, before any work.
        NonFiniteLossError: when the loss turns NaN/Inf (fp32/bf16), or every fp16 step of a logging
            window was skipped with the loss scale below 1; the last good checkpoint is kept.
    """
    validate_model(model)
    resume = _check_before_work(model, settings, callbacks)
    parts = build_parts(model, config, train_data, val_data, settings, weights=resume["model"] if resume else None)
    state, records, outputs = _start_run(parts, callbacks, resume)
    owned_run = _start_wandb_run(parts, config) if outputs.tracker.use_wandb else None
    finished = False
    try:
        outputs.notify("on_train_begin", state)
        for epoch in range(state.start_epoch, settings.n_epochs):
            state.epoch = epoch
            _run_epoch(parts, state, records, outputs)
            if state.stop_training or state.optimizer_step >= parts.total_steps:
                break
        best_loaded = _load_best_weights(parts) if settings.load_best else False
        results = collect_results(parts, state, records, outputs)
        results["best_loaded"] = best_loaded
        outputs.notify("on_train_end", state, results)
        finished = True
    finally:
        model.train()
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
    return ckpt.load_for_resume(settings.resume_from, model, settings.n_epochs)


def _run_epoch(parts: TrainingParts, state: TrainingState, records: StepRecords, outputs: TrainingOutputs) -> None:
    """Training steps, validation, the epoch row and its callbacks, then the checkpoint."""
    train_metrics = run_training_epoch(parts, state, records, outputs)
    val_metrics = run_validation_epoch(parts)
    row = outputs.tracker.log_epoch(
        state.epoch, train_metrics, val_metrics, learning_rate=current_lr(parts.optimizer), step=state.optimizer_step
    )
    _update_best(parts, state, row)
    outputs.notify("on_epoch_end", state, row)
    if parts.settings.checkpoint_dir is not None:
        save_training_checkpoint(parts, state, records, outputs)


def _update_best(parts: TrainingParts, state: TrainingState, row: dict[str, Any]) -> None:
    """Track the best monitored value; with a checkpoint folder, rank 0 writes its weights to best.pt."""
    s = parts.settings
    if not is_improvement(row.get(s.monitor), state.best_value, s.mode):
        return
    state.best_value, state.best_epoch = float(row[s.monitor]), state.epoch
    if s.checkpoint_dir is not None and parts.dist.is_main:
        path = ckpt.best_checkpoint_path(s.checkpoint_dir)
        ckpt.save_best(
            path, parts.model.state_dict(), epoch=state.epoch, monitor=s.monitor, mode=s.mode, value=state.best_value
        )


def _load_best_weights(parts: TrainingParts) -> bool:
    """Load best.pt into the model (every rank reads the file rank 0 wrote). False when there is none."""
    barrier(parts.dist)
    path = ckpt.best_checkpoint_path(parts.settings.checkpoint_dir)
    if not path.is_file():
        return False
    parts.model.load_state_dict(ckpt.load_best(path)["model"])
    return True


# -- setup -------------------------------------------------------------------


def _compile_options(compile: Any) -> dict[str, Any] | None:
    """``compile=`` as ``torch.compile`` keyword arguments, or None for eager."""
    if compile is False:
        return None
    if compile is True:
        return {}
    if isinstance(compile, dict):
        return dict(compile)
    raise TypeError(
        f"compile must be True, False or a dict of torch.compile arguments (e.g. {{'mode': 'max-autotune'}}), "
        f"got {compile!r}"
    )


def _validate_callbacks(callbacks: Sequence[Any]) -> None:
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Iterable):
        raise TypeError(f"callbacks must be a list of callback objects, got {type(callbacks).__name__}")
    for cb in callbacks:
        if not any(callable(getattr(cb, hook, None)) for hook in CALLBACK_HOOKS):
            raise TypeError(f"callback {cb!r} has none of the hooks {CALLBACK_HOOKS}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_parts(
    model: nn.Module,
    config: Any,
    train_data: Any,
    val_data: Any,
    settings: TrainingSettings,
    weights: dict[str, torch.Tensor] | None = None,
) -> TrainingParts:
    """Resolve ranks, device and precision, build data, optimizer and schedule, and probe the model once.

    ``weights`` (a checked state dict, when resuming) are loaded right after the move to the device,
    before anything wraps or probes the model.
    """
    ctx, device = setup_distributed(settings.device)
    plan = resolve_precision(settings.precision, settings.use_amp, device)
    model.to(device)
    if weights is not None:
        model.load_state_dict(weights)
    vocab_size, seq_len, pad_id = read_model_sizes(model, config, settings)
    train_loader, val_loader, data_source = _build_loaders(
        train_data, val_data, settings, ctx, device, vocab_size, seq_len, pad_id
    )
    eager_forward = make_forward_fn(model)
    _probe_model(eager_forward, model, next(iter(val_loader)), device, vocab_size)
    train_module = wrap_data_parallel(model, ctx, device)
    forward = _compiled_forward(model, train_module, settings.compile_options)
    total_steps = _total_steps(len(train_loader), settings)
    warmup = settings.warmup_steps if settings.warmup_steps is not None else round(0.1 * total_steps)
    if warmup > total_steps:
        raise ValueError(f"warmup_steps={warmup} exceeds the {total_steps} optimizer steps this run will take")
    optimizer = build_optimizer(model, settings.learning_rate, settings.weight_decay)
    return TrainingParts(
        settings=settings,
        model=model,
        train_module=train_module,
        forward=forward,
        # Under DDP, validate through the plain model: ranks may run different batch counts.
        eval_forward=eager_forward if ctx.enabled else forward,
        device=device,
        dist=ctx,
        flops=model_flops_per_token(model, config, seq_len),
        plan=plan,
        amp_step=MixedPrecisionStep(plan, optimizer, grad_clip=settings.grad_clip, init_scale=settings.init_loss_scale),
        optimizer=optimizer,
        scheduler=build_lr_scheduler(optimizer, warmup, total_steps),
        train_loader=train_loader,
        val_loader=val_loader,
        total_steps=total_steps,
        data_source=data_source,
    )


def _build_loaders(
    train_data: Any,
    val_data: Any,
    settings: TrainingSettings,
    ctx: DistributedContext,
    device: torch.device,
    vocab_size: int,
    seq_len: int,
    pad_id: int,
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader, str]:
    """Train and validation loaders for this rank, and the data's source label."""
    data = prepare_lm_data(
        train_data, val_data, vocab_size=vocab_size, seq_len=seq_len, max_corpus_bytes=settings.max_corpus_bytes
    )
    loader_args = dict(
        pad_token_id=pad_id,
        vocab_size=vocab_size,
        max_len=seq_len,
        pin_memory=device.type == "cuda",
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    train_loader = make_loader(data.train, settings.batch_size, shuffle=True, seed=settings.seed, **loader_args)
    val_loader = make_loader(data.val, settings.batch_size, shuffle=False, seed=settings.seed, **loader_args)
    if len(val_loader) == 0:
        raise ValueError(
            f"the validation data has {len(data.val)} sequences, fewer than the {ctx.world_size} ranks; "
            "pass more val_data or run on fewer processes"
        )
    return train_loader, val_loader, data.source


def _total_steps(n_batches: int, settings: TrainingSettings) -> int:
    steps_per_epoch = math.ceil(n_batches / settings.gradient_accumulation_steps)
    total_steps = steps_per_epoch * settings.n_epochs
    return min(total_steps, settings.max_steps) if settings.max_steps is not None else total_steps


def _start_run(
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
    outputs.pbar = _make_progress_bar(parts, state.optimizer_step)
    return state, records, outputs


def _restore_training_state(
    parts: TrainingParts,
    state: TrainingState,
    records: StepRecords,
    outputs: TrainingOutputs,
    checkpoint: dict[str, Any],
) -> None:
    """Optimizer, schedule, scaler, counters, histories and RNG, from a checkpoint (weights are already in)."""
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    parts.scheduler.load_state_dict(checkpoint["scheduler"])
    if parts.amp_step.enabled != (checkpoint["scaler"] is not None):
        warnings.warn(
            f"resuming a {checkpoint['precision']} run in {parts.plan.name}: the loss scaler state is not carried over",
            stacklevel=5,
        )
    parts.amp_step.load_state_dict(checkpoint["scaler"])
    state.start_epoch = checkpoint["epoch"] + 1
    state.optimizer_step = records.last_read_step = checkpoint["optimizer_step"]
    state.skipped_steps = records.last_read_skipped = checkpoint["skipped_steps"]
    records.history = {key: list(values) for key, values in checkpoint["history"].items()}
    outputs.tracker.epoch_rows.extend(checkpoint["epoch_rows"])
    outputs.tracker.step_rows.extend(checkpoint["step_rows"])
    state.best_value, state.best_epoch = checkpoint["best"]["value"], checkpoint["best"]["epoch"]
    _restore_callback_states(outputs.callbacks, checkpoint["callbacks"])
    if parts.dist.is_main:
        ckpt.restore_rng_state(checkpoint["rng"])  # the other ranks keep their own dropout streams


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
    """Rank 0 writes ``last.pt``; every rank waits for it, so a resume right after sees the file."""
    if parts.dist.is_main:
        checkpoint = {
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
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
        }
        ckpt.save_checkpoint(ckpt.checkpoint_path(parts.settings.checkpoint_dir), checkpoint)
    barrier(parts.dist)


def _compiled_forward(model: nn.Module, train_module: nn.Module, compile_options: dict[str, Any] | None) -> Any:
    """The training forward: through ``torch.compile(train_module)`` when asked, else eager."""
    if compile_options is None:
        return make_forward_fn(model, call=train_module)
    try:
        compiled = torch.compile(train_module, **compile_options)
    except (TypeError, RuntimeError) as err:
        raise ValueError(f"torch.compile rejected compile={compile_options!r}: {err}") from err
    return make_forward_fn(model, call=compiled)


def read_model_sizes(model: nn.Module, config: Any, settings: TrainingSettings) -> tuple[int, int, int]:
    """Vocabulary (config, else the output width), sequence length and padding id, checked against the config.

    Raises:
        ValueError: no sequence length, one over the config's ``max_seq_len``, or one under 2.
    """
    max_seq_len = config_size(config, "max_seq_len")
    seq_len = settings.seq_len or max_seq_len
    if seq_len is None:
        raise ValueError("config has no max_seq_len (or max_position_embeddings/n_positions); add it or pass seq_len=")
    if max_seq_len is not None and seq_len > max_seq_len:
        raise ValueError(f"seq_len={seq_len} exceeds config max_seq_len={max_seq_len}; pass seq_len<={max_seq_len}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 for next-token training, got {seq_len}")
    vocab_size = detect_vocab_size(model, config, seq_len=min(8, int(seq_len)))
    return vocab_size, int(seq_len), int(get_config_value(config, "pad_token_id", 0) or 0)


def _probe_model(forward: Any, model: nn.Module, batch: dict, device: torch.device, vocab_size: int) -> None:
    """One forward pass before training, so an unusable output fails fast and clearly."""
    with model_mode(model, training=False), torch.no_grad():
        input_ids, _, mask = _to_device(batch, device)
        logits = extract_logits(forward(input_ids, mask))
    expected = (*input_ids.shape, vocab_size)
    if tuple(logits.shape) != expected:
        raise ValueError(
            f"the model returned logits of shape {tuple(logits.shape)}, expected (batch, seq, vocab) = {expected}; "
            "test_fine_tuning needs per-token vocabulary logits (check config.vocab_size and the LM head)"
        )
    if not torch.isfinite(logits).all():  # a deliberate sync, once at setup
        warnings.warn(
            "the model returned NaN or Inf logits on the first validation batch (in eval mode, FP32), before "
            "any training; the run will stop at the first logging step if the loss is non-finite. Check the "
            "model's initialization and masking (Tier 1 test_output_stability shows where).",
            stacklevel=5,
        )
    elif _sees_future_tokens(forward, model, input_ids, mask, logits):
        warnings.warn(
            "the model is not causal: changing the last token changes the logits at earlier positions, so "
            "each next-token target is visible in its input and the loss can fall by copying. Add a causal "
            "mask for language modelling, or read these results as an upper bound.",
            stacklevel=5,
        )


def _sees_future_tokens(
    forward: Any, model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor | None, logits: torch.Tensor
) -> bool:
    """True when earlier positions' logits depend on the last token (a bidirectional model)."""
    if input_ids.size(1) < 2:
        return False
    changed = input_ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % logits.size(-1)
    with model_mode(model, training=False), torch.no_grad():
        other = extract_logits(forward(changed, mask))
    # A deliberate sync, once at setup.
    return not torch.allclose(logits[:, :-1].float(), other[:, :-1].float(), rtol=1e-4, atol=1e-5)


def _make_progress_bar(parts: TrainingParts, done_steps: int) -> Any:
    from utils.progress import progress_bar

    return progress_bar(
        total=parts.total_steps,
        initial=done_steps,
        desc=f"fine-tuning ({parts.plan.name})",
        unit="step",
        enabled=parts.settings.progress and parts.dist.is_main,
    )


def _start_wandb_run(parts: TrainingParts, config: Any) -> Any:
    """Log to the active W&B run, or start one here (returned, so the caller finishes it)."""
    from utils.training import wandb_run

    s = parts.settings
    return wandb_run.start_run_unless_active(
        parts.model,
        config,
        precision=parts.plan.name,
        project=s.wandb_project,
        learning_rate=s.learning_rate,
        batch_size=s.batch_size,
        n_epochs=s.n_epochs,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        max_steps=s.max_steps,
        grad_clip=s.grad_clip,
        seed=s.seed,
        data=parts.data_source,
    )


# -- the loop ------------------------------------------------------------------


def _to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    def move(t: torch.Tensor | None) -> torch.Tensor | None:
        return t.to(device, non_blocking=True) if t is not None else None

    return move(batch["input_ids"]), move(batch["labels"]), move(batch["attention_mask"])


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
    input_ids, labels, mask = _to_device(batch, parts.device)
    # Under DDP, gradients are all-reduced only on the group's last micro-batch.
    with gradient_sync(parts.train_module, sync=update):
        with parts.plan.autocast():
            logits = extract_logits(parts.forward(input_ids, mask))
            loss_sum, n_correct = next_token_loss_sums(logits, labels)
            loss = loss_sum / group_targets
        parts.amp_step.backward(loss)
    grad_norm = parts.amp_step.update(parts.model.parameters()) if update else None
    return loss.detach(), n_correct, grad_norm


def run_training_epoch(
    parts: TrainingParts, state: TrainingState, records: StepRecords, outputs: TrainingOutputs
) -> dict[str, float]:
    """One pass over the training data (or until ``max_steps``). Returns the epoch's train metrics."""
    parts.train_module.train()
    parts.train_loader.sampler.set_epoch(state.epoch)  # a new order each epoch, the same on every rank
    loss_sum = torch.zeros((), device=parts.device)
    correct = torch.zeros((), dtype=torch.long, device=parts.device)
    n_targets = 0
    first_step = len(records.losses)
    outputs.timer.start()
    for group in accumulation_groups(parts.train_loader, parts.settings.gradient_accumulation_steps):
        if state.optimizer_step >= parts.total_steps or state.stop_training:
            break
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
    max_batches = parts.settings.max_val_batches
    for i, batch in enumerate(parts.val_loader):
        if max_batches is not None and i >= max_batches:
            break  # per rank: under DDP, up to max_val_batches on each
        input_ids, labels, mask = _to_device(batch, parts.device)
        with parts.plan.autocast():
            logits = extract_logits(parts.eval_forward(input_ids, mask))
            batch_loss, batch_correct = next_token_loss_sums(logits, labels)
        loss_sum += batch_loss
        correct += batch_correct
        n_targets += batch["n_targets"]
    parts.train_module.train()
    loss, accuracy = _read_totals(parts, loss_sum, correct, n_targets)
    return {"val/loss": loss, "val/accuracy": accuracy}


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


# -- results -------------------------------------------------------------------


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
        "compiled": parts.settings.compile_options is not None,
        "checkpoint_path": str(ckpt.checkpoint_path(checkpoint_dir)) if checkpoint_dir else None,
        "parameters": count_parameters(parts.model)["total"],
        "data_source": parts.data_source,
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


__all__ = [
    "CALLBACK_HOOKS",
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
    "run_training_epoch",
    "run_validation_epoch",
    "seed_everything",
    "train",
    "training_step",
]
