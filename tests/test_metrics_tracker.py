"""Tests for utils.training.metrics_tracker: flat rows into a DataFrame, a CSV and W&B."""

from __future__ import annotations

import csv
import math

import pandas as pd
import pytest
import torch

from utils.training.data import IGNORE_INDEX
from utils.training.metrics_tracker import MetricsTracker


@pytest.mark.parametrize("loss", [0.0, 1.0, 2.5])
def test_perplexity_is_exp_of_loss(loss):
    assert math.isclose(MetricsTracker.compute_perplexity(loss), math.exp(loss), rel_tol=1e-12)


def test_perplexity_overflow_is_inf():
    assert MetricsTracker.compute_perplexity(1e6) == math.inf


def test_accuracy_skips_ignore_index():
    logits = torch.tensor([[[0.0, 9.0], [9.0, 0.0], [9.0, 0.0], [0.0, 9.0]]])  # argmax: 1, 0, 0, 1
    labels = torch.tensor([[1, 1, IGNORE_INDEX, 0]])
    # Counted: positions 0 (right), 1 (wrong), 3 (wrong); position 2 is ignored.
    assert MetricsTracker.compute_accuracy(logits, labels) == pytest.approx(1 / 3)
    assert MetricsTracker.compute_accuracy(logits, labels, ignore_index=0) == pytest.approx(1 / 3)  # 1,1,-100


def test_accuracy_with_nothing_to_count_is_nan():
    labels = torch.full((1, 3), IGNORE_INDEX)
    assert math.isnan(MetricsTracker.compute_accuracy(torch.zeros(1, 3, 2), labels))


def _tracker_with_epochs():
    tracker = MetricsTracker()
    tracker.log_epoch(0, {"train/loss": 3.0}, {"val/loss": 2.5, "val/accuracy": 0.2}, learning_rate=1e-3)
    tracker.log_epoch(1, {"train/loss": 2.0}, {"val/loss": 2.0, "val/accuracy": 0.4}, gradient_norm=0.5)
    tracker.log_epoch(2, {"train/loss": 1.5}, {"val/loss": 2.2, "val/accuracy": 0.3}, epoch_duration_s=1.0)
    return tracker


def test_log_epoch_returns_a_flat_row_with_perplexity_and_only_given_options():
    tracker = MetricsTracker()
    row = tracker.log_epoch(0, {"train/loss": 3.0}, {"val/loss": 2.0}, learning_rate=1e-3, note="x")
    assert row == {"epoch": 0, "train/loss": 3.0, "val/loss": 2.0, "lr": 1e-3, "note": "x",
                   "val/perplexity": pytest.approx(math.exp(2.0))}  # fmt: skip
    assert "train/grad_norm" not in row and "epoch_time_s" not in row
    assert tracker.epoch_rows == [row]


def test_summary_is_one_dataframe_row_per_epoch():
    summary = _tracker_with_epochs().get_summary()
    assert isinstance(summary, pd.DataFrame)
    assert summary["epoch"].tolist() == [0, 1, 2]
    assert summary["val/loss"].tolist() == [2.5, 2.0, 2.2]
    assert {"train/loss", "val/perplexity", "lr", "train/grad_norm", "epoch_time_s"} <= set(summary.columns)


def test_best_epoch_min_max_and_missing():
    tracker = _tracker_with_epochs()
    assert tracker.get_best_epoch("val/loss", "min") == 1
    assert tracker.get_best_epoch("val/accuracy", "max") == 1
    assert tracker.get_best_epoch("train/loss", "min") == 2
    assert tracker.get_best_epoch("no/such/metric") is None
    assert MetricsTracker().get_best_epoch() is None


def test_best_epoch_ignores_nan():
    tracker = MetricsTracker()
    tracker.log_epoch(0, {}, {"val/loss": math.nan})
    tracker.log_epoch(1, {}, {"val/loss": 4.0})
    assert tracker.get_best_epoch("val/loss", "min") == 1


def test_best_epoch_bad_mode():
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        _tracker_with_epochs().get_best_epoch("val/loss", "lowest")


def test_log_step_and_log_scalar_are_kept():
    tracker = MetricsTracker()
    row = {"train/step": 10, "train/loss": 2.0}
    tracker.log_step(row)
    row["train/loss"] = 99.0  # the tracker kept its own copy
    tracker.log_scalar("bench/speedup", 1.7, step=3)
    tracker.log_scalar("bench/memory_mb", 12.0)
    history = tracker.get_step_history()
    assert history.to_dict("records") == [{"train/step": 10, "train/loss": 2.0}]
    assert tracker.scalars == [
        {"name": "bench/speedup", "value": 1.7, "step": 3},
        {"name": "bench/memory_mb", "value": 12.0, "step": None},
    ]


def test_to_csv_writes_readable_epoch_and_step_files(tmp_path):
    tracker = _tracker_with_epochs()
    tracker.log_step({"train/step": 1, "train/loss": 3.1})
    epochs_path = tracker.to_csv(tmp_path / "epochs.csv")
    steps_path = tracker.to_csv(tmp_path / "steps.csv", steps=True)
    assert epochs_path == tmp_path / "epochs.csv"
    back = pd.read_csv(epochs_path)
    assert back["epoch"].tolist() == [0, 1, 2]
    torch.testing.assert_close(back["val/loss"].tolist(), [2.5, 2.0, 2.2], rtol=0, atol=1e-12)
    with open(steps_path, newline="") as f:
        assert list(csv.DictReader(f)) == [{"train/step": "1", "train/loss": "3.1"}]


def test_use_wandb_without_a_run_raises():
    wandb = pytest.importorskip("wandb")
    assert wandb.run is None
    tracker = MetricsTracker(use_wandb=True)
    with pytest.raises(RuntimeError, match="needs an active W&B run"):
        tracker.log_epoch(0, {"train/loss": 1.0})
    with pytest.raises(RuntimeError, match="needs an active W&B run"):
        tracker.log_step({"train/loss": 1.0})


def test_wandb_rows_are_prefixed_and_drop_none(monkeypatch):
    wandb = pytest.importorskip("wandb")
    logged = []

    class FakeRun:
        def log(self, row):
            logged.append(row)

    monkeypatch.setattr(wandb, "run", FakeRun())
    tracker = MetricsTracker(use_wandb=True, wandb_prefix="fp32/")
    tracker.log_step({"train/loss": 2.0, "amp/loss_scale": None})
    tracker.log_scalar("speedup", 1.5, step=4)
    assert logged == [{"fp32/train/loss": 2.0}, {"fp32/speedup": 1.5, "fp32/train/step": 4}]
