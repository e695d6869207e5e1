"""``TrainingSettings``: every knob of one training run, validated once, and the step count it implies.

Example:
    >>> settings = TrainingSettings(n_epochs=1, learning_rate=1e-3, max_steps=50, precision="bf16")
    >>> total_steps(n_batches=120, settings=settings)
    50
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import torch

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
from utils.device import resolve_device
from utils.training import checkpoint as ckpt
from utils.training.blocks import check_block_spec
from utils.training.callbacks import MODES
from utils.training.corpus import DEFAULT_CORPUS_BYTES
from utils.training.fsdp import FSDP_DEVICE_TYPES, STRATEGIES
from utils.training.fsdp_api import require_fsdp2
from utils.training.precision import validate_precision_args
from utils.training.tokenization import check_tokenizer_spec

# The keys of an epoch row: any of them can be the monitored metric for best.pt and early stopping.
# 'val/bits_per_byte' is in the row when the validation data is text.
EPOCH_ROW_KEYS = (
    "val/loss",
    "val/accuracy",
    "val/perplexity",
    "train/loss",
    "train/accuracy",
    "lr",
    "epoch",
    "val/bits_per_byte",
)


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
    tokenizer: Any = "bytes"  # how text becomes ids: 'bytes', 'bpe', 'gpt2', 'auto', a tokenizer.json, an object
    text_column: str | None = None  # the text column of a Hugging Face dataset or data file
    sample_every: int | None = None  # print and log a short sample every N optimizer steps
    sample_prompt: str | None = None  # the samples' prompt (None: the start of the validation text)
    strategy: str = "auto"  # 'auto': DDP under torchrun (N > 1), else one process; 'ddp'; 'fsdp' (FSDP2 shards)
    fsdp_wrap: str | type | tuple | None = None  # the block class(es) to shard and checkpoint; None: found
    activation_checkpointing: bool = False  # recompute each block's activations in backward

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
        check_tokenizer_spec(self.tokenizer)
        check_str(self.text_column, "text_column", allow_none=True)
        check_positive_int(self.sample_every, "sample_every", allow_none=True)
        if self.sample_prompt is not None and (not isinstance(self.sample_prompt, str) or not self.sample_prompt):
            raise ValueError(f"sample_prompt must be a non-empty string or None, got {self.sample_prompt!r}")
        self._check_strategy()

    def _check_strategy(self) -> None:
        """``strategy``, ``fsdp_wrap`` and ``activation_checkpointing``, and the combinations FSDP refuses."""
        check_choice(self.strategy, "strategy", STRATEGIES)
        check_bool(self.activation_checkpointing, "activation_checkpointing")
        object.__setattr__(self, "fsdp_wrap", check_block_spec(self.fsdp_wrap, "fsdp_wrap"))
        if self.fsdp_wrap is not None and self.strategy != "fsdp" and not self.activation_checkpointing:
            raise ValueError(
                "fsdp_wrap= names the blocks to shard or to checkpoint; pass strategy='fsdp' or "
                "activation_checkpointing=True with it"
            )
        if self.strategy != "fsdp":
            return
        require_fsdp2()
        if self.precision == "fp16":
            raise ValueError(
                "strategy='fsdp' does not train in fp16: its loss scaler would need an inf/NaN check over every "
                "rank's shard. Pass precision='bf16' (or 'fp32'), or strategy='ddp' for fp16"
            )
        device_type = resolve_device(self.device).type
        if device_type not in FSDP_DEVICE_TYPES:
            raise ValueError(f"strategy='fsdp' runs on {FSDP_DEVICE_TYPES} (NCCL or gloo), not on {device_type}")

    @property
    def compile_options(self) -> dict[str, Any] | None:
        """``torch.compile`` keyword arguments, or None for eager."""
        return _compile_options(self.compile)

    def replace(self, **changes: Any) -> TrainingSettings:
        """A copy with ``changes``, validated again."""
        return dataclasses.replace(self, **changes)


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


def total_steps(n_batches: int, settings: TrainingSettings) -> int:
    """The optimizer steps a run takes over ``n_batches`` training batches per epoch, ``max_steps`` included."""
    steps_per_epoch = math.ceil(n_batches / settings.gradient_accumulation_steps)
    total_steps = steps_per_epoch * settings.n_epochs
    return min(total_steps, settings.max_steps) if settings.max_steps is not None else total_steps


# --------------------------------------------------------------------------- one vocabulary

# Every default of the library, by setting name: the facade, the coordinator, the benchmark, the search,
# the comparison, the wizard's config and the CLI all take theirs from here (tests/test_settings.py checks).
SETTING_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainingSettings)}
# What the lifecycle (TrainingCoordinator.train, the wizard) changes, because it trains for keeps: mixed
# precision wherever precision is left to 'auto' (None means that), and the best weights loaded at the end.
LIFECYCLE_DEFAULTS: dict[str, Any] = {"use_amp": None, "load_best": True}
# A model trained from scratch (the main job's built-in tiny GPT, a hand-built design) wants a far higher
# learning rate than the fine-tuning default, a bigger batch and a smaller corpus: the CLI's profile.
FROM_SCRATCH: dict[str, Any] = {
    "batch_size": 8,
    "learning_rate": 1e-3,
    "max_corpus_bytes": 200_000,
    "max_val_batches": 20,
}
# A short run from scratch to check the wiring: about 30 steps of a tiny model, seconds on a CPU.
QUICK: dict[str, Any] = {
    **FROM_SCRATCH,
    "n_epochs": 1,
    "max_steps": 30,
    "max_corpus_bytes": 40_000,
    "max_val_batches": 4,
}


def amp_by_default(use_amp: bool | None, precision: str) -> bool:
    """``use_amp`` as the lifecycle and the CLI read it: None (or a CLI with no AMP flag) means mixed
    precision wherever ``precision`` is left to 'auto' (bf16, or fp16 on older GPUs), as fine-tuning does."""
    return precision == "auto" if use_amp is None else use_amp


class OptionError(TypeError, ValueError):
    """A training option a function does not take: unknown, or one it sets itself.

    A TypeError, as Python raises for a stray keyword, and a ValueError, as for any bad argument.
    """


def from_options(
    caller: str,
    options: dict[str, Any],
    *,
    reserved: dict[str, str] | None = None,
    defaults: dict[str, Any] | None = None,
    **fixed: Any,
) -> TrainingSettings:
    """``TrainingSettings`` from a function's pass-through ``**options``, every one checked before any work.

    Args:
        caller: the function's name, for the messages.
        options: the training options the user passed on.
        reserved: options the caller sets itself, each with what to do instead.
        defaults: the caller's own defaults, under ``options``.
        **fixed: settings the caller always sets (from its own arguments).

    Raises:
        OptionError: an option that is reserved or is no training setting, naming it.
        ValueError, TypeError: a bad value, naming the setting (from ``TrainingSettings``).

    Example:
        >>> from_options("test_amp_speedup_benchmark", {"seq_len": 64}, reserved={"use_amp": "set per arm"})
    """
    reserved = reserved or {}
    for name, why in reserved.items():
        if name in options:
            raise OptionError(f"{caller} does not take {name}=: {why}")
    unknown = sorted(set(options) - set(SETTING_DEFAULTS))
    if unknown:
        accepted = sorted(set(SETTING_DEFAULTS) - set(reserved) - set(fixed))
        raise OptionError(f"{caller} got unknown option(s) {unknown}; it passes on {accepted}")
    return TrainingSettings(**{**(defaults or {}), **options, **fixed})


__all__ = [
    "EPOCH_ROW_KEYS",
    "FROM_SCRATCH",
    "LIFECYCLE_DEFAULTS",
    "amp_by_default",
    "QUICK",
    "SETTING_DEFAULTS",
    "OptionError",
    "TrainingSettings",
    "from_options",
    "total_steps",
]
