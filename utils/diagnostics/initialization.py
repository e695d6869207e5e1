"""Tier 1: do the parameters' starting values look like a working initialization?"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from utils.checks import check_positive_number
from utils.model_helpers import result_status, validate_model


def test_parameter_initialization(
    model: nn.Module,
    config: Any = None,
    *,
    huge_threshold: float = 100.0,
    std_factor: float = 10.0,
) -> dict[str, Any]:
    """Per-parameter statistics, flagging only what is really suspicious.

    Rules, by parameter role:

    * every parameter: NaN/Inf, or any |value| above ``huge_threshold`` (fail);
    * weight matrices and embeddings: all zero or constant, so symmetry is never
      broken (warn);
    * weight matrices (not embeddings): std above ``std_factor * sqrt(2 / fan)``
      or below ``1e-3 * sqrt(1 / fan)`` (warn), where ``fan`` is the smaller
      of the two matrix dimensions (this also fits HF's transposed Conv1D);
    * norm weights and biases: ones and zeros are what they should be, so
      only the first rule applies (an all-zero norm weight is warned about).

    Args:
        model: the model to inspect.
        config: unused; accepted so every Tier 1 check has the same signature.
        huge_threshold: values above this in absolute value are flagged.
        std_factor: how far above the usual init scale a weight std may be.

    Returns:
        dict with ``table`` (name, module, role, shape, numel, mean, std,
        abs_max, frac_zero, flag, severity), ``flagged`` (the rows with a flag),
        ``status``, ``summary`` and ``figure``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a threshold is not a positive number.
    """
    validate_model(model)
    check_positive_number(huge_threshold, "huge_threshold")
    check_positive_number(std_factor, "std_factor")
    owners = _parameter_owners(model)
    rows = []
    for name, param in model.named_parameters():
        stats = _parameter_stats(name, param, owners[name])
        flag, severity = _initialization_flag(stats, param, huge_threshold, std_factor)
        rows.append({**stats, "flag": flag, "severity": severity})
    import pandas as pd

    table = pd.DataFrame(rows)
    flagged = table[table["flag"] != ""]
    return {
        "table": table,
        "flagged": flagged,
        "status": result_status((flagged["severity"] == "fail").any(), not flagged.empty),
        "summary": f"{len(flagged)}/{len(table)} parameters flagged",
        "figure": _plot_initialization(table),
    }


def _parameter_owners(model: nn.Module) -> dict[str, nn.Module]:
    """Parameter name (as ``named_parameters`` gives it) -> the module that holds it."""
    return {
        f"{module_name}.{name}" if module_name else name: module
        for module_name, module in model.named_modules()
        for name, _ in module.named_parameters(recurse=False)
    }


def _parameter_role(name: str, param: nn.Parameter, owner: nn.Module) -> str:
    if isinstance(owner, nn.Embedding):
        return "embedding"
    if "norm" in type(owner).__name__.lower() and param.ndim == 1:
        return "norm_weight" if name.endswith("weight") else "bias"
    if param.ndim == 1:
        return "bias" if name.endswith("bias") else "vector"
    return "weight"


def _parameter_stats(name: str, param: nn.Parameter, owner: nn.Module) -> dict[str, Any]:
    values = param.detach().float()
    finite = values[torch.isfinite(values)]
    return {
        "name": name,
        "module": type(owner).__name__,
        "role": _parameter_role(name, param, owner),
        "shape": tuple(param.shape),
        "numel": param.numel(),
        "non_finite": int(values.numel() - finite.numel()),
        "mean": float(finite.mean()) if finite.numel() else math.nan,
        "std": float(finite.std(correction=0)) if finite.numel() else math.nan,
        "abs_max": float(finite.abs().max()) if finite.numel() else math.nan,
        "frac_zero": float((values == 0).float().mean()),
    }


def _initialization_flag(stats: dict, param: nn.Parameter, huge: float, std_factor: float) -> tuple[str, str]:
    """(reason, severity) for a suspicious parameter, ('', '') otherwise."""
    if stats["non_finite"]:
        return f"{stats['non_finite']} NaN/Inf values", "fail"
    if stats["abs_max"] > huge:
        return f"huge values (|x| up to {stats['abs_max']:.3g} > {huge:g})", "fail"
    role, std = stats["role"], stats["std"]
    if role == "norm_weight" and stats["frac_zero"] == 1.0:
        return "norm weight all zero: it blocks the signal", "warn"
    if role not in ("weight", "embedding") or param.numel() < 2:
        return "", ""
    if stats["frac_zero"] == 1.0:
        return "all zero: symmetry is never broken (fine only if deliberate)", "warn"
    if std == 0:
        return "constant: symmetry is never broken", "warn"
    if role == "embedding":
        return "", ""
    fan = min(param.shape[0], param[0].numel())
    if std > std_factor * math.sqrt(2.0 / fan):
        return f"std {std:.3g} is large for fan {fan} (usual scale ~{math.sqrt(1.0 / fan):.3g})", "warn"
    if std < 1e-3 * math.sqrt(1.0 / fan):
        return f"std {std:.3g} is tiny for fan {fan} (usual scale ~{math.sqrt(1.0 / fan):.3g})", "warn"
    return "", ""


def _plot_initialization(table: Any) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.5), layout="constrained")
    ax = fig.subplots()
    flagged = table["flag"] != ""
    colors = ["tab:red" if f else "tab:blue" for f in flagged]
    ax.bar(range(len(table)), table["std"].where(table["std"] > 0).fillna(0), color=colors)
    ax.set_yscale("log")
    ax.set_ylabel("std")
    ax.set_xticks([])
    ax.set_title(f"Parameter std ({int(flagged.sum())} flagged in red)")
    return fig


test_parameter_initialization.__test__ = False
