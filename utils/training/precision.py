"""Mixed precision, resolved once.

``resolve_precision`` turns what the user asked for (``precision``,
``use_amp``) and the hardware into a ``PrecisionPlan``: an autocast context,
an optional GradScaler (fp16 only) and the compute dtype. The training loop
uses the plan and never asks again; a disabled autocast and a missing scaler
are simply the no-op case.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from utils import device as hardware  # the probes are looked up at call time, so tests can patch them

# The one precision table: name -> (autocast dtype, needs a GradScaler). fp32 runs with autocast disabled.
# Every list of precision names in the library is derived from it.
PRECISION_TABLE: dict[str, tuple[torch.dtype, bool]] = {
    "fp32": (torch.float32, False),
    "fp16": (torch.float16, True),
    "bf16": (torch.bfloat16, False),
}
PRECISION_NAMES = tuple(PRECISION_TABLE)  # what can really run
PRECISIONS = ("auto", *PRECISION_NAMES)  # what a user may ask for
AMP_PRECISIONS = tuple(name for name in PRECISION_NAMES if name != "fp32")  # the reduced ones


@dataclass(frozen=True)
class PrecisionPlan:
    """How one training or inference run computes.

    Attributes:
        name: 'fp32', 'fp16' or 'bf16': what really runs.
        device_type: 'cuda', 'cpu' or 'mps'.
        dtype: the autocast compute dtype (float32 for fp32).
        use_scaler: True only for fp16, which needs loss scaling.
        reason: one line on why this precision was chosen.
    """

    name: str
    device_type: str
    dtype: torch.dtype
    use_scaler: bool
    reason: str

    @property
    def amp_enabled(self) -> bool:
        return self.name != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context for forward and loss (a no-op for fp32)."""
        if not self.amp_enabled:
            return contextlib.nullcontext()
        return torch.amp.autocast(self.device_type, dtype=self.dtype)

    def make_scaler(self, init_scale: float = 2.0**16) -> torch.amp.GradScaler | None:
        """A fresh GradScaler for fp16, else None."""
        if not self.use_scaler:
            return None
        return torch.amp.GradScaler(self.device_type, init_scale=init_scale)


class MixedPrecisionStep:
    """The whole mixed-precision optimizer step in one object, as timm's ``NativeScaler``.

    It owns the GradScaler: enabled for fp16, and a disabled (pass-through)
    one for bf16 and fp32, so the loop has one code path and never asks
    which precision runs. ``backward`` scales the loss; ``update`` unscales,
    clips, steps, updates the scale and clears the gradients. Whether the
    scaler skipped the step (inf/NaN gradients) is known without a sync,
    through an optimizer step post-hook.

    Example:
        >>> step = MixedPrecisionStep(plan, optimizer, grad_clip=1.0)
        >>> with plan.autocast():
        ...     loss = loss_fn(model(x))
        >>> step.backward(loss)
        >>> grad_norm = step.update(model.parameters())
        >>> step.stepped    # False when the scaler skipped this step
    """

    def __init__(
        self,
        plan: PrecisionPlan,
        optimizer: torch.optim.Optimizer,
        *,
        grad_clip: float | None = None,
        init_scale: float = 2.0**16,
    ) -> None:
        self.optimizer = optimizer
        self.max_norm = grad_clip if grad_clip is not None else math.inf
        self.scaler = torch.amp.GradScaler(plan.device_type, init_scale=init_scale, enabled=plan.use_scaler)
        self.stepped = False
        # The scaler skips optimizer.step() on inf/NaN gradients; this hook tells us, with no sync.
        optimizer.register_step_post_hook(self._mark_stepped)

    @property
    def enabled(self) -> bool:
        """True when a real (fp16) loss scaler runs."""
        return self.scaler.is_enabled()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of the (scaled) loss. Call it outside autocast."""
        self.scaler.scale(loss).backward()

    def update(self, parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
        """Unscale, clip, step, update the scale and clear the gradients. Returns the pre-clip norm."""
        self.stepped = False
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, self.max_norm)
        self.scaler.step(self.optimizer)  # with a real scaler, its one sync per step: the inf/NaN check
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm.detach()

    def loss_scale(self) -> torch.Tensor | None:
        """A device-side copy of the current loss scale (no sync), or None without a scaler."""
        if not self.enabled:
            return None
        return scaler_scale_tensor(self.scaler).detach().clone()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.enabled else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.enabled and state is not None:
            self.scaler.load_state_dict(state)

    def _mark_stepped(self, *_: Any) -> None:
        self.stepped = True


def scaler_scale_tensor(scaler: torch.amp.GradScaler) -> torch.Tensor:
    """The GradScaler's scale as its device tensor, read without a host sync.

    ``get_scale()`` returns a Python float, which syncs. The tensor sits in the
    private ``_scale`` attribute (created by the first ``scale()`` call); this is
    the one place the library touches it, and tests/test_amp_utils.py pins it,
    so a torch release that renames it breaks loudly here.
    """
    scale = scaler._scale
    if scale is None:
        raise RuntimeError("the GradScaler has no scale tensor yet: call scale(loss) before reading it")
    return scale


def validate_precision_args(precision: str, use_amp: bool | None) -> None:
    """Reject bad values and contradictions before any work starts."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}")
    if use_amp is not None and not isinstance(use_amp, bool):
        raise TypeError(f"use_amp must be True, False or None, got {use_amp!r}")
    if use_amp is True and precision == "fp32":
        raise ValueError(
            "use_amp=True contradicts precision='fp32'; drop one of them "
            "(precision='auto' with use_amp=True picks bf16 or fp16 for you)"
        )


