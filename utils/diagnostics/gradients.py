"""Tier 1: does every parameter get a finite, reasonably sized gradient from one backward pass?"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.checks import check_positive_int, check_positive_number
from utils.model_helpers import (
    ModelProbe,
    model_mode,
    model_output_tensor,
    output_tensors,
    preserved_grads,
    probe_model,
    random_input_ids,
    result_status,
)

# A softmax ignores a bias added to every key, so its gradient is zero by design.
_EXPECTED_ZERO_GRAD = re.compile(r"(?:^|\.)(?:k|key|k_proj|to_k)\.bias$")

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


def layer_label(name: str) -> str:
    """'L3' for a parameter inside the fourth numbered block, else the name's first part."""
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return f"L{match.group(1)}" if match else name.split(".")[0]


def test_gradient_flow(
    model: nn.Module,
    config: Any,
    *,
    batch_size: int = 2,
    seq_len: int | None = None,
    loss_fn: LossFn | None = None,
    vanishing_threshold: float = 1e-8,
    exploding_threshold: float = 1e3,
) -> dict[str, Any]:
    """One forward/backward pass from zeroed gradients; report and flag per-parameter grad norms.

    The loss is next-token cross-entropy for logits and the mean square of
    every output tensor for encoders (so a pooler counts as used), unless you
    pass ``loss_fn(output, input_ids) -> scalar``. Statuses: 'ok', 'no_gradient'
    (the parameter never got a gradient: detached or unused), 'zero',
    'vanishing' (norm < ``vanishing_threshold``), 'exploding' (norm >
    ``exploding_threshold``), 'nan', 'inf', and 'frozen' (requires_grad=False,
    not a problem). A key bias in attention gets a zero gradient by design and
    is not flagged. The model's own ``.grad`` values are restored afterwards.

    Args:
        model: the model to check; it runs in train mode for this pass.
        config: its config; needs ``vocab_size``.
        batch_size: sequences in the batch.
        seq_len: tokens per sequence; default ``min(32, max_seq_len)``.
        loss_fn: optional custom loss.
        vanishing_threshold: grad norms below this are flagged.
        exploding_threshold: grad norms above this are flagged.

    Returns:
        dict with ``table`` (name, layer, shape, grad_norm, param_norm,
        grad_to_param, status, note), ``flagged`` (the rows not ok or frozen),
        ``no_gradient`` (names), ``loss``, ``status``, ``summary`` and ``figure``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or its output holds no logits or hidden states.
        ValueError: ``config`` lacks ``vocab_size``, every parameter is frozen, or an argument is out of range.
        RuntimeError: the model fails on a probe batch.
    """
    _check_gradient_args(batch_size, seq_len, loss_fn, vanishing_threshold, exploding_threshold)
    probe = probe_model(model, config, "test_gradient_flow")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("test_gradient_flow: every parameter has requires_grad=False; unfreeze some to check them")
    input_ids = random_input_ids(batch_size, probe.seq_len(seq_len, 32), probe.vocab_size, probe.device)
    with preserved_grads(model), model_mode(model, True):
        output = probe.forward(input_ids)
        loss = loss_fn(output, input_ids) if loss_fn else _default_loss(output, input_ids, probe)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            raise ValueError(
                f"test_gradient_flow: the loss must be a scalar tensor attached to the graph, got {loss!r:.80}; "
                "check that the model output is not detached and that loss_fn returns a scalar"
            )
        loss.backward()
        rows = [
            _gradient_row(name, p, vanishing_threshold, exploding_threshold) for name, p in model.named_parameters()
        ]
    import pandas as pd

    table = pd.DataFrame(rows)
    flagged = table[~table["status"].isin(["ok", "frozen"])]
    no_gradient = flagged.loc[flagged["status"] == "no_gradient", "name"].tolist()
    failed = flagged["status"].isin(["no_gradient", "nan", "inf", "exploding"]).any()
    return {
        "table": table,
        "flagged": flagged,
        "no_gradient": no_gradient,
        "loss": float(loss.detach()),
        "status": result_status(bool(failed), not flagged.empty),
        "summary": f"{len(flagged)}/{len(table)} parameters flagged ({len(no_gradient)} without gradient)",
        "figure": _plot_gradient_flow(table),
    }


