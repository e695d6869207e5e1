"""What a result is reported with: the one environment record and the one JSON converter.

Every place that reports a result (the AMP benchmark, the tiers, W&B, the
report folder and ``benchmarks/``) records the machine and the settings that
change the figures through ``environment_record``, with one spelling of
every key, and turns results into JSON through ``to_jsonable``.

Example:
    >>> environment_record(torch.device("cpu"), precision="bf16", compile=False)["device_name"]
    'cpu'
"""

from __future__ import annotations

import math
import os
import platform
from typing import Any

import torch

from utils.device import cpu_supports_bf16, device_name, tf32_settings


def environment_record(
    device: torch.device | str, *, precision: str | None = None, compile: Any = None
) -> dict[str, Any]:
    """The machine, the software and the settings that change a result, as one flat dict.

    Args:
        device: the device the result was measured on.
        precision: the precision that really ran ('fp32', 'fp16', 'bf16'), if one did.
        compile: whether (or how) ``torch.compile`` was used, if it applies.

    Returns:
        device, device_name, gpu_count, torch_version, cuda_version, cudnn_version,
        python_version, platform, cpu_count, cpu_threads, cpu_native_bf16,
        tf32_matmul, tf32_cudnn, float32_matmul_precision, precision, compile.
    """
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    tf32 = tf32_settings()
    return {
        "device": str(device),
        "device_name": device_name(device),
        "gpu_count": torch.cuda.device_count() if on_cuda else 0,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if on_cuda else None,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_supports_bf16(),
        "tf32_matmul": tf32["matmul"],
        "tf32_cudnn": tf32["cudnn"],
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "precision": precision,
        "compile": to_jsonable(compile),
    }


def to_jsonable(value: Any) -> Any:
    """Plain JSON types from nested results: NaN/inf become None, tensors and numpy scalars numbers, objects text."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy or torch scalars
        return to_jsonable(value.item())
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return to_jsonable(value.item())
    return str(value)
