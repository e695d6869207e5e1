"""What a training run is made of, and the setup that builds it once (``build_parts``).

What travels through the loop is split by how it changes:

- ``TrainingParts`` (frozen): what setup builds once: model and its wrappers,
  loaders, optimizer, schedule, the mixed-precision step.
- ``TrainingState``: the counters (epoch, optimizer step, skipped steps,
  ``stop_training``). Callbacks receive it.
- ``StepRecords``: the per-step records (device tensors until a host read) and
  the histories.
- ``TrainingOutputs``: where results go: the metrics tracker, the step timer,
  the progress bar and the callbacks.

Setup resolves ranks, device and precision, builds the loaders, optimizer and
schedule, and probes the model once so that an unusable output fails fast; the
same probe batch gives the causal verdict (``utils.causality.probe_causality``).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from utils.causality import CausalVerdict, probe_causality
from utils.model_helpers import (
    config_size,
    detect_vocab_size,
    extract_logits,
    get_config_value,
    make_forward_fn,
    model_mode,
)
from utils.training.blocks import choose_blocks
from utils.training.data import make_loader, prepare_lm_data, text_token_bytes
from utils.training.distributed import DistributedContext, max_host_value, setup_distributed, wrap_data_parallel
from utils.training.flops import FlopsPerToken, model_flops_per_token
from utils.training.fsdp import ModelPlacement, place_model, reshard
from utils.training.items import longest_item
from utils.training.metrics_tracker import MetricsTracker
from utils.training.optim import build_lr_scheduler, build_optimizer
from utils.training.precision import MixedPrecisionStep, PrecisionPlan, resolve_precision
from utils.training.settings import TrainingSettings, total_steps
from utils.training.timing import StepTimer


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
    placement: ModelPlacement  # one process, DDP or FSDP shards; which blocks recompute activations
    causality: CausalVerdict = CausalVerdict(None, "not probed")  # the setup's causal probe (utils.causality)
    tokenizer: Any = None  # the TextTokenizer the text was encoded with (utils.training.text_tokenizer)


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
    # Where the current epoch stands: micro-batches trained, whether it ran to its end, and its train
    # sums (loss, correct, targets) so far. A run stopped by max_steps inside an epoch resumes from here.
    epoch_batches: int = 0
    epoch_complete: bool = True
    epoch_sums: tuple[float, int, int] = (0.0, 0, 0)


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
    sampler: Any = None  # takes the samples of sample_every (utils.training.sampling)

    def notify(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if callable(method):
                method(*args)

    def close(self) -> None:
        if self.pbar is not None:
            self.pbar.close()


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

    ``weights`` (a checked state dict, when resuming) are loaded right after the move to the device
    (under FSDP, just before sharding), before anything wraps or probes the model.
    """
    fsdp = settings.strategy == "fsdp"
    # Before any work: an fsdp_wrap that names no class of the model fails here.
    blocks = choose_blocks(model, settings.fsdp_wrap, shard=fsdp, checkpoint=settings.activation_checkpointing)
    ctx, device = setup_distributed(settings.device, process_group=fsdp)
    plan = resolve_precision(settings.precision, settings.use_amp, device)
    placement = place_model(
        model,
        blocks,
        strategy=settings.strategy,
        activation_checkpointing=settings.activation_checkpointing,
        ctx=ctx,
        device=device,
        plan=plan,
        weights=weights,
    )
    vocab_size, seq_len, pad_id = read_model_sizes(model, config, settings, train_data)
    train_loader, val_loader, data_source, tokenizer = _build_loaders(
        train_data, val_data, settings, ctx, device, vocab_size, seq_len, pad_id
    )
    eager_forward = make_forward_fn(model)
    causality = _probe_model(eager_forward, model, next(iter(val_loader)), device, vocab_size, config, ctx)
    train_module = wrap_data_parallel(model, ctx, device)
    forward = _compiled_forward(model, train_module, settings.compile_options)
    steps = total_steps(len(train_loader), settings)
    warmup = settings.warmup_steps if settings.warmup_steps is not None else round(0.1 * steps)
    if warmup > steps:
        raise ValueError(f"warmup_steps={warmup} exceeds the {steps} optimizer steps this run will take")
    reshard(model)  # under FSDP, the optimizer must hold the shards, not the probe's gathered root
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
        scheduler=build_lr_scheduler(optimizer, warmup, steps),
        train_loader=train_loader,
        val_loader=val_loader,
        total_steps=steps,
        data_source=data_source,
        causality=causality,
        tokenizer=tokenizer,
        placement=placement,
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
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader, str, Any]:
    """Train and validation loaders for this rank, the data's source label, and the tokenizer of its text."""
    data = prepare_lm_data(
        train_data,
        val_data,
        vocab_size=vocab_size,
        seq_len=seq_len,
        max_corpus_bytes=settings.max_corpus_bytes,
        tokenizer=settings.tokenizer,
        text_column=settings.text_column,
        seed=settings.seed,
        progress=settings.progress and ctx.is_main,
        # Large files are tokenized once: their ids are kept with the run's checkpoints.
        cache_dir=settings.checkpoint_dir / "tokens" if settings.checkpoint_dir is not None else None,
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
    # Validation batches also count the bytes of text their targets cover, for val/bits_per_byte.
    val_loader = make_loader(
        data.val,
        settings.batch_size,
        shuffle=False,
        seed=settings.seed,
        token_bytes=text_token_bytes(data.val),
        **loader_args,
    )
    if len(val_loader) == 0:
        raise ValueError(
            f"the validation data has {len(data.val)} sequences, fewer than the {ctx.world_size} ranks; "
            "pass more val_data or run on fewer processes"
        )
    return train_loader, val_loader, data.source, data.tokenizer


def _compiled_forward(model: nn.Module, train_module: nn.Module, compile_options: dict[str, Any] | None) -> Any:
    """The training forward: through ``torch.compile(train_module)`` when asked, else eager."""
    if compile_options is None:
        return make_forward_fn(model, call=train_module)
    try:
        compiled = torch.compile(train_module, **compile_options)
    except (TypeError, RuntimeError) as err:
        raise ValueError(f"torch.compile rejected compile={compile_options!r}: {err}") from err
    return make_forward_fn(model, call=compiled)


def read_model_sizes(
    model: nn.Module, config: Any, settings: TrainingSettings, train_data: Any = None
) -> tuple[int, int, int]:
    """Vocabulary (config, else the output width), sequence length and padding id, checked against the config.

    The sequence length is ``settings.seq_len``, else the config's ``max_seq_len``, else the
    longest sequence of token-id ``train_data`` (a config such as ``SimpleNamespace(vocab_size=30)``).

    Raises:
        ValueError: no sequence length, one over the config's ``max_seq_len``, or one under 2.
    """
    max_seq_len = config_size(config, "max_seq_len")
    seq_len = settings.seq_len or max_seq_len or longest_item(train_data)
    if seq_len is None:
        raise ValueError(
            "config has no max_seq_len (or max_position_embeddings/n_positions) and the data does not show one; "
            "add it to the config or pass seq_len="
        )
    if max_seq_len is not None and seq_len > max_seq_len:
        raise ValueError(f"seq_len={seq_len} exceeds config max_seq_len={max_seq_len}; pass seq_len<={max_seq_len}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 for next-token training, got {seq_len}")
    vocab_size = detect_vocab_size(model, config, seq_len=min(8, int(seq_len)))
    return vocab_size, int(seq_len), int(get_config_value(config, "pad_token_id", 0) or 0)


def _probe_model(
    forward: Any,
    model: nn.Module,
    batch: dict,
    device: torch.device,
    vocab_size: int,
    config: Any = None,
    ctx: DistributedContext | None = None,
) -> CausalVerdict:
    """One forward pass before training, so an unusable output fails fast and clearly; then the causal probe.

    Returns:
        ``probe_causality``'s verdict on this batch (None, not False, when the model's output is not finite).
    """
    with model_mode(model, training=False), torch.no_grad():
        input_ids, _, mask = to_device(batch, device)
        logits = extract_logits(forward(input_ids, mask))
    expected = (*input_ids.shape, vocab_size)
    if tuple(logits.shape) != expected:
        raise ValueError(
            f"the model returned logits of shape {tuple(logits.shape)}, expected (batch, seq, vocab) = {expected}; "
            "test_fine_tuning needs per-token vocabulary logits (check config.vocab_size and the LM head)"
        )
    # A deliberate sync, once at setup. Every rank takes the same branch: under FSDP each forward is collective.
    if max_host_value(int(not torch.isfinite(logits).all()), ctx or DistributedContext(), device):
        warnings.warn(
            "the model returned NaN or Inf logits on the first validation batch (in eval mode, FP32), before "
            "any training; the run will stop at the first logging step if the loss is non-finite. Check the "
            "model's initialization and masking (Tier 1 test_output_stability shows where).",
            stacklevel=5,
        )
        return CausalVerdict(None, "cannot tell: the model's logits are not finite")
    verdict = probe_causality(model, input_ids, mask, forward=forward, vocab_size=vocab_size, config=config)
    if verdict.warning is not None:
        warnings.warn(verdict.warning, stacklevel=5)
    return verdict


def to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The batch's (input_ids, labels, attention_mask) on ``device``; the copies need not block."""

    def move(t: torch.Tensor | None) -> torch.Tensor | None:
        return t.to(device, non_blocking=True) if t is not None else None

    return move(batch["input_ids"]), move(batch["labels"]), move(batch["attention_mask"])


def make_progress_bar(parts: TrainingParts, done_steps: int) -> Any:
    """The step progress bar, on rank 0 only when ``progress`` is on; it starts at ``done_steps``."""
    from utils.progress import progress_bar

    return progress_bar(
        total=parts.total_steps,
        initial=done_steps,
        desc=f"fine-tuning ({parts.plan.name})",
        unit="step",
        enabled=parts.settings.progress and parts.dist.is_main,
    )


def start_wandb_run(parts: TrainingParts, config: Any) -> Any:
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


__all__ = [
    "StepRecords",
    "TrainingOutputs",
    "TrainingParts",
    "TrainingState",
    "build_parts",
    "make_progress_bar",
    "read_model_sizes",
    "seed_everything",
    "start_wandb_run",
    "to_device",
]
