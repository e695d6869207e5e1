"""Tier 1: memory for parameters, gradients, optimizer state and activations, per batch size.

``test_memory_footprint`` sweeps batch sizes and draws the stack;
``measure_training_memory`` gives the same figures for one training step at
one batch shape (what the setup wizard's estimate and the benchmark
comparison read), and ``cuda_peak_bytes`` the CUDA allocator's peak for any
piece of work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from utils.checks import check_bool, check_choice, check_positive_int
from utils.device import MB, synchronize
from utils.diagnostics.common import check_positive_ints
from utils.model_helpers import (
    ModelProbe,
    count_parameters,
    model_mode,
    output_tensors,
    preserved_grads,
    probe_model,
    random_input_ids,
)
from utils.progress import progress_bar

# Optimizer name -> state tensors kept per parameter (Adam: exp_avg, exp_avg_sq).
OPTIMIZER_STATE_SLOTS = {"adamw": 2, "adam": 2, "sgd": 1, "sgd_no_momentum": 0, "none": 0}


def test_memory_footprint(
    model: nn.Module,
    config: Any,
    *,
    batch_sizes: Sequence[int] = (1, 4, 16),
    seq_len: int | None = None,
    optimizer: str = "adamw",
    progress: bool = True,
) -> dict[str, Any]:
    """Memory for parameters, gradients, optimizer state and activations, per batch size.

    On CUDA the activation memory is the allocator's real peak above the
    resident model (``method='cuda_allocator'``). Elsewhere it is an estimate
    (``method='estimate'``): for forward, the largest single layer's inputs
    plus outputs plus the model output; for forward+backward, the bytes of
    every tensor autograd saves for backward (parameters excluded).

    Args:
        model: the model to measure (its ``.grad`` values are restored).
        config: its config; needs ``vocab_size``.
        batch_sizes: the batch sizes to sweep.
        seq_len: tokens per sequence; default ``max_seq_len``, or 128.
        optimizer: one of ``OPTIMIZER_STATE_SLOTS`` ('adamw', 'adam', 'sgd', ...).
        progress: show a progress bar.

    Returns:
        dict with ``table`` (batch_size, seq_len, mode 'forward' or
        'forward_backward', activation_mb, total_mb, method), ``static``
        (params_mb, grads_mb, optimizer_mb), ``status``, ``summary`` and ``figure``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or its output holds no logits or hidden states.
        ValueError: ``config`` lacks ``vocab_size``, ``optimizer`` is unknown, or an argument is out of range.
        RuntimeError: the model fails on a probe batch.
    """
    batch_sizes = check_positive_ints(batch_sizes, "batch_sizes")
    check_positive_int(seq_len, "seq_len", allow_none=True)
    check_choice(optimizer, "optimizer", OPTIMIZER_STATE_SLOTS)
    check_bool(progress, "progress")
    probe = probe_model(model, config, "test_memory_footprint")
    seq_len = probe.seq_len(seq_len, 128)
    static = _static_memory_mb(model, optimizer)

    rows = []
    for batch_size in progress_bar(batch_sizes, desc="memory", unit="batch size", enabled=progress):
        input_ids = random_input_ids(batch_size, seq_len, probe.vocab_size, probe.device)
        rows += [_memory_row(model, probe, static, input_ids, mode) for mode in ("forward", "forward_backward")]
    import pandas as pd

    table = pd.DataFrame(rows)
    peak = table["total_mb"].max()
    return {
        "table": table,
        "static": static,
        "status": "pass",
        "summary": f"params {static['params_mb']:.1f} MB; up to {peak:.1f} MB ({table['method'].iloc[0]})",
        "figure": _plot_memory(table, static),
    }


def measure_training_memory(
    model: nn.Module, config: Any, *, batch_size: int = 1, seq_len: int | None = None, optimizer: str = "adamw"
) -> dict[str, Any]:
    """Memory of one training step at one batch shape: ``test_memory_footprint``'s 'forward_backward' row.

    The same measurement (the CUDA allocator's peak, or elsewhere the
    saved-tensor estimate), without the sweep, the forward-only pass, the
    table or the figure. FP32 figures: mixed precision needs less.

    Example:
        >>> memory = measure_training_memory(model, config, batch_size=8, seq_len=128)
        >>> memory["total_mb"], memory["method"]

    Args:
        model: the model to measure (its ``.grad`` values are restored).
        config: its config; needs ``vocab_size``.
        batch_size: sequences in the batch.
        seq_len: tokens per sequence; default ``max_seq_len``, or 128.
        optimizer: one of ``OPTIMIZER_STATE_SLOTS`` ('adamw', 'adam', 'sgd', ...).

    Returns:
        dict with batch_size, seq_len, activation_mb, total_mb (parameters, gradients, optimizer
        state and activations), method ('cuda_allocator' or 'estimate'), params_mb, grads_mb,
        optimizer_mb, static_mb (those three together) and n_params.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or its output holds no logits or hidden states.
        ValueError: ``config`` lacks ``vocab_size``, ``optimizer`` is unknown, or an argument is out of range.
        RuntimeError: the model fails on a probe batch.
    """
    check_positive_int(batch_size, "batch_size")
    check_positive_int(seq_len, "seq_len", allow_none=True)
    check_choice(optimizer, "optimizer", OPTIMIZER_STATE_SLOTS)
    probe = probe_model(model, config, "measure_training_memory")
    static = _static_memory_mb(model, optimizer)
    input_ids = random_input_ids(batch_size, probe.seq_len(seq_len, 128), probe.vocab_size, probe.device)
    row = _memory_row(model, probe, static, input_ids, "forward_backward")
    del row["mode"]
    return {**row, **static, "static_mb": static["params_mb"] + static["grads_mb"] + static["optimizer_mb"]}


def _static_memory_mb(model: nn.Module, optimizer: str) -> dict[str, float]:
    params = list(model.parameters())  # shared weights appear once
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    return {
        "params_mb": param_bytes / MB,
        "grads_mb": grad_bytes / MB,
        "optimizer_mb": OPTIMIZER_STATE_SLOTS[optimizer] * grad_bytes / MB,
        "n_params": count_parameters(model)["total"],
    }


def _memory_row(
    model: nn.Module, probe: ModelProbe, static: dict[str, float], input_ids: torch.Tensor, mode: str
) -> dict[str, Any]:
    """One table row: the activations measured for ``mode`` ('forward' or 'forward_backward') and the total."""
    batch_size, seq_len = input_ids.shape
    activation_mb, method = _activation_mb(model, probe, input_ids, mode)
    extra = static["grads_mb"] + static["optimizer_mb"] if mode == "forward_backward" else 0.0
    return {
        "batch_size": batch_size,
        "seq_len": seq_len,
        "mode": mode,
        "activation_mb": activation_mb,
        "total_mb": static["params_mb"] + extra + activation_mb,
        "method": method,
    }


def _activation_mb(model: nn.Module, probe: ModelProbe, input_ids: torch.Tensor, mode: str) -> tuple[float, str]:
    backward = mode == "forward_backward"

    def run() -> None:
        output = probe.forward(input_ids)
        if backward:
            sum(t.float().mean() for t in output_tensors(output)).backward()

    with preserved_grads(model), model_mode(model, backward), torch.set_grad_enabled(backward):
        if probe.device.type == "cuda":
            peak = cuda_peak_bytes(run, probe.device)
            grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.grad is not None)
            return max(peak - grads, 0) / MB, "cuda_allocator"
        estimate = _saved_tensor_bytes(model, run) if backward else _forward_peak_bytes(model, run)
        return estimate / MB, "estimate"


def cuda_peak_bytes(run: Callable[[], None], device: torch.device) -> int:
    """How far the CUDA allocator's peak rose above what was allocated before ``run()``, in bytes.

    The device is synchronized at both edges, so queued work before does not
    count and work ``run`` queued does.

    Example:
        >>> peak_mb = cuda_peak_bytes(lambda: model(batch).sum().backward(), torch.device("cuda")) / MB
    """
    synchronize(device)  # deliberate: start from a quiet allocator
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    run()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - baseline


def _saved_tensor_bytes(model: nn.Module, run: Callable[[], None]) -> int:
    """Bytes autograd keeps for backward, each storage counted once, parameters left out."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in param_storages:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(storages.values())


