"""Model FLOPs utilisation: how much of the GPU's datasheet peak the training really uses.

FLOPs per token follow the PaLM appendix-B count for a training step
(forward plus backward): ``6 * N + 12 * n_layers * seq_len * d_model``, where
``N`` counts the weights that take part in matrix multiplies and the second
term is attention's score and value products (the full T x T matrix, as in
PaLM and nanoGPT, even for a causal mask). MFU divides the achieved FLOP rate
by the dense (no sparsity) datasheet peak for the detected GPU and precision.

Example:
    >>> fpt = model_flops_per_token(model, config, seq_len=1024)
    >>> peak = peak_tflops(torch.device("cuda"), "bf16")
    >>> compute_mfu(tokens_per_second=250_000, flops_per_token=fpt.flops, peak_tflops=peak.tflops)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from utils.device import device_name, tf32_enabled
from utils.model_helpers import get_config_value

# Dense datasheet peaks in TFLOP/s (NVIDIA's figures without 2:4 sparsity).
# 'fp32' is the plain CUDA-core rate, 'tf32' the tensor-core rate used when
# TF32 matmuls are allowed. None: the GPU has no such tensor-core path (a T4 or
# V100 only emulates bf16), so no MFU is given.
GPU_PEAK_TFLOPS: dict[str, dict[str, float | None]] = {
    "V100 SXM2": {"fp32": 15.7, "tf32": None, "fp16": 125.0, "bf16": None},
    "V100 PCIe": {"fp32": 14.0, "tf32": None, "fp16": 112.0, "bf16": None},
    "T4": {"fp32": 8.1, "tf32": None, "fp16": 65.0, "bf16": None},
    "A10": {"fp32": 31.2, "tf32": 62.5, "fp16": 125.0, "bf16": 125.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0, "bf16": 121.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "fp16": 362.0, "bf16": 362.0},
    "A100": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
    "H100 SXM": {"fp32": 67.0, "tf32": 494.5, "fp16": 989.5, "bf16": 989.5},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "fp16": 756.5, "bf16": 756.5},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5},
    "H200 SXM": {"fp32": 67.0, "tf32": 494.5, "fp16": 989.5, "bf16": 989.5},
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5},
}

# torch.cuda.get_device_name() -> table key, most specific pattern first
# ('NVIDIA H100 80GB HBM3' is the SXM part; 'GH200' carries an H100-class GPU).
_GPU_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"GH200", "H100 SXM"),
    (r"H200.*NVL", "H200 NVL"),
    (r"H200", "H200 SXM"),
    (r"H100.*NVL", "H100 NVL"),
    (r"H100.*PCIe", "H100 PCIe"),
    (r"H100", "H100 SXM"),
    (r"A100", "A100"),
    (r"L40S", "L40S"),
    (r"\bL4\b", "L4"),
    (r"\bA10\b", "A10"),
    (r"\bT4\b", "T4"),
    (r"V100.*PCIE", "V100 PCIe"),
    (r"V100", "V100 SXM2"),
)


@dataclass(frozen=True)
class FlopsPerToken:
    """Training FLOPs per token, with the parts it was built from."""

    flops: float
    matmul_params: int
    attention_flops: float
    note: str


@dataclass(frozen=True)
class PeakFlops:
    """A datasheet peak (None when unknown) and where it came from."""

    tflops: float | None
    gpu: str | None
    column: str | None
    note: str


def gpu_table_key(name: str) -> str | None:
    """The ``GPU_PEAK_TFLOPS`` key for a CUDA device name, or None if the GPU is not in the table.

    Example:
        >>> gpu_table_key("NVIDIA H100 80GB HBM3")
        'H100 SXM'
    """
    for pattern, key in _GPU_NAME_PATTERNS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return key
    return None


def peak_tflops(device: torch.device, precision: str, tf32: bool | None = None) -> PeakFlops:
    """The dense datasheet peak for ``precision`` ('fp32', 'fp16', 'bf16') on ``device``.

    Args:
        device: the training device; CPUs have no entry.
        precision: the precision that really runs (a ``PrecisionPlan.name``).
        tf32: for 'fp32', whether TF32 matmuls were allowed (None: read the
            current setting).
    """
    if device.type != "cuda":
        return PeakFlops(None, None, None, f"no datasheet peak for {device.type}: MFU is left empty")
    name = device_name(device)
    key = gpu_table_key(name)
    if key is None:
        return PeakFlops(None, None, None, f"{name} is not in GPU_PEAK_TFLOPS: add its dense peaks to get MFU")
    column = precision
    if precision == "fp32" and (tf32 if tf32 is not None else tf32_enabled()):
        column = "tf32"
    value = GPU_PEAK_TFLOPS[key].get(column)
    if value is None:
        return PeakFlops(None, key, column, f"the {key} has no {column} tensor-core peak: MFU is left empty")
    return PeakFlops(value, key, column, f"{key} dense {column} peak, {value:g} TFLOP/s (datasheet)")


def matmul_parameter_count(model: nn.Module) -> int:
    """Parameters that take part in matrix multiplies.

    Embedding tables are lookups, not matmuls, so they are left out, except
    when the same weight is also an output projection (a tied LM head).
    """
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    lookups_only = embedding_weights - linear_weights
    return sum(p.numel() for p in model.parameters() if id(p) not in lookups_only)


def model_flops_per_token(model: nn.Module, config: object, seq_len: int) -> FlopsPerToken:
    """Training FLOPs per token: ``6 N + 12 L T d`` (forward and backward).

    ``L`` and ``d`` come from the config (``n_layers``/``num_hidden_layers``,
    ``d_model``/``hidden_size`` and friends). Without them the attention
    term is left out and the note says so.
    """
    n = matmul_parameter_count(model)
    n_layers, d_model = get_config_value(config, "n_layers"), get_config_value(config, "d_model")
    if n_layers is None or d_model is None:
        note = "6N only: the config has no n_layers/d_model, so attention FLOPs are left out (MFU reads low)"
        return FlopsPerToken(6.0 * n, n, 0.0, note)
    attention = 12.0 * n_layers * seq_len * d_model
    return FlopsPerToken(
        6.0 * n + attention, n, attention, f"6N + 12*L*T*d with N={n:,}, L={n_layers}, T={seq_len}, d={d_model}"
    )


def compute_mfu(
    tokens_per_second: float | None, flops_per_token: float, peak_tflops: float | None, world_size: int = 1
) -> float | None:
    """Achieved FLOP/s over the summed peak of ``world_size`` devices, as a fraction (0.4 = 40%).

    ``tokens_per_second`` is the global rate, over all devices. None when
    there is no peak (CPU, unknown GPU) or no throughput.
    """
    if peak_tflops is None or not tokens_per_second:
        return None
    return tokens_per_second * flops_per_token / (peak_tflops * 1e12 * world_size)
