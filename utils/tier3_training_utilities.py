"""Tier 3: does the model learn? A hand-written training loop with careful mixed precision.

``test_fine_tuning`` reads like a table of contents: validate the settings,
set up the environment, run training and validation epochs, collect results.
Each step is a small helper below it.

Example:
    >>> from utils.models import tiny_gpt
    >>> from utils.tier3_training_utilities import test_fine_tuning
    >>> model, config = tiny_gpt()
    >>> results = test_fine_tuning(model, config, use_amp=True, max_steps=100, learning_rate=1e-3)
    >>> results["metrics_summary"]        # one row per epoch
"""

from __future__ import annotations

import math
import os
import random
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from utils.model_helpers import (
    check_positive_int,
    count_parameters,
    detect_vocab_size,
    extract_logits,
    get_config_value,
    make_forward_fn,
    model_mode,
    validate_model,
)
from utils.training.amp_utils import PrecisionPlan, resolve_precision, tf32_enabled, validate_precision_args
from utils.training import checkpoint as ckpt
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
from utils.training.timing import StepTimer

CALLBACK_HOOKS = ("on_train_begin", "on_log", "on_epoch_end", "on_train_end")

# Optimizer steps left out of the throughput and MFU figures: the first steps
# pay for torch.compile, cuDNN/cuBLAS autotuning and the allocator's growth.
THROUGHPUT_WARMUP_STEPS = 3


@dataclass(frozen=True)
class TrainingSettings:
    """Every knob of one training run, validated once by ``_validate_settings``."""

    n_epochs: int
    learning_rate: float
    batch_size: int
    gradient_accumulation_steps: int
    max_steps: int | None
    warmup_steps: int | None
    grad_clip: float | None
    weight_decay: float
    log_every: int
    seed: int
    seq_len: int | None
    max_val_batches: int | None
    max_corpus_bytes: int
    init_loss_scale: float
    progress: bool
    compile_options: dict[str, Any] | None = None  # torch.compile keyword arguments; None: eager
    checkpoint_dir: Path | None = None  # where rank 0 writes last.pt at each epoch end


@dataclass
class TrainingState:
    """What changes while training; callbacks receive it."""

    model: nn.Module
    plan: PrecisionPlan
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    optimizer_step: int = 0
    skipped_steps: int = 0
    stop_training: bool = False  # a callback may set this to end training early
    rank: int = 0  # under torchrun, this process's rank (callbacks may act on rank 0 only)
    world_size: int = 1


@dataclass
class TrainingEnvironment:
    """Everything the loop needs, built once by ``_setup_training_environment``."""

    settings: TrainingSettings
    model: nn.Module
    train_module: nn.Module  # the model, or its DistributedDataParallel wrapper
    forward: Any  # calls train_module (compiled when asked)
    eval_forward: Any
    device: torch.device
    dist: DistributedContext
    flops: FlopsPerToken
    plan: PrecisionPlan
    scaler: torch.amp.GradScaler | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    total_steps: int
    tracker: MetricsTracker
    timer: StepTimer
    callbacks: list[Any]
    state: TrainingState
    data_source: str
    # Per optimizer step, kept on the device and read once per epoch.
    step_losses: list[torch.Tensor] = field(default_factory=list)
    step_grad_norms: list[torch.Tensor] = field(default_factory=list)
    step_loss_scales: list[torch.Tensor] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)  # host ints, from the collate
    history: dict[str, list[float]] = field(
        default_factory=lambda: {"loss": [], "grad_norm": [], "loss_scale": [], "lr": []}
    )
    samples_seen: int = 0
    start_epoch: int = 0  # after the checkpoint's epoch when resuming
    last_step_stepped: bool = False
    pbar: Any = None