def _forward_peak_bytes(model: nn.Module, run: Callable[[], None]) -> int:
    """Largest (inputs + outputs) of any leaf module, plus the model's output."""
    largest = [0, 0]  # [largest layer, model output]

    def nbytes(values: Any) -> int:
        values = values if isinstance(values, (tuple, list)) else (values,)
        return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))

    def on_leaf(module: nn.Module, args: Any, output: Any) -> None:
        largest[0] = max(largest[0], nbytes(args) + nbytes(output))

    def on_model(module: nn.Module, args: Any, output: Any) -> None:
        largest[1] = nbytes(output_tensors(output))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(on_leaf) for m in leaves] + [model.register_forward_hook(on_model)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return sum(largest)


def _plot_memory(table: Any, static: dict[str, float]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    train = table[table["mode"] == "forward_backward"]
    labels = train["batch_size"].astype(str).tolist()
    bottom = [0.0] * len(train)
    parts = [("params", static["params_mb"]), ("grads", static["grads_mb"]), ("optimizer", static["optimizer_mb"])]
    for label, value in parts:
        ax.bar(labels, [value] * len(train), bottom=bottom, label=label)
        bottom = [b + value for b in bottom]
    ax.bar(labels, train["activation_mb"], bottom=bottom, label="activations")
    forward = table[table["mode"] == "forward"]
    ax.plot(labels, forward["total_mb"].tolist(), "k--o", label="forward only (total)")
    ax.set_xlabel("batch size")
    ax.set_ylabel("MB")
    ax.set_title(f"Training memory per batch size ({table['method'].iloc[0]})")
    ax.legend()
    return fig


test_memory_footprint.__test__ = False
