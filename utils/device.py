"""The machine layer: which device to run on, its name, memory, syncs and the hardware number formats.

Every module that asks "which device?", "how much memory did that take?" or "does this
chip do bf16 or TF32?" asks here, so the answer has one spelling. It imports torch only.

Example:
    >>> device = resolve_device("auto")
    >>> reset_peak_memory(device); ...; peak_memory_mb(device)  # None on CPU
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import torch

MB = 2**20  # bytes in a MiB: every memory figure in the library is in MiB
# bf16 tensor cores arrived with Ampere. Older GPUs (the T4 among them) answer
# True to torch.cuda.is_bf16_supported() because they can emulate it, slowly.
MIN_BF16_COMPUTE_CAPABILITY = (8, 0)

DEVICE_TYPES = ("cpu", "cuda", "mps")  # what the library runs on; torch.device also names meta, xpu ...


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``'auto'``/``None``/a name into a usable ``torch.device``, or explain why not."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a device name; use 'auto', 'cpu' or 'cuda'") from err
    if resolved.type not in DEVICE_TYPES:
        raise ValueError(
            f"device={device!r}: the library runs on {', '.join(DEVICE_TYPES)}; use 'auto', 'cpu' or 'cuda'"
        )
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use device='cpu' or 'auto'")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(
            f"device={device!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}; "
            "use one of those or 'auto'"
        )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS is not available here; use device='cpu' or 'auto'")
    return resolved


def device_name(device: torch.device) -> str:
    """A human-readable device name for reports, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def reset_peak_memory(device: torch.device) -> None:
    """Free what can be freed and start a fresh CUDA allocator peak (on CPU, only the garbage collection)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """The CUDA allocator's peak since the last reset, in MiB; None on CPU, where no such peak exists."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / MB


def synchronize(device: torch.device) -> None:
    """Wait for queued device work. A deliberate sync: call it only at timing edges."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_supports_bf16(device: torch.device | None = None) -> bool:
    """True on GPUs with native bf16 (compute capability 8.0 or higher)."""
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= MIN_BF16_COMPUTE_CAPABILITY


def tf32_settings() -> dict[str, bool]:
    """Whether FP32 matmuls (cuBLAS) and convolutions (cuDNN) may use TF32, under either torch API."""
    return {"matmul": _tf32_flag(torch.backends.cuda.matmul), "cudnn": _tf32_flag(torch.backends.cudnn)}


def tf32_enabled() -> bool:
    """True when FP32 matmuls on CUDA may use TF32 tensor cores."""
    return tf32_settings()["matmul"]


def _tf32_flag(backend: Any) -> bool:
    try:
        return bool(backend.allow_tf32)
    except RuntimeError:  # the newer fp32_precision API is in use; the legacy flag then refuses to answer
        return getattr(backend, "fp32_precision", "ieee") == "tf32"


@contextlib.contextmanager
def tf32_allowed(allowed: bool) -> Iterator[None]:
    """Allow or forbid TF32 for matmuls and cuDNN for the duration, then restore the caller's setting.

    It speaks whichever TF32 API the process already uses: torch refuses a mix of the two.
    """
    backends = (torch.backends.cuda.matmul, torch.backends.cudnn)
    try:
        attr, value, saved = "allow_tf32", allowed, [b.allow_tf32 for b in backends]
    except RuntimeError:
        attr, value = "fp32_precision", "tf32" if allowed else "ieee"
        saved = [b.fp32_precision for b in backends]
    for backend in backends:
        setattr(backend, attr, value)
    try:
        yield
    finally:
        for backend, old in zip(backends, saved):
            setattr(backend, attr, old)


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 instructions (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