def test_fine_tuning(
    model: nn.Module,
    config: Any,
    train_data: Any = None,
    val_data: Any = None,
    n_epochs: int = 3,
    learning_rate: float = 5e-5,
    batch_size: int = 4,
    use_wandb: bool = False,
    use_amp: bool | None = False,
    gradient_accumulation_steps: int = 1,
    *,
    precision: str = "auto",
    device: str | torch.device | None = "auto",
    max_steps: int | None = None,
    seed: int = 0,
    grad_clip: float | None = 1.0,
    warmup_steps: int | None = None,
    weight_decay: float = 0.01,
    log_every: int = 10,
    callbacks: Sequence[Any] = (),
    seq_len: int | None = None,
    max_val_batches: int | None = 50,
    max_corpus_bytes: int = DEFAULT_CORPUS_BYTES,
    init_loss_scale: float = 2.0**16,
    wandb_project: str = "utils-transformer-tests",
    progress: bool = True,
    compile: bool | dict[str, Any] = False,
    checkpoint_dir: str | os.PathLike | None = None,
    resume_from: str | os.PathLike | None = None,
    _wandb_prefix: str = "",
) -> dict[str, Any]:
    """Train ``model`` as a next-token language model and report how it learned.

    Args:
        model: any ``nn.Module`` whose forward takes ``input_ids`` (B, T) and
            returns logits (B, T, V): a tensor, a tuple/list with logits
            first, a dict with 'logits', or an object with ``.logits``.
        config: the model's config (dataclass, dict, namespace or HF config);
            ``vocab_size`` and ``max_seq_len`` are read from it when present.
        train_data: None for the built-in Python-stdlib corpus, or token ids
            (tensor), a list of strings, a text file path, or a ``Dataset``.
        val_data: the same kinds, or None to hold out part of ``train_data``.
        n_epochs: passes over the training data.
        learning_rate: peak AdamW learning rate.
        batch_size: sequences per micro-batch.
        use_wandb: log to Weights & Biases (offline without an API key).
        use_amp: with ``precision='auto'``, train in bf16 or fp16 where the
            hardware supports it.
        gradient_accumulation_steps: micro-batches per optimizer step.
        precision: 'auto', 'fp32', 'fp16' or 'bf16'. An explicit 'fp16' or
            'bf16' wins over ``use_amp``.
        device: 'auto' (CUDA if available), 'cpu', 'cuda', or a torch.device.
        max_steps: stop after this many optimizer steps.
        seed: seeds data order, dropout and every RNG; same seed, same losses.
        grad_clip: max gradient norm, or None for no clipping.
        warmup_steps: linear warmup length in optimizer steps (None: 10%).
        weight_decay: AdamW decay for weight matrices (biases and norms get none).
        log_every: optimizer steps between host reads of the running metrics.
        callbacks: objects with any of ``on_train_begin(state)``,
            ``on_log(state, row)``, ``on_epoch_end(state, row)``,
            ``on_train_end(state, results)``.
        seq_len: tokens per sequence (default: ``config.max_seq_len``).
        max_val_batches: cap on validation batches per epoch (None: all).
        max_corpus_bytes: size cap on the built-in corpus.
        init_loss_scale: the GradScaler's starting scale (fp16 only).
        wandb_project: W&B project for a run started here.
        progress: show a tqdm progress bar.
        compile: ``True`` to train through ``torch.compile(model)``, or a dict
            of ``torch.compile`` keyword arguments (``{"mode": "max-autotune"}``).
            The first steps then include compilation; throughput and MFU
            leave them out.
        checkpoint_dir: write ``last.pt`` there at each epoch end (model,
            optimizer, schedule, scaler, histories and RNG states), atomically.
        resume_from: a checkpoint file (or its folder) to continue from, at
            the epoch after the one it saved; ``n_epochs`` counts from the
            start of the original run. With the same settings, the resumed run
            continues exactly as the uninterrupted one would have (on one
            process; under DDP the data order is exact and dropout is re-seeded).

    Under ``torchrun --nproc_per_node=N`` the same call trains with
    DistributedDataParallel: ``batch_size`` is per rank, each rank reads its
    share of every epoch, gradients are all-reduced once per optimizer step,
    the reported metrics are over all ranks, and only rank 0 shows progress
    and logs to W&B.

    Returns:
        A dict: ``loss_history``, ``grad_norm_history``, ``loss_scale_history``
        and ``lr_history`` (one entry per optimizer step), ``initial_loss`` and
        ``final_loss`` (mean train loss of the first and last logging windows),
        ``val_loss``, ``val_accuracy``, ``best_epoch``, ``metrics_summary``
        (DataFrame, one row per epoch), ``step_history`` (DataFrame, one row per
        logging step), ``training_time_seconds`` (training steps only, no
        validation), ``step_times_s``, ``samples_per_second``,
        ``tokens_per_second``, ``amp_enabled``, ``precision``,
        ``skipped_steps``, ``final_loss_scale``, ``optimizer_steps``,
        ``device``, ``world_size``, ``compiled``, ``mfu`` (a fraction, None on
        CPU or an unknown GPU), ``throughput`` (steady-state tokens/s after
        the first steps, FLOPs per token, achieved and peak TFLOP/s, MFU and
        how each was found) and ``figure``. ``samples_per_second`` and
        ``tokens_per_second`` are over all ranks and every training step.

    Raises:
        TypeError, ValueError: on bad arguments, before any work starts.
    """
    validate_model(model)
    settings = _validate_settings(
        n_epochs=n_epochs, learning_rate=learning_rate, batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, max_steps=max_steps,
        warmup_steps=warmup_steps, grad_clip=grad_clip, weight_decay=weight_decay, log_every=log_every,
        seed=seed, seq_len=seq_len, max_val_batches=max_val_batches, max_corpus_bytes=max_corpus_bytes,
        init_loss_scale=init_loss_scale, progress=progress, compile_options=_compile_options(compile),
        checkpoint_dir=ckpt.check_checkpoint_dir(checkpoint_dir),
    )  # fmt: skip
    validate_precision_args(precision, use_amp)
    _validate_callbacks(callbacks)
    resume = _load_resume_checkpoint(resume_from, settings)
    env = _setup_training_environment(
        model, config, train_data, val_data, settings,
        precision=precision, use_amp=use_amp, device=device, callbacks=callbacks,
        use_wandb=use_wandb, wandb_prefix=_wandb_prefix, resume=resume,
    )  # fmt: skip
    owned_run = _start_wandb_run(env, config, wandb_project) if env.tracker.use_wandb else None
    try:
        _notify(env, "on_train_begin", env.state)
        for epoch in range(env.start_epoch, settings.n_epochs):
            env.state.epoch = epoch
            train_metrics = _run_training_epoch(env)
            val_metrics = _run_validation_epoch(env)
            row = env.tracker.log_epoch(epoch, train_metrics, val_metrics, learning_rate=_current_lr(env))
            _notify(env, "on_epoch_end", env.state, row)
            if settings.checkpoint_dir is not None:
                _save_checkpoint(env)
            if env.state.stop_training or env.state.optimizer_step >= env.total_steps:
                break
        results = _collect_results(env)
        _notify(env, "on_train_end", env.state, results)
    finally:
        model.train()
        if env.pbar is not None:
            env.pbar.close()
        if owned_run is not None:
            owned_run.finish()
    return results


