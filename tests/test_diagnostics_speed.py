"""diagnostics.speed: the latency statistics every timing in the library quotes."""

from __future__ import annotations

import pytest
import torch

from utils.diagnostics import speed


def test_latency_stats_golden_values():
    stats = speed.latency_stats([4.0, 1.0, 3.0, 2.0], tokens=1000)
    # Worked by hand on the sorted times (1, 2, 3, 4): torch's median of an even count is the lower
    # middle value (2); quantiles interpolate linearly, p95 at 3 x 0.95 = 2.85 -> 3.85, p99 -> 3.97.
    assert stats["median_ms"] == 2.0
    torch.testing.assert_close(stats["p95_ms"], 3.85, rtol=0, atol=1e-12)
    torch.testing.assert_close(stats["p99_ms"], 3.97, rtol=0, atol=1e-12)
    torch.testing.assert_close(stats["mean_ms"], 2.5, rtol=0, atol=1e-12)
    torch.testing.assert_close(stats["tokens_per_s"], 1000 / 0.002, rtol=1e-12, atol=0)  # at the median
    assert set(stats) == {"median_ms", "p95_ms", "p99_ms", "mean_ms", "tokens_per_s"}


def test_a_single_sample_is_its_own_median_and_percentiles():
    stats = speed.latency_stats([5.0], tokens=10)
    assert stats["median_ms"] == stats["p95_ms"] == stats["p99_ms"] == stats["mean_ms"] == 5.0


def test_inference_speed_rows_use_latency_stats(tiny_gpt):
    model, config = tiny_gpt
    result = speed.test_inference_speed(
        model, config, batch_size=1, seq_len=8, n_warmup=0, n_iters=3, precisions=("fp32",), progress=False
    )
    row = result["table"].iloc[0]
    expected = speed.latency_stats(result["latencies_ms"]["fp32"], 8)
    assert {name: row[name] for name in expected} == pytest.approx(expected, rel=0, abs=0)
