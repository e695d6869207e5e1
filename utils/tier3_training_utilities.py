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
import random
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
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
    resolve_device,
    validate_model,
)
from utils.training.amp_utils import PrecisionPlan, resolve_precision, validate_precision_args
from utils.training.data import DEFAULT_CORPUS_BYTES, make_loader, prepare_lm_data
from utils.training.losses import next_token_loss_sums
from utils.training.metrics_tracker import MetricsTracker
from utils.training.optim import build_lr_scheduler, build_optimizer
from utils.training.timing import StepTimer

CALLBACK_HOOKS = ("on_train_begin", "on_log", "on_epoch_end", "on_train_end")


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


@dataclass
class TrainingEnvironment:
    """Everything the loop needs, built once by ``_setup_training_environment``."""

    settings: TrainingSettings
    model: nn.Module
    forward: Any
    device: torch.device
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
    history: dict[str, list[float]] = field(
        default_factory=lambda: {"loss": [], "grad_norm": [], "loss_scale": [], "lr": []}
    )
    samples_seen: int = 0
    tokens_seen: int = 0
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
        ``device`` and ``figure``.

    Raises:
        TypeError, ValueError: on bad arguments, before any work starts.
    """
    validate_model(model)
    settings = _validate_settings(
        n_epochs=n_epochs, learning_rate=learning_rate, batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, max_steps=max_steps,
        warmup_steps=warmup_steps, grad_clip=grad_clip, weight_decay=weight_decay, log_every=log_every,
        seed=seed, seq_len=seq_len, max_val_batches=max_val_batches, max_corpus_bytes=max_corpus_bytes,
        init_loss_scale=init_loss_scale, progress=progress,
    )  # fmt: skip
    validate_precision_args(precision, use_amp)
    _validate_callbacks(callbacks)
    env = _setup_training_environment(
        model, config, train_data, val_data, settings,
        precision=precision, use_amp=use_amp, device=device, callbacks=callbacks,
        tracker=MetricsTracker(use_wandb=use_wandb, wandb_prefix=_wandb_prefix),
    )  # fmt: skip
    owned_run = _start_wandb_run(env, config, wandb_project) if use_wandb else None
    try:
        _notify(env, "on_train_begin", env.state)
        for epoch in range(settings.n_epochs):
            env.state.epoch = epoch
            train_metrics = _run_training_epoch(env)
            val_metrics = _run_validation_epoch(env)
            row = env.tracker.log_epoch(epoch, train_metrics, val_metrics, learning_rate=_current_lr(env))
            _notify(env, "on_epoch_end", env.state, row)
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
    tracker: MetricsTracker,
) -> TrainingEnvironment:
    """Resolve device and precision, build data, optimizer and schedule, and probe the model once."""
    device = resolve_device(device)
    plan = resolve_precision(precision, use_amp, device)
    model.to(device)
    vocab_size, seq_len, pad_id = _read_model_sizes(model, config, settings)
    data = prepare_lm_data(
        train_data, val_data, vocab_size=vocab_size, seq_len=seq_len, max_corpus_bytes=settings.max_corpus_bytes
    )
    loader_args = dict(pad_token_id=pad_id, vocab_size=vocab_size, max_len=seq_len, pin_memory=device.type == "cuda")
    train_loader = make_loader(data.train, settings.batch_size, shuffle=True, seed=settings.seed, **loader_args)
    val_loader = make_loader(data.val, settings.batch_size, shuffle=False, seed=settings.seed, **loader_args)
    forward = make_forward_fn(model)
    _probe_model(forward, model, next(iter(val_loader)), device, vocab_size)

    steps_per_epoch = math.ceil(len(train_loader) / settings.gradient_accumulation_steps)
    total_steps = steps_per_epoch * settings.n_epochs
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    warmup = settings.warmup_steps if settings.warmup_steps is not None else round(0.1 * total_steps)
    if warmup > total_steps:
        raise ValueError(f"warmup_steps={warmup} exceeds the {total_steps} optimizer steps this run will take")
    optimizer = build_optimizer(model, settings.learning_rate, settings.weight_decay)
    scheduler = build_lr_scheduler(optimizer, warmup, total_steps)
    seed_everything(settings.seed)  # after setup, so dropout sees the same stream every run
    env = TrainingEnvironment(
        settings=settings, model=model, forward=forward, device=device, plan=plan,
        scaler=plan.make_scaler(settings.init_loss_scale), optimizer=optimizer, scheduler=scheduler,
        train_loader=train_loader, val_loader=val_loader, total_steps=total_steps, tracker=tracker,
        timer=StepTimer(device), callbacks=list(callbacks), state=TrainingState(model, plan, optimizer),
        data_source=data.source,
    )  # fmt: skip
    # The scaler skips optimizer.step() on inf/NaN grads; this hook tells us, with no sync.
    optimizer.register_step_post_hook(lambda *_: setattr(env, "last_step_stepped", True))
    env.pbar = _make_progress_bar(total_steps, settings.progress, plan)
    return env


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


def _make_progress_bar(total_steps: int, enabled: bool, plan: PrecisionPlan) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total_steps, desc=f"fine-tuning ({plan.name})", unit="step", dynamic_ncols=True)


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
    env.model.train()
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
            env.tokens_seen += batch["n_tokens"]
        env.timer.mark()
        _finish_optimizer_step(env, step_loss, grad_norm)
        loss_sum += step_loss * group_targets
        n_targets += group_targets
        n_groups += 1
    env.timer.stop()
    _drain_step_history(env, first_step)
    # One deliberate sync per epoch to read the running sums.
    loss_total, correct_total = torch.stack([loss_sum, correct.to(loss_sum.dtype)]).tolist()
    return {"train/loss": loss_total / max(1, n_targets), "train/accuracy": correct_total / max(1, n_targets)}


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
    read = torch.stack([v.float() for v in values]).tolist()
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
            env.history[key].extend(torch.stack(values).float().tolist())


@torch.no_grad()
def _run_validation_epoch(env: TrainingEnvironment) -> dict[str, float]:
    """Mean next-token loss and accuracy on the validation data, under the same autocast."""
    env.model.eval()
    loss_sum = torch.zeros((), device=env.device)
    correct = torch.zeros((), dtype=torch.long, device=env.device)
    n_targets = 0
    for i, batch in enumerate(env.val_loader):
        if env.settings.max_val_batches is not None and i >= env.settings.max_val_batches:
            break
        input_ids, labels, mask = _to_device(batch, env.device)
        with env.plan.autocast():
            batch_loss, batch_correct = next_token_loss_sums(extract_logits(env.forward(input_ids, mask)), labels)
        loss_sum += batch_loss
        correct += batch_correct
        n_targets += batch["n_targets"]
    env.model.train()
    loss_total, correct_total = torch.stack([loss_sum, correct.to(loss_sum.dtype)]).tolist()  # one sync
    n = max(1, n_targets)
    return {"val/loss": loss_total / n, "val/accuracy": correct_total / n}


def _current_lr(env: TrainingEnvironment) -> float:
    return env.optimizer.param_groups[0]["lr"]


# -- results -------------------------------------------------------------------


def _collect_results(env: TrainingEnvironment) -> dict[str, Any]:
    """Assemble the results dict from the tracker, the histories and the timer."""
    step_times = env.timer.step_times_s()
    train_time_s = sum(step_times)
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
        "samples_per_second": env.samples_seen / train_time_s if train_time_s else None,
        "tokens_per_second": env.tokens_seen / train_time_s if train_time_s else None,
        "amp_enabled": env.plan.amp_enabled,
        "precision": env.plan.name,
        "precision_reason": env.plan.reason,
        "skipped_steps": env.state.skipped_steps,
        "final_loss_scale": scales[-1] if scales else None,
        "optimizer_steps": env.state.optimizer_step,
        "device": str(env.device),
        "parameters": count_parameters(env.model)["total"],
        "data_source": env.data_source,
        "figure": _create_training_visualization(epochs, steps, env.history, env.plan),
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