test_fine_tuning.__test__ = False  # a library function, not a pytest test


# -- setup -------------------------------------------------------------------


def _validate_settings(**values: Any) -> TrainingSettings:
    """Check every numeric setting at the edge; the message names the argument."""
    positive_ints = ("n_epochs", "batch_size", "gradient_accumulation_steps", "log_every")
    optional_positive_ints = ("max_steps", "seq_len", "max_val_batches")
    for name in positive_ints + optional_positive_ints + ("max_corpus_bytes",):
        if values[name] is not None or name not in optional_positive_ints:
            check_positive_int(values[name], name)
    if values["warmup_steps"] is not None and (not isinstance(values["warmup_steps"], int) or values["warmup_steps"] < 0):
        raise ValueError(f"warmup_steps must be a non-negative integer or None, got {values['warmup_steps']!r}")
    for name in ("learning_rate", "init_loss_scale"):
        if not isinstance(values[name], (int, float)) or not values[name] > 0 or math.isinf(values[name]):
            raise ValueError(f"{name} must be a positive finite number, got {values[name]!r}")
    if values["grad_clip"] is not None and not values["grad_clip"] > 0:
        raise ValueError(f"grad_clip must be positive or None (no clipping), got {values['grad_clip']!r}")
    if not values["weight_decay"] >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {values['weight_decay']!r}")
    if not isinstance(values["seed"], int):
        raise TypeError(f"seed must be an int, got {values['seed']!r}")
    return TrainingSettings(**values)


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


def _load_resume_checkpoint(resume_from: Any, settings: TrainingSettings) -> dict[str, Any] | None:
    """Read ``resume_from`` before any work, and check there is an epoch left to train."""
    if resume_from is None:
        return None
    checkpoint = ckpt.load_checkpoint(resume_from)
    done = checkpoint["epoch"] + 1
    if done >= settings.n_epochs:
        raise ValueError(
            f"resume_from={str(resume_from)!r} finished epoch {done} of its run; n_epochs counts from that run's "
            f"start, so pass n_epochs > {done} to train on"
        )
    return checkpoint


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


