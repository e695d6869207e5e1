"""Tests for utils.compare.verdict: the summary table and the judgement, on hand-made results."""

from __future__ import annotations

import pytest

from utils.compare import verdict


def _summary(yours_loss, base_loss, yours_acc=0.4, base_acc=0.4):
    def results(loss, acc):
        return {
            "parameters": 1000,
            "val_loss": loss,
            "val_accuracy": acc,
            "throughput": {"tokens_per_second": 100.0},
            "step_time_ms": 10.0,
            "latency_median_ms": 1.0,
            "latency_p95_ms": 1.2,
            "peak_memory_mb": 5.0,
            "memory_method": "estimate",
        }

    return verdict.summary_table(results(yours_loss, yours_acc), results(base_loss, base_acc), "")


@pytest.mark.parametrize(
    "yours_loss, judgement", [(1.90, "better"), (2.00, "about equal"), (2.03, "about equal"), (2.10, "worse")]
)
def test_verdict_judges_by_val_loss_with_a_margin(yours_loss, judgement):
    got, line = verdict.judge(_summary(yours_loss, 2.00), comparable=True)
    assert got == judgement
    assert line.startswith(f"your model reaches val loss {yours_loss:.2f} vs the baseline's 2.00 at 1.00x")


def test_verdict_judges_by_accuracy_across_vocabularies():
    got, line = verdict.judge(_summary(2.0, 2.0, yours_acc=0.30, base_acc=0.40), comparable=False)
    assert got == "worse" and "next-token accuracy 30.0% vs the baseline's 40.0%" in line