def resolve_precision(
    precision: str = "auto", use_amp: bool | None = False, device: torch.device | str = "cpu"
) -> PrecisionPlan:
    """Choose the precision for ``device``.

    ``precision='auto'`` follows ``use_amp``: off means fp32; on means bf16
    on GPUs with native bf16 (compute capability 8.0+), fp16 with a
    GradScaler on older GPUs, and bf16 on CPUs with native bf16 (otherwise
    a warning and fp32). An explicit 'fp16' or 'bf16' wins over ``use_amp``;
    'fp16' also runs on CPU (slowly) so the scaler path can be tested anywhere.

    Raises:
        ValueError: on an unknown precision, ``use_amp=True`` with 'fp32', or
            'bf16' on a GPU that only emulates it.

    Example:
        >>> plan = resolve_precision("auto", use_amp=True, device="cuda")
        >>> with plan.autocast():
        ...     loss = model(x).mean()
    """
    validate_precision_args(precision, use_amp)
    device = torch.device(device)
    name, reason = _choose_precision(precision, bool(use_amp), device)
    dtype, use_scaler = PRECISION_TABLE[name]
    return PrecisionPlan(name, device.type, dtype, use_scaler, reason)


def _choose_precision(precision: str, use_amp: bool, device: torch.device) -> tuple[str, str]:
    if precision == "fp32" or (precision == "auto" and not use_amp):
        return "fp32", "full precision requested"
    if precision == "fp16":
        return "fp16", "fp16 requested; loss scaling with GradScaler"
    native_bf16 = _native_bf16(device)
    if precision == "bf16":
        if device.type == "cuda" and not native_bf16:
            raise ValueError(
                f"precision='bf16' needs a GPU with compute capability >= 8.0 "
                f"(found {torch.cuda.get_device_name(device)}, which only emulates bf16); "
                "use precision='fp16' or precision='auto'"
            )
        if not native_bf16:
            warnings.warn(f"{device.type} has no native bf16: bf16 autocast will be emulated and slow", stacklevel=3)
        return "bf16", "bf16 requested"
    # precision == 'auto' with AMP on
    if native_bf16:
        return "bf16", f"AMP on {device.type} with native bf16"
    if device.type == "cuda":
        return "fp16", "AMP on a GPU without native bf16: fp16 with GradScaler"
    warnings.warn(
        f"use_amp=True, but this {device.type} has no native bf16 support; training in FP32. "
        "Pass precision='fp16' to force the (slow) fp16 path.",
        stacklevel=3,
    )
    return "fp32", f"AMP requested, but this {device.type} has no native bf16"


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return hardware.cuda_supports_bf16(device)
    if device.type == "cpu":
        return hardware.cpu_supports_bf16()
    return False


def compute_effective_precision(
    requested_precision: str, use_amp: bool | None, cuda_available: bool, use_gpu: bool
) -> str:
    """The Lightning-style precision string a run really gets.

    Truth table:
        use_amp is None                        -> requested_precision, unchanged
        use_amp and cuda_available and use_gpu -> '16'
        otherwise                              -> '32'
    """
    if use_amp is None:
        return requested_precision
    return "16" if use_amp and cuda_available and use_gpu else "32"
