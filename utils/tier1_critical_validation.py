"""Tier 1: the checks every model should pass before anyone trains it.

Each ``test_*`` function takes ``(model, config, ...)``, checks its
arguments before any work starts, and returns a dict with at least:

* ``table``: a pandas DataFrame with the detailed results;
* ``status``: ``'pass'``, ``'warn'`` or ``'fail'``;
* ``summary``: one line with the key figure;
* ``figure``: a matplotlib Figure, where a picture helps.

Nothing here calls ``plt.show()``; figures are built with
``matplotlib.figure.Figure`` so they never pile up in pyplot.

The functions are named ``test_*`` for notebook users, so each one sets
``__test__ = False`` to keep pytest from collecting it.

Example:
    >>> from utils.models import tiny_gpt
    >>> model, config = tiny_gpt(n_layers=2, d_model=32)
    >>> result = test_gradient_flow(model, config)
    >>> result["status"], result["summary"]
    ('pass', '...')
    >>> result["table"].query("status != 'ok'")
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.checks import (
    check_bool,
    check_choice,
    check_non_negative_int,
    check_positive_int,
    check_positive_number,
    is_collection,
    is_int,
)
from utils.device import cuda_supports_bf16, synchronize
from utils.model_helpers import (
    ModelProbe,
    count_parameters,
    get_config_value,
    model_mode,
    model_output_tensor,
    output_tensors,
    preserved_grads,
    probe_model,
    random_input_ids,
    result_status,
    validate_model,
)
from utils.progress import progress_bar
from utils.records import environment_record
from utils.training.precision import PRECISION_TABLE, resolve_precision

MB = 2**20

# Precision names come from the one precision table: fp32 runs with autocast off, the rest under autocast.
_TIMED_PRECISIONS = tuple(PRECISION_TABLE)
_AUTOCAST_PRECISIONS = tuple(name for name in PRECISION_TABLE if name != "fp32")

# ---------------------------------------------------------------------------
# Tier 1 helpers (the ones every tier shares live in model_helpers.py)
# ---------------------------------------------------------------------------


def default_amp_precisions(device: torch.device) -> tuple[str, ...]:
    """The autocast precisions worth comparing with FP32 on ``device``."""
    if device.type == "cuda":
        # A GPU without native bf16 only emulates it, so comparing it tells nothing about real runs.
        return tuple(name for name in _AUTOCAST_PRECISIONS if name != "bf16" or cuda_supports_bf16(device))
    if device.type == "cpu":
        return ("bf16",)  # fp16 autocast on CPU is slow and rarely what a CPU user would run
    return ()


def layer_label(name: str) -> str:
    """'L3' for a parameter inside the fourth numbered block, else the name's first part."""
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return f"L{match.group(1)}" if match else name.split(".")[0]


def check_positive_ints(values: Iterable[int], name: str) -> tuple[int, ...]:
    """The sorted distinct values, or a ValueError naming ``name``.

    Example:
        >>> check_positive_ints([4, 1, 4], "batch_sizes")
        (1, 4)
    """
    items = tuple(values) if is_collection(values) else ()
    if not items or not all(is_int(v) and v > 0 for v in items):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints such as (1, 4), got {values!r}")
    return tuple(sorted({int(v) for v in items}))


def _check_precision_names(
    values: Any, name: str, allowed: tuple[str, ...], *, allow_empty: bool = True
) -> tuple[str, ...]:
    """The distinct names in ``values``, in their order, each one of ``allowed``; else a ValueError naming ``name``."""
    if not is_collection(values):
        raise ValueError(f"{name} must be a sequence such as {allowed[-1:]!r}, got {values!r}")
    for index, value in enumerate(values):
        check_choice(value, f"{name}[{index}]", allowed)
    names = tuple(dict.fromkeys(values))
    if not names and not allow_empty:
        raise ValueError(f"{name} must name at least one of {allowed}, got {values!r}")
    return names