def _check_gradient_args(
    batch_size: Any, seq_len: Any, loss_fn: Any, vanishing_threshold: Any, exploding_threshold: Any
) -> None:
    """test_gradient_flow's arguments, checked before the model runs."""
    check_positive_int(batch_size, "batch_size")
    check_positive_int(seq_len, "seq_len", allow_none=True)
    check_positive_number(vanishing_threshold, "vanishing_threshold")
    check_positive_number(exploding_threshold, "exploding_threshold")
    if vanishing_threshold >= exploding_threshold:
        raise ValueError(
            f"vanishing_threshold ({vanishing_threshold:g}) must be below exploding_threshold "
            f"({exploding_threshold:g}); the defaults are 1e-8 and 1e3"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(
            f"loss_fn must be a function loss_fn(output, input_ids) -> scalar tensor, or None; got {loss_fn!r}"
        )


def _default_loss(output: Any, input_ids: torch.Tensor, probe: ModelProbe) -> torch.Tensor:
    tensor, _ = model_output_tensor(output)
    if probe.output_kind == "logits":
        targets = input_ids.roll(-1, dims=1)  # next token; the last one wraps, fine for a probe
        return F.cross_entropy(tensor.float().reshape(-1, tensor.shape[-1]), targets.reshape(-1))
    return sum(t.float().pow(2).mean() for t in output_tensors(output))


def _gradient_row(name: str, param: nn.Parameter, vanishing: float, exploding: float) -> dict[str, Any]:
    row = {
        "name": name,
        "layer": layer_label(name),
        "shape": tuple(param.shape),
        "param_norm": float(param.detach().float().norm()),
        "grad_norm": math.nan,
        "note": "",
    }
    if not param.requires_grad:
        return {**row, "grad_to_param": math.nan, "status": "frozen"}
    if param.grad is None:
        status = "no_gradient"
    else:
        grad = param.grad.detach().float()
        row["grad_norm"] = norm = float(grad.norm())
        if torch.isnan(grad).any():
            status = "nan"
        elif torch.isinf(grad).any():
            status = "inf"
        elif norm > exploding:
            status = "exploding"
        elif norm < vanishing and _EXPECTED_ZERO_GRAD.search(name):
            status, row["note"] = "ok", "key bias: softmax ignores it, a zero gradient is expected"
        else:
            status = "zero" if norm == 0 else "vanishing" if norm < vanishing else "ok"
    ratio = row["grad_norm"] / row["param_norm"] if row["param_norm"] > 0 else math.nan
    return {**row, "grad_to_param": ratio, "status": status}


def _plot_gradient_flow(table: Any) -> Any:
    """Grad norm per parameter (log scale, flagged ones in red) and the median per layer."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 6), layout="constrained")
    ax_params, ax_layers = fig.subplots(2, 1)
    norms = table["grad_norm"].where(table["grad_norm"] > 0)  # log axis: zeros and NaN drop out
    flagged = ~table["status"].isin(["ok", "frozen"])
    x = range(len(table))
    ax_params.bar(x, norms.fillna(0), color=["tab:red" if f else "tab:blue" for f in flagged])
    floor = norms.min() if norms.notna().any() else 1e-12
    for i in [i for i, f in enumerate(flagged) if f]:
        ax_params.annotate(table["status"].iloc[i], (i, floor), rotation=90, fontsize=7, color="tab:red")
    if norms.notna().any():  # all-NaN gradients leave nothing to draw on a log axis
        ax_params.set_yscale("log")
        ax_layers.set_yscale("log")
    ax_params.set_ylabel("grad norm")
    ax_params.set_title("Gradient norm per parameter (red: flagged)")
    ax_params.set_xticks([])
    per_layer = norms.groupby(table["layer"], sort=False).median()
    ax_layers.bar(per_layer.index.astype(str), per_layer.fillna(0).values, color="tab:green")
    ax_layers.set_ylabel("median grad norm")
    ax_layers.set_title("By layer")
    ax_layers.tick_params(axis="x", rotation=45)
    return fig


test_gradient_flow.__test__ = False