def _setup_training_environment(
    model: nn.Module,
    config: Any,
    train_data: Any,
    val_data: Any,
    settings: TrainingSettings,
    *,
    precision: str,
    use_amp: bool | None,
    device: Any,
    callbacks: Sequence[Any],
    use_wandb: bool = False,
    wandb_prefix: str = "",
    resume: dict[str, Any] | None = None,
) -> TrainingEnvironment:
    """Resolve ranks, device and precision, build data, optimizer and schedule, and probe the model once."""
    ctx, device = setup_distributed(device)
    plan = resolve_precision(precision, use_amp, device)
    model.to(device)
    if resume is not None:
        model.load_state_dict(resume["model"])  # before DDP and compile wrap it
    vocab_size, seq_len, pad_id = _read_model_sizes(model, config, settings)
    data = prepare_lm_data(
        train_data, val_data, vocab_size=vocab_size, seq_len=seq_len, max_corpus_bytes=settings.max_corpus_bytes
    )
    loader_args = dict(
        pad_token_id=pad_id, vocab_size=vocab_size, max_len=seq_len, pin_memory=device.type == "cuda",
        rank=ctx.rank, world_size=ctx.world_size,
    )  # fmt: skip
    train_loader = make_loader(data.train, settings.batch_size, shuffle=True, seed=settings.seed, **loader_args)
    val_loader = make_loader(data.val, settings.batch_size, shuffle=False, seed=settings.seed, **loader_args)
    if len(val_loader) == 0:
        raise ValueError(
            f"the validation data has {len(data.val)} sequences, fewer than the {ctx.world_size} ranks; "
            "pass more val_data or run on fewer processes"
        )
    eager_forward = make_forward_fn(model)
    _probe_model(eager_forward, model, next(iter(val_loader)), device, vocab_size)
    train_module = wrap_data_parallel(model, ctx, device)
    forward = _compiled_forward(model, train_module, settings.compile_options)

    steps_per_epoch = math.ceil(len(train_loader) / settings.gradient_accumulation_steps)
    total_steps = steps_per_epoch * settings.n_epochs
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    warmup = settings.warmup_steps if settings.warmup_steps is not None else round(0.1 * total_steps)
    if warmup > total_steps:
        raise ValueError(f"warmup_steps={warmup} exceeds the {total_steps} optimizer steps this run will take")
    optimizer = build_optimizer(model, settings.learning_rate, settings.weight_decay)
    scheduler = build_lr_scheduler(optimizer, warmup, total_steps)
    # After setup, so dropout sees the same stream every run; offset per rank so that
    # ranks drop different units (DDP has already made their weights equal).
    seed_everything(settings.seed + ctx.rank)
    env = TrainingEnvironment(
        settings=settings, model=model, train_module=train_module, forward=forward,
        # Under DDP, validate through the plain model: ranks may run different batch counts.
        eval_forward=eager_forward if ctx.enabled else forward, device=device, dist=ctx,
        flops=model_flops_per_token(model, config, seq_len), plan=plan,
        scaler=plan.make_scaler(settings.init_loss_scale), optimizer=optimizer, scheduler=scheduler,
        train_loader=train_loader, val_loader=val_loader, total_steps=total_steps,
        tracker=MetricsTracker(use_wandb=use_wandb and ctx.is_main, wandb_prefix=wandb_prefix),
        timer=StepTimer(device), callbacks=list(callbacks),
        state=TrainingState(model, plan, optimizer, rank=ctx.rank, world_size=ctx.world_size),
        data_source=data.source,
    )  # fmt: skip
    if resume is not None:
        _restore_training_state(env, resume)
    # The scaler skips optimizer.step() on inf/NaN grads; this hook tells us, with no sync.
    optimizer.register_step_post_hook(lambda *_: setattr(env, "last_step_stepped", True))
    env.pbar = _make_progress_bar(total_steps, settings.progress and ctx.is_main, plan, env.state.optimizer_step)
    return env