# ---------------------------------------------------------------------------
# test_shape_robustness
# ---------------------------------------------------------------------------


def test_shape_robustness(
    model: nn.Module,
    config: Any,
    batch_sizes: Sequence[int] | None = None,
    seq_lengths: Sequence[int] | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the model on edge-case batch sizes and sequence lengths and check the output shape.

    The default sweep is batch sizes ``(1, 4, config.batch_size or 8)`` and
    sequence lengths ``(1, max_seq_len // 2, max_seq_len)``. The expected shape
    is ``(B, T, V)`` for language models and ``(B, T, H)`` for encoders, as
    found by a probe pass. A failing case keeps the model's real error.

    Args:
        model: the model to check.
        config: its config; needs ``vocab_size``, and ``max_seq_len`` unless
            ``seq_lengths`` is given.
        batch_sizes: batch sizes to try.
        seq_lengths: sequence lengths to try.
        progress: show a progress bar.

    Returns:
        dict with ``table`` (one row per case: batch_size, seq_len,
        expected_shape, output_shape, status 'pass'/'fail', error), ``status``,
        ``summary`` and ``output_kind``.

    Raises:
        TypeError, ValueError, RuntimeError: bad model or config (see ``probe_model``).
        ValueError: a sweep is not a non-empty sequence of positive ints, or ``progress`` is not a bool.
    """
    check_bool(progress, "progress")
    batch_sizes = None if batch_sizes is None else check_positive_ints(batch_sizes, "batch_sizes")
    seq_lengths = None if seq_lengths is None else check_positive_ints(seq_lengths, "seq_lengths")
    required = ("vocab_size",) if seq_lengths is not None else ("vocab_size", "max_seq_len")
    probe = probe_model(model, config, "test_shape_robustness", required)
    if batch_sizes is None:
        config_batch_size = get_config_value(config, "batch_size", 8)
        check_positive_int(config_batch_size, "config.batch_size (or pass batch_sizes=...)")
        batch_sizes = check_positive_ints((1, 4, config_batch_size), "batch_sizes")
    if seq_lengths is None:
        seq_lengths = check_positive_ints((1, max(1, probe.max_seq_len // 2), probe.max_seq_len), "seq_lengths")

    cases = [(b, t) for b in batch_sizes for t in seq_lengths]
    with model_mode(model, False), torch.no_grad():
        bar = progress_bar(cases, desc="shapes", unit="case", enabled=progress)
        rows = [_check_one_shape(probe, b, t) for b, t in bar]
    import pandas as pd

    table = pd.DataFrame(rows)
    n_ok = int((table["status"] == "pass").sum())
    return {
        "table": table,
        "status": result_status(n_ok < len(table)),
        "summary": f"{n_ok}/{len(table)} shapes ok ({probe.output_kind})",
        "output_kind": probe.output_kind,
    }


def _check_one_shape(probe: ModelProbe, batch_size: int, seq_len: int) -> dict[str, Any]:
    expected = (batch_size, seq_len, probe.output_dim)
    row = {"batch_size": batch_size, "seq_len": seq_len, "expected_shape": expected, "output_shape": None}
    try:
        input_ids = random_input_ids(batch_size, seq_len, probe.vocab_size, probe.device, seed=batch_size + seq_len)
        output, _ = model_output_tensor(probe.forward(input_ids))
        row["output_shape"] = tuple(output.shape)
        ok = row["output_shape"] == expected
        error = "" if ok else f"expected shape {expected}, got {row['output_shape']}"
    except Exception as err:  # the report keeps the model's real error
        ok, error = False, f"{type(err).__name__}: {err}"
    return {**row, "status": "pass" if ok else "fail", "error": error}


test_shape_robustness.__test__ = False


# ---------------------------------------------------------------------------
# test_gradient_flow
# ---------------------------------------------------------------------------

# A softmax ignores a bias added to every key, so its gradient is zero by design.
_EXPECTED_ZERO_GRAD = re.compile(r"(?:^|\.)(?:k|key|k_proj|to_k)\.bias$")

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


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


# ---------------------------------------------------------------------------
# test_output_stability
# ---------------------------------------------------------------------------


def test_output_stability(
    model: nn.Module,
    config: Any,
    *,
    n_batches: int = 6,
    batch_size: int = 4,
    seq_len: int | None = None,
    amp_precisions: Sequence[str] | None = None,
    amp_rel_tolerance: float = 0.05,
    progress: bool = True,
) -> dict[str, Any]:
    """NaN/Inf checks and output statistics over many inputs, and autocast against FP32.

    The inputs are random token ids plus two extreme cases (one token
    repeated, and only the first and last token ids). Each batch also runs
    under autocast in each of ``amp_precisions`` (default: fp16 and bf16 on
    GPUs with native bf16, fp16 on older ones, bf16 on CPU), and the output is
    compared with FP32.

    Args:
        model: the model to check (run in eval mode, without gradients).
        config: its config; needs ``vocab_size``.
        n_batches: how many input batches.
        batch_size: sequences per batch.
        seq_len: tokens per sequence; default ``min(64, max_seq_len)``.
        amp_precisions: autocast precisions to compare, e.g. ``('bf16',)``; ``()`` skips.
        amp_rel_tolerance: warn when max |AMP - FP32| exceeds this fraction of max |FP32|.
        progress: show a progress bar.

    Returns:
        dict with ``table`` (per batch: input, nan_count, inf_count, mean, std,
        min, max, and for logits the mean softmax entropy), ``amp`` (per
        precision: max_abs_diff, mean_abs_diff, rel_max_diff, top1_agreement,
        non_finite, error), ``status``, ``summary`` and ``figure``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or its output holds no logits or hidden states.
        ValueError: ``config`` lacks ``vocab_size``, or an argument is out of range.
        RuntimeError: the model fails on a probe batch.
    """
    for value, name in ((n_batches, "n_batches"), (batch_size, "batch_size")):
        check_positive_int(value, name)
    check_positive_int(seq_len, "seq_len", allow_none=True)
    check_positive_number(amp_rel_tolerance, "amp_rel_tolerance")
    check_bool(progress, "progress")
    if amp_precisions is not None:
        amp_precisions = _check_precision_names(amp_precisions, "amp_precisions", _AUTOCAST_PRECISIONS)
    probe = probe_model(model, config, "test_output_stability")
    plans = _amp_plans(probe.device, default_amp_precisions(probe.device) if amp_precisions is None else amp_precisions)
    batches = _stability_inputs(probe, n_batches, batch_size, probe.seq_len(seq_len, 64))

    rows, amp_rows, sample = [], [], None
    with model_mode(model, False), torch.no_grad():
        for kind, input_ids in progress_bar(batches, desc="output stability", unit="batch", enabled=progress):
            reference, _ = model_output_tensor(probe.forward(input_ids))
            reference = reference.float()
            sample = reference if sample is None else sample
            rows.append({"input": kind, **_output_stats(reference, probe.output_kind)})
            amp_rows += [_compare_with_amp(probe, input_ids, reference, name, plan) for name, plan in plans]
    return _stability_result(rows, amp_rows, sample, amp_rel_tolerance)


def _amp_plans(device: torch.device, precisions: Sequence[str]) -> list[tuple[str, Any]]:
    """(name, PrecisionPlan) per checked autocast precision, or (name, error) where this device cannot run it."""
    plans = []
    for name in precisions:
        try:
            plans.append((name, resolve_precision(name, device=device)))
        except ValueError as err:  # e.g. bf16 on a GPU that only emulates it
            plans.append((name, err))
    return plans


def _stability_inputs(
    probe: ModelProbe, n_batches: int, batch_size: int, seq_len: int
) -> list[tuple[str, torch.Tensor]]:
    batches = [
        ("random", random_input_ids(batch_size, seq_len, probe.vocab_size, probe.device, seed=i))
        for i in range(max(1, n_batches - 2))
    ]
    if n_batches >= 2:
        batches.append(("repeated_token", torch.full((batch_size, seq_len), 1 % probe.vocab_size, device=probe.device)))
    if n_batches >= 3:
        extremes = torch.tensor([0, probe.vocab_size - 1], device=probe.device).repeat(seq_len)[:seq_len]
        batches.append(("extreme_ids", extremes.expand(batch_size, seq_len).contiguous()))
    return batches


def _output_stats(output: torch.Tensor, kind: str) -> dict[str, float]:
    finite = output[torch.isfinite(output)]
    stats = {
        "nan_count": int(torch.isnan(output).sum()),
        "inf_count": int(torch.isinf(output).sum()),
        "mean": float(finite.mean()) if finite.numel() else math.nan,
        "std": float(finite.std()) if finite.numel() > 1 else math.nan,
        "min": float(finite.min()) if finite.numel() else math.nan,
        "max": float(finite.max()) if finite.numel() else math.nan,
    }
    if kind == "logits":
        stats["mean_entropy"] = float(torch.special.entr(output.softmax(-1)).sum(-1).mean())
    return stats


def _compare_with_amp(
    probe: ModelProbe, input_ids: torch.Tensor, reference: torch.Tensor, name: str, plan: Any
) -> dict[str, Any]:
    row = {
        "precision": name,
        "max_abs_diff": math.nan,
        "mean_abs_diff": math.nan,
        "rel_max_diff": math.nan,
        "top1_agreement": math.nan,
        "non_finite": 0,
        "error": "",
    }
    if isinstance(plan, Exception):
        return {**row, "error": str(plan)}
    try:
        with plan.autocast():
            output, _ = model_output_tensor(probe.forward(input_ids))
    except Exception as err:  # an op without autocast support is a finding, not a crash
        return {**row, "error": f"{type(err).__name__}: {err}"}
    output = output.float()
    diff = (output - reference).abs()
    row.update(
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        rel_max_diff=float(diff.max() / reference.abs().max().clamp_min(1e-12)),
        non_finite=int((~torch.isfinite(output)).sum()),
    )
    if probe.output_kind == "logits":
        row["top1_agreement"] = float((output.argmax(-1) == reference.argmax(-1)).float().mean())
    return row


def _stability_result(rows: list[dict], amp_rows: list[dict], sample: torch.Tensor, tolerance: float) -> dict[str, Any]:
    import pandas as pd

    table = pd.DataFrame(rows)
    amp = pd.DataFrame(amp_rows)
    if not amp.empty:
        amp = (
            amp.groupby("precision", sort=False)
            .agg(
                max_abs_diff=("max_abs_diff", "max"),
                mean_abs_diff=("mean_abs_diff", "mean"),
                rel_max_diff=("rel_max_diff", "max"),
                top1_agreement=("top1_agreement", "mean"),
                non_finite=("non_finite", "sum"),
                error=("error", "first"),
            )
            .reset_index()
        )
    n_bad = int(table["nan_count"].sum() + table["inf_count"].sum())
    amp_bad = not amp.empty and bool(
        (amp["non_finite"] > 0).any() or (amp["rel_max_diff"] > tolerance).any() or (amp["error"] != "").any()
    )
    amp_text = (
        "; ".join(f"{r.precision} max|Δ|={r.max_abs_diff:.3g}" for r in amp.itertuples()) if not amp.empty else ""
    )
    return {
        "table": table,
        "amp": amp,
        "status": result_status(n_bad > 0, amp_bad),
        "summary": f"{n_bad} NaN/Inf values" + (f"; {amp_text}" if amp_text else ""),
        "figure": _plot_output_stability(sample, amp),
    }


def _plot_output_stability(sample: torch.Tensor, amp: Any) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.5), layout="constrained")
    ax_hist, ax_amp = fig.subplots(1, 2)
    values = sample[torch.isfinite(sample)].flatten().cpu()
    values = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:100_000]]
    ax_hist.hist(values.numpy(), bins=80, color="tab:blue")
    ax_hist.set_title("FP32 output values (first batch)")
    ax_hist.set_xlabel("value")
    if amp.empty:
        ax_amp.text(0.5, 0.5, "no autocast comparison", ha="center", va="center")
    else:
        ax_amp.bar(amp["precision"], amp["max_abs_diff"].fillna(0), color="tab:orange")
        ax_amp.set_ylabel("max |AMP - FP32|")
    ax_amp.set_title("Autocast against FP32")
    return fig


test_output_stability.__test__ = False


# ---------------------------------------------------------------------------
# test_parameter_initialization
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# test_memory_footprint
# ---------------------------------------------------------------------------

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
        for mode in ("forward", "forward_backward"):
            activation_mb, method = _activation_mb(model, probe, input_ids, mode)
            extra = static["grads_mb"] + static["optimizer_mb"] if mode == "forward_backward" else 0.0
            total = static["params_mb"] + extra + activation_mb
            rows.append(
                {
                    "batch_size": batch_size,
                    "seq_len": seq_len,
                    "mode": mode,
                    "activation_mb": activation_mb,
                    "total_mb": total,
                    "method": method,
                }
            )
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


def _activation_mb(model: nn.Module, probe: ModelProbe, input_ids: torch.Tensor, mode: str) -> tuple[float, str]:
    backward = mode == "forward_backward"

    def run() -> None:
        output = probe.forward(input_ids)
        if backward:
            sum(t.float().mean() for t in output_tensors(output)).backward()

    with preserved_grads(model), model_mode(model, backward), torch.set_grad_enabled(backward):
        if probe.device.type == "cuda":
            peak = _cuda_peak_bytes(run, probe.device)
            grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.grad is not None)
            return max(peak - grads, 0) / MB, "cuda_allocator"
        estimate = _saved_tensor_bytes(model, run) if backward else _forward_peak_bytes(model, run)
        return estimate / MB, "estimate"


def _cuda_peak_bytes(run: Callable[[], None], device: torch.device) -> int:
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


# ---------------------------------------------------------------------------
# test_inference_speed
# ---------------------------------------------------------------------------


def test_inference_speed(
    model: nn.Module,
    config: Any,
    *,
    batch_size: int = 4,
    seq_len: int | None = None,
    n_warmup: int = 3,
    n_iters: int = 20,
    precisions: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Forward latency (median, p95, p99) and tokens/s in FP32 and under autocast.

    Each precision gets ``n_warmup`` untimed passes, then ``n_iters`` timed
    ones, with a device synchronization at both edges of every timed pass
    (so the percentiles are real). Quote the median.

    Args:
        model: the model to time (eval mode, no gradients).
        config: its config; needs ``vocab_size``.
        batch_size: sequences per pass.
        seq_len: tokens per sequence; default ``min(128, max_seq_len)``.
        n_warmup: untimed passes first.
        n_iters: timed passes.
        precisions: e.g. ``('fp32', 'bf16')``; default fp32 plus the device's
            autocast precisions.
        progress: show a progress bar.

    Returns:
        dict with ``table`` (precision, batch_size, seq_len, median_ms, p95_ms,
        p99_ms, mean_ms, tokens_per_s, error), ``latencies_ms`` (precision ->
        list), ``settings`` (the environment record from
        ``utils.records.environment_record``: device, versions, threads, TF32),
        ``status``, ``summary`` and ``figure``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or its output holds no logits or hidden states.
        ValueError: ``config`` lacks ``vocab_size``, a precision is unknown, or an argument is out of range.
        RuntimeError: the model fails on a probe batch.
    """
    for value, name in ((batch_size, "batch_size"), (n_iters, "n_iters")):
        check_positive_int(value, name)
    check_positive_int(seq_len, "seq_len", allow_none=True)
    check_non_negative_int(n_warmup, "n_warmup")
    check_bool(progress, "progress")
    if precisions is not None:
        precisions = _check_precision_names(precisions, "precisions", _TIMED_PRECISIONS, allow_empty=False)
    probe = probe_model(model, config, "test_inference_speed")
    if precisions is None:
        precisions = ("fp32", *default_amp_precisions(probe.device))
    amp = _amp_plans(probe.device, [p for p in precisions if p != "fp32"])
    plans = ([("fp32", resolve_precision("fp32", device=probe.device))] if "fp32" in precisions else []) + amp
    seq_len = probe.seq_len(seq_len, 128)
    input_ids = random_input_ids(batch_size, seq_len, probe.vocab_size, probe.device)

    rows, latencies = [], {}
    with model_mode(model, False), torch.no_grad():
        for name, plan in progress_bar(plans, desc="inference speed", unit="precision", enabled=progress):
            row = {"precision": name, "batch_size": batch_size, "seq_len": seq_len}
            try:
                latencies[name] = _time_forward(probe, input_ids, plan, n_warmup, n_iters)
                rows.append({**row, **_latency_stats(latencies[name], batch_size * seq_len), "error": ""})
            except Exception as err:  # a precision this device cannot run is a finding
                rows.append({**row, "error": f"{type(err).__name__}: {err}"})
    return _speed_result(rows, latencies, probe.device)


def _time_forward(probe: ModelProbe, input_ids: torch.Tensor, plan: Any, n_warmup: int, n_iters: int) -> list[float]:
    if isinstance(plan, Exception):
        raise plan
    with plan.autocast():
        for _ in range(n_warmup):
            probe.forward(input_ids)
        times_ms = []
        for _ in range(n_iters):
            synchronize(probe.device)  # deliberate: time only this pass
            start = time.perf_counter()
            probe.forward(input_ids)
            synchronize(probe.device)
            times_ms.append((time.perf_counter() - start) * 1e3)
    return times_ms


def _latency_stats(times_ms: list[float], tokens: int) -> dict[str, float]:
    t = torch.tensor(times_ms, dtype=torch.float64)
    median = float(t.median())
    return {
        "median_ms": median,
        "p95_ms": float(t.quantile(0.95)),
        "p99_ms": float(t.quantile(0.99)),
        "mean_ms": float(t.mean()),
        "tokens_per_s": tokens / (median / 1e3),
    }


def _speed_result(rows: list[dict], latencies: dict[str, list[float]], device: torch.device) -> dict[str, Any]:
    import pandas as pd

    table = pd.DataFrame(rows)
    settings = environment_record(device)  # several precisions ran, so the record names none
    timed = table[table["error"] == ""] if "error" in table else table
    summary = ", ".join(f"{r.precision} {r.median_ms:.2f} ms ({r.tokens_per_s:,.0f} tok/s)" for r in timed.itertuples())
    return {
        "table": table,
        "latencies_ms": latencies,
        "settings": settings,
        "status": result_status(timed.empty, len(timed) < len(table)),
        "summary": summary or "no precision could be timed",
        "figure": _plot_latencies(latencies, settings["device_name"]),
    }


def _plot_latencies(latencies: dict[str, list[float]], device: str) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    if latencies:
        ax.boxplot(list(latencies.values()))
        ax.set_xticks(range(1, len(latencies) + 1), list(latencies))  # works on matplotlib 3.8 and later
    ax.set_ylabel("latency per forward (ms)")
    ax.set_title(f"Inference latency on {device}")
    return fig


test_inference_speed.__test__ = False

__all__ = [
    "OPTIMIZER_STATE_SLOTS",
    "check_positive_ints",
    "default_amp_precisions",
    "layer_label",
    "test_gradient_flow",
    "test_inference_speed",
    "test_memory_footprint",
    "test_output_stability",
    "test_parameter_initialization",
    "test_shape_robustness",
]
