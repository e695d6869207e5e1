"""Tier 1: are the outputs finite and sane over many inputs, and close to FP32 under autocast?"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from utils.checks import check_bool, check_positive_int, check_positive_number
from utils.diagnostics.common import AUTOCAST_PRECISIONS, amp_plans, check_precision_names, default_amp_precisions
from utils.model_helpers import (
    ModelProbe,
    model_mode,
    model_output_tensor,
    probe_model,
    random_input_ids,
    result_status,
)
from utils.progress import progress_bar


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
        amp_precisions = check_precision_names(amp_precisions, "amp_precisions", AUTOCAST_PRECISIONS)
    probe = probe_model(model, config, "test_output_stability")
    plans = amp_plans(probe.device, default_amp_precisions(probe.device) if amp_precisions is None else amp_precisions)
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