def _restore_training_state(env: TrainingEnvironment, checkpoint: dict[str, Any]) -> None:
    """Optimizer, schedule, scaler, counters, histories and RNG, from a checkpoint (weights are already in)."""
    env.optimizer.load_state_dict(checkpoint["optimizer"])
    env.scheduler.load_state_dict(checkpoint["scheduler"])
    if env.scaler is not None and checkpoint["scaler"] is not None:
        env.scaler.load_state_dict(checkpoint["scaler"])
    elif (env.scaler is None) != (checkpoint["scaler"] is None):
        warnings.warn(
            f"resuming a {checkpoint['precision']} run in {env.plan.name}: the loss scaler state is not carried over",
            stacklevel=4,
        )
    env.start_epoch = checkpoint["epoch"] + 1
    env.state.optimizer_step = checkpoint["optimizer_step"]
    env.state.skipped_steps = checkpoint["skipped_steps"]
    env.history = {key: list(values) for key, values in checkpoint["history"].items()}
    env.tracker.epoch_rows.extend(checkpoint["epoch_rows"])
    env.tracker.step_rows.extend(checkpoint["step_rows"])
    if env.dist.is_main:
        ckpt.restore_rng_state(checkpoint["rng"])  # the other ranks keep their own dropout streams


def _save_checkpoint(env: TrainingEnvironment) -> None:
    """Rank 0 writes ``last.pt``; every rank waits for it, so a resume right after sees the file."""
    if env.dist.is_main:
        ckpt.save_checkpoint(ckpt.checkpoint_path(env.settings.checkpoint_dir), {
            "model": env.model.state_dict(),
            "optimizer": env.optimizer.state_dict(),
            "scheduler": env.scheduler.state_dict(),
            "scaler": env.scaler.state_dict() if env.scaler is not None else None,
            "precision": env.plan.name,
            "epoch": env.state.epoch,
            "optimizer_step": env.state.optimizer_step,
            "skipped_steps": env.state.skipped_steps,
            "history": env.history,
            "epoch_rows": env.tracker.epoch_rows,
            "step_rows": env.tracker.step_rows,
            "rng": ckpt.capture_rng_state(),
        })  # fmt: skip
    barrier(env.dist)


def _compiled_forward(model: nn.Module, train_module: nn.Module, compile_options: dict[str, Any] | None) -> Any:
    """The training forward: through ``torch.compile(train_module)`` when asked, else eager."""
    if compile_options is None:
        return make_forward_fn(model, call=train_module)
    try:
        compiled = torch.compile(train_module, **compile_options)
    except (TypeError, RuntimeError) as err:
        raise ValueError(f"torch.compile rejected compile={compile_options!r}: {err}") from err
    return make_forward_fn(model, call=compiled)


def _read_model_sizes(model: nn.Module, config: Any, settings: TrainingSettings) -> tuple[int, int, int]:
    """Vocabulary (config, else the output width), sequence length and padding id."""
    max_seq_len = get_config_value(config, "max_seq_len")
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
    if _sees_future_tokens(forward, model, input_ids, mask, logits):
        warnings.warn(
            "the model is not causal: changing the last token changes the logits at earlier positions, so "
            "each next-token target is visible in its input and the loss can fall by copying. Add a causal "
            "mask for language modelling, or read these results as an upper bound.",
            stacklevel=4,
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


def _make_progress_bar(total_steps: int, enabled: bool, plan: PrecisionPlan, done_steps: int = 0) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total_steps, initial=done_steps, desc=f"fine-tuning ({plan.name})", unit="step", dynamic_ncols=True
    )


def _start_wandb_run(env: TrainingEnvironment, config: Any, project: str) -> Any:
    """Log to the active W&B run, or start one here (returned, so the caller finishes it)."""
    from utils import wandb_helpers

    s = env.settings
    return wandb_helpers.start_run_unless_active(
        env.model, config, precision=env.plan.name, project=project, learning_rate=s.learning_rate,
        batch_size=s.batch_size, n_epochs=s.n_epochs, gradient_accumulation_steps=s.gradient_accumulation_steps,
        max_steps=s.max_steps, grad_clip=s.grad_clip, seed=s.seed, data=env.data_source,
    )  # fmt: skip


def _notify(env: TrainingEnvironment, hook: str, *args: Any) -> None:
    for cb in env.callbacks:
        method = getattr(cb, hook, None)
        if callable(method):
            method(*args)


# -- the loop ------------------------------------------------------------------


def _to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    move = lambda t: t.to(device, non_blocking=True) if t is not None else None  # noqa: E731
    return move(batch["input_ids"]), move(batch["labels"]), move(batch["attention_mask"])


