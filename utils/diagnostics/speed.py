"""Tier 1: forward latency percentiles and tokens per second, in FP32 and under autocast."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from utils.checks import check_bool, check_non_negative_int, check_positive_int
from utils.device import synchronize
from utils.diagnostics.common import amp_plans, check_precision_names, default_amp_precisions
from utils.model_helpers import ModelProbe, model_mode, probe_model, random_input_ids, result_status
from utils.progress import progress_bar
from utils.records import environment_record
from utils.training.precision import PRECISION_TABLE, resolve_precision

# fp32 runs with autocast off, the rest under autocast; all come from the one precision table.
_TIMED_PRECISIONS = tuple(PRECISION_TABLE)


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
        precisions = check_precision_names(precisions, "precisions", _TIMED_PRECISIONS, allow_empty=False)
    probe = probe_model(model, config, "test_inference_speed")
    if precisions is None:
        precisions = ("fp32", *default_amp_precisions(probe.device))
    amp = amp_plans(probe.device, [p for p in precisions if p != "fp32"])
    plans = ([("fp32", resolve_precision("fp32", device=probe.device))] if "fp32" in precisions else []) + amp
    seq_len = probe.seq_len(seq_len, 128)
    input_ids = random_input_ids(batch_size, seq_len, probe.vocab_size, probe.device)

    rows, latencies = [], {}
    with model_mode(model, False), torch.no_grad():
        for name, plan in progress_bar(plans, desc="inference speed", unit="precision", enabled=progress):
            row = {"precision": name, "batch_size": batch_size, "seq_len": seq_len}
            try:
                latencies[name] = _time_forward(probe, input_ids, plan, n_warmup, n_iters)
                rows.append({**row, **latency_stats(latencies[name], batch_size * seq_len), "error": ""})
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


def latency_stats(times_ms: list[float], tokens: int) -> dict[str, float]:
    """Median, p95, p99 and mean of per-pass latencies, and tokens per second at the median.

    The median is torch's: for an even count, the lower of the two middle values.

    Args:
        times_ms: one latency per timed pass, in milliseconds (at least one).
        tokens: tokens in one pass (batch size x sequence length).

    Returns:
        dict with median_ms, p95_ms, p99_ms, mean_ms and tokens_per_s.

    Example:
        >>> latency_stats([2.0, 3.0, 4.0], tokens=512)["median_ms"]
        3.0
    """
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