def _accumulation_groups(loader: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Yield lists of ``size`` micro-batches; the last group may be shorter."""
    group: list[dict] = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _training_step(
    env: TrainingEnvironment, batch: dict, group_targets: int, update: bool
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
    input_ids, labels, mask = _to_device(batch, env.device)
    # Under DDP, gradients are all-reduced only on the group's last micro-batch.
    with gradient_sync(env.train_module, sync=update):
        with env.plan.autocast():
            logits = extract_logits(env.forward(input_ids, mask))
            loss_sum, n_correct = next_token_loss_sums(logits, labels)
            loss = loss_sum / group_targets
        if env.scaler is not None:
            env.scaler.scale(loss).backward()
        else:
            loss.backward()
    grad_norm = _optimizer_update(env) if update else None
    return loss.detach(), n_correct, grad_norm


def _optimizer_update(env: TrainingEnvironment) -> torch.Tensor:
    """Unscale, clip, step, update the scale, and clear the grads. Returns the pre-clip norm."""
    env.last_step_stepped = False
    if env.scaler is not None:
        env.scaler.unscale_(env.optimizer)  # clip the true gradients, not the scaled ones
    max_norm = env.settings.grad_clip if env.settings.grad_clip is not None else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(env.model.parameters(), max_norm)
    if env.scaler is not None:
        env.scaler.step(env.optimizer)  # the scaler's one sync per step: it checks for inf/NaN here
        env.scaler.update()
    else:
        env.optimizer.step()
    env.optimizer.zero_grad(set_to_none=True)
    return grad_norm.detach()


def _run_training_epoch(env: TrainingEnvironment) -> dict[str, float]:
    """One pass over the training data (or until ``max_steps``). Returns the epoch's train metrics."""
    env.train_module.train()
    env.train_loader.sampler.set_epoch(env.state.epoch)  # a new order each epoch, the same on every rank
    loss_sum = torch.zeros((), device=env.device)
    correct = torch.zeros((), dtype=torch.long, device=env.device)
    n_targets = n_groups = 0
    first_step = len(env.step_losses)
    env.timer.start()
    for group in _accumulation_groups(env.train_loader, env.settings.gradient_accumulation_steps):
        if env.state.optimizer_step >= env.total_steps or env.state.stop_training:
            break
        group_targets = max(1, sum(b["n_targets"] for b in group))  # host ints: no sync
        step_loss = torch.zeros((), device=env.device)
        for i, batch in enumerate(group):
            loss, n_correct, grad_norm = _training_step(env, batch, group_targets, update=i == len(group) - 1)
            step_loss += loss
            correct += n_correct
            env.samples_seen += batch["input_ids"].size(0)
        env.timer.mark()
        env.step_tokens.append(sum(b["n_tokens"] for b in group))
        _finish_optimizer_step(env, step_loss, grad_norm)
        loss_sum += step_loss * group_targets
        n_targets += group_targets
        n_groups += 1
    env.timer.stop()
    _drain_step_history(env, first_step)
    loss, accuracy = _read_totals(env, loss_sum, correct, n_targets)
    return {"train/loss": loss, "train/accuracy": accuracy}


def _read_totals(env: TrainingEnvironment, loss_sum: torch.Tensor, correct: torch.Tensor, n_targets: int) -> tuple[float, float]:
    """Mean loss and accuracy over all ranks' targets: one collective and one deliberate sync."""
    totals = torch.stack([loss_sum, correct.to(loss_sum.dtype), loss_sum.new_tensor(n_targets)])
    loss_total, correct_total, targets = all_reduce_sum(totals, env.dist).tolist()
    return loss_total / max(1.0, targets), correct_total / max(1.0, targets)


def _finish_optimizer_step(env: TrainingEnvironment, step_loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
    """Book-keeping after an update: schedule, skip count, histories, logging. Host-side only."""
    state = env.state
    env.step_losses.append(step_loss)
    env.step_grad_norms.append(grad_norm)
    if env.scaler is not None:
        # A clone of the scaler's device-side scale: recorded without a sync.
        env.step_loss_scales.append(env.scaler._scale.detach().clone())
    env.history["lr"].append(_current_lr(env))
    if env.last_step_stepped:
        env.scheduler.step()
    else:
        state.skipped_steps += 1  # the scaler skipped this step (inf/NaN grads): the LR holds still
    state.optimizer_step += 1
    if env.pbar is not None:
        env.pbar.update(1)
    if state.optimizer_step % env.settings.log_every == 0 or state.optimizer_step == env.total_steps:
        _log_window(env)


def _log_window(env: TrainingEnvironment) -> None:
    """Read the last ``log_every`` steps' loss and grad norm: one deliberate sync."""
    n = min(env.settings.log_every, len(env.step_losses))
    losses = torch.stack(env.step_losses[-n:])
    norms = torch.stack(env.step_grad_norms[-n:]).float()
    finite = torch.isfinite(norms)
    mean_norm = torch.where(finite, norms, 0).sum() / finite.sum().clamp(min=1)
    values = [losses.mean(), mean_norm] + ([env.step_loss_scales[-1]] if env.step_loss_scales else [])
    # Grad norm and loss scale agree on every rank after DDP's all-reduce; the loss is each rank's own.
    read = all_reduce_mean(torch.stack([v.float() for v in values]), env.dist).tolist()
    row = {
        "train/step": env.state.optimizer_step,
        "epoch": env.state.epoch,
        "train/loss": read[0],
        "train/grad_norm": read[1],
        "lr": env.history["lr"][-1],
        "amp/loss_scale": read[2] if len(read) > 2 else None,
        "amp/skipped_steps": env.state.skipped_steps,
    }
    env.tracker.log_step(row)
    if env.pbar is not None:
        env.pbar.set_postfix(loss=f"{row['train/loss']:.3f}", lr=f"{row['lr']:.2e}", refresh=False)
    _notify(env, "on_log", env.state, row)


def _drain_step_history(env: TrainingEnvironment, first_step: int) -> None:
    """Move this epoch's per-step device values into the host history: one sync."""
    new = slice(first_step, None)
    for key, values in (
        ("loss", env.step_losses[new]),
        ("grad_norm", env.step_grad_norms[new]),
        ("loss_scale", env.step_loss_scales[new]),
    ):
        if values:
            stacked = torch.stack(values).float()
            if key == "loss":
                stacked = all_reduce_mean(stacked, env.dist)  # each rank's loss is over its own batch
            env.history[key].extend(stacked.tolist())


@torch.no_grad()
def _run_validation_epoch(env: TrainingEnvironment) -> dict[str, float]:
    """Mean next-token loss and accuracy on the validation data, under the same autocast."""
    env.train_module.eval()
    loss_sum = torch.zeros((), device=env.device)
    correct = torch.zeros((), dtype=torch.long, device=env.device)
    n_targets = 0
    for i, batch in enumerate(env.val_loader):
        if env.settings.max_val_batches is not None and i >= env.settings.max_val_batches:
            break  # per rank: under DDP, up to max_val_batches on each
        input_ids, labels, mask = _to_device(batch, env.device)
        with env.plan.autocast():
            logits = extract_logits(env.eval_forward(input_ids, mask))
            batch_loss, batch_correct = next_token_loss_sums(logits, labels)
        loss_sum += batch_loss
        correct += batch_correct
        n_targets += batch["n_targets"]
    env.train_module.train()
    loss, accuracy = _read_totals(env, loss_sum, correct, n_targets)
    return {"val/loss": loss, "val/accuracy": accuracy}


def _current_lr(env: TrainingEnvironment) -> float:
    return env.optimizer.param_groups[0]["lr"]


# -- results -------------------------------------------------------------------


def _collect_results(env: TrainingEnvironment) -> dict[str, Any]:
    """Assemble the results dict from the tracker, the histories and the timer."""
    step_times = env.timer.step_times_s()
    train_time_s = sum(step_times)
    (samples, tokens), throughput = _measure_throughput(env, step_times)
    epochs = env.tracker.get_summary()
    steps = env.tracker.get_step_history()
    last = env.tracker.epoch_rows[-1] if env.tracker.epoch_rows else {}
    window = env.settings.log_every
    losses = env.history["loss"]
    scales = env.history["loss_scale"]
    return {
        "loss_history": losses,
        "grad_norm_history": env.history["grad_norm"],
        "loss_scale_history": scales,
        "lr_history": env.history["lr"],
        "initial_loss": _mean(losses[:window]),
        "final_loss": _mean(losses[-window:]),
        "val_loss": last.get("val/loss"),
        "val_accuracy": last.get("val/accuracy"),
        "best_epoch": env.tracker.get_best_epoch("val/loss", "min"),
        "metrics_summary": epochs,
        "step_history": steps,
        "training_time_seconds": train_time_s,
        "step_times_s": step_times,
        "samples_per_second": samples / train_time_s if train_time_s else None,
        "tokens_per_second": tokens / train_time_s if train_time_s else None,
        "mfu": throughput["mfu"],
        "throughput": throughput,
        "amp_enabled": env.plan.amp_enabled,
        "precision": env.plan.name,
        "precision_reason": env.plan.reason,
        "skipped_steps": env.state.skipped_steps,
        "final_loss_scale": scales[-1] if scales else None,
        "optimizer_steps": env.state.optimizer_step,
        "device": str(env.device),
        "world_size": env.dist.world_size,
        "compiled": env.settings.compile_options is not None,
        "checkpoint_path": (
            str(ckpt.checkpoint_path(env.settings.checkpoint_dir)) if env.settings.checkpoint_dir else None
        ),
        "parameters": count_parameters(env.model)["total"],
        "data_source": env.data_source,
        "figure": _create_training_visualization(epochs, steps, env.history, env.plan),
    }


def _measure_throughput(
    env: TrainingEnvironment, step_times: list[float]
) -> tuple[tuple[float, float], dict[str, Any]]:
    """Totals over all ranks, and steady-state tokens/s (first steps left out), FLOPs per token and MFU.

    Rank 0's clock times the steps; samples and tokens are summed over ranks, once, here.

    Returns:
        ((samples, tokens) over every step, the ``throughput`` dict).
    """
    skip = min(THROUGHPUT_WARMUP_STEPS, max(0, len(step_times) - 1))
    timed_s = sum(step_times[skip:])
    samples, tokens, timed_tokens = sum_host_values(
        [env.samples_seen, sum(env.step_tokens), sum(env.step_tokens[skip:])], env.dist, env.device
    )
    tokens_per_s = timed_tokens / timed_s if timed_s else None
    peak = peak_tflops(env.device, env.plan.name, tf32=tf32_enabled())
    achieved = tokens_per_s * env.flops.flops / 1e12 if tokens_per_s else None
    return (samples, tokens), {
        "tokens_per_second": tokens_per_s,
        "timed_steps": len(step_times) - skip,
        "warmup_steps_excluded": skip,
        "flops_per_token": env.flops.flops,
        "flops_note": env.flops.note,
        "achieved_tflops_per_device": achieved / env.dist.world_size if achieved is not None else None,
        "peak_tflops_per_device": peak.tflops,
        "peak_note": peak.note,
        "mfu": compute_mfu(tokens_per_s, env.flops.flops, peak.tflops, env.dist.world_size),
        "world_size": env.dist.world_size,
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _create_training_visualization(epochs: Any, steps: Any, history: dict[str, list[float]], plan: PrecisionPlan) -> Any:
    """Loss, gradient norm, learning rate and loss scale (or accuracy), as one Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7), layout="constrained")
    ax_loss, ax_norm, ax_lr, ax_last = fig.subplots(2, 2).flat
    step_axis = range(1, len(history["loss"]) + 1)
    ax_loss.plot(step_axis, history["loss"], lw=0.8, alpha=0.6, label="train (per step)")
    if len(steps):
        ax_loss.plot(steps["train/step"], steps["train/loss"], lw=1.5, label="train (window mean)")
    if len(epochs) and "val/loss" in epochs and len(steps):
        epoch_ends = steps.groupby("epoch")["train/step"].max().reindex(epochs["epoch"]).to_numpy()
        ax_loss.plot(epoch_ends, epochs["val/loss"], "o-", label="validation")
    ax_loss.set(title="Loss", xlabel="optimizer step", ylabel="cross-entropy")
    ax_loss.legend()
    ax_norm.plot(step_axis, history["grad_norm"], lw=0.8)
    ax_norm.set(title="Gradient norm (before clipping)", xlabel="optimizer step", yscale="log")
    ax_lr.plot(step_axis, history["lr"], lw=1.2)
    ax_lr.set(title="Learning rate", xlabel="optimizer step")
    if history["loss_scale"]:
        ax_last.plot(step_axis, history["loss_scale"], lw=1.2)
        ax_last.set(title="fp16 loss scale", xlabel="optimizer step", yscale="log")
    elif len(epochs) and "val/accuracy" in epochs:
        ax_last.plot(epochs["epoch"], epochs["val/accuracy"], "o-", label="validation")
        ax_last.plot(epochs["epoch"], epochs["train/accuracy"], "o-", label="train")
        ax_last.set(title="Next-token accuracy", xlabel="epoch")
        ax_last.legend()
    fig.suptitle(f"test_fine_tuning — precision {plan.name}")
    return fig
