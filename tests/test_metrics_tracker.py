"""Tests for utils.training.metrics_tracker: flat rows into a DataFrame and W&B (real wandb, offline)."""

from __future__ import annotations

import inspect
import json
import math
import struct
import sys

import pandas as pd
import pytest
import torch

from utils.training.data import IGNORE_INDEX
from utils.training.metrics_tracker import MetricsTracker


@pytest.mark.parametrize("loss", [0.0, 1.0, 2.5])
def test_perplexity_is_exp_of_loss(loss):
    assert math.isclose(MetricsTracker.compute_perplexity(loss), math.exp(loss), rel_tol=1e-12)


def test_perplexity_clips_the_loss_at_100_so_it_never_overflows():
    # The seed API's rule (issue: compute_perplexity(150) returned 1.4e65, and 1e6 returned inf).
    assert MetricsTracker.compute_perplexity(150.0) == math.exp(100.0)
    assert MetricsTracker.compute_perplexity(1e6) == math.exp(100.0)
    assert math.isnan(MetricsTracker.compute_perplexity(math.nan))


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
    tracker.log_epoch(1, {"train/loss": 2.0}, {"val/loss": 2.0, "val/accuracy": 0.4}, step=20)
    tracker.log_epoch(2, {"train/loss": 1.5}, {"val/loss": 2.2, "val/accuracy": 0.3})
    return tracker


def test_log_epoch_signature_has_only_what_callers_use():
    parameters = list(inspect.signature(MetricsTracker.log_epoch).parameters)
    # The seed's positional order first (epoch, train, val, lr, gradient_norm, epoch_duration), then step.
    assert parameters == [
        "self",
        "epoch",
        "train_metrics",
        "val_metrics",
        "learning_rate",
        "gradient_norm",
        "epoch_duration",
        "step",
    ]


def test_log_epoch_returns_a_flat_row_with_perplexity_and_only_given_options():
    tracker = MetricsTracker()
    row = tracker.log_epoch(0, {"train/loss": 3.0}, {"val/loss": 2.0}, learning_rate=1e-3, step=12)
    expected = {"epoch": 0, "train/loss": 3.0, "val/loss": 2.0, "lr": 1e-3, "train/step": 12}
    assert row == {**expected, "val/perplexity": pytest.approx(math.exp(2.0))}
    assert tracker.log_epoch(1, {"train/loss": 2.0}) == {"epoch": 1, "train/loss": 2.0}  # nothing else added
    assert tracker.epoch_rows == [row, {"epoch": 1, "train/loss": 2.0}]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"epoch": -1}, "epoch"),
        ({"epoch": True}, "epoch"),
        ({"train_metrics": [("train/loss", 1.0)]}, "train_metrics"),
        ({"val_metrics": 2.0}, "val_metrics"),
        ({"learning_rate": True}, "learning_rate"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"step": 1.5}, "step"),
        ({"step": -1}, "step"),
    ],
)
def test_log_epoch_rejects_bad_arguments_by_name(kwargs, name):
    args = {"epoch": 0, "train_metrics": {"train/loss": 1.0}, **kwargs}
    tracker = MetricsTracker()
    with pytest.raises(ValueError, match=f"^{name} must be"):
        tracker.log_epoch(**args)
    assert tracker.epoch_rows == []  # checked before anything is recorded


@pytest.mark.parametrize(
    ("kwargs", "name"), [({"use_wandb": "yes"}, "use_wandb"), ({"wandb_prefix": None}, "wandb_prefix")]
)
def test_constructor_rejects_bad_arguments_by_name(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        MetricsTracker(**kwargs)


def test_summary_is_one_dataframe_row_per_epoch():
    summary = _tracker_with_epochs().get_summary()
    assert isinstance(summary, pd.DataFrame)
    assert summary["epoch"].tolist() == [0, 1, 2]
    assert summary["val/loss"].tolist() == [2.5, 2.0, 2.2]
    assert {"train/loss", "val/perplexity", "lr", "train/step"} <= set(summary.columns)


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
    with pytest.raises(ValueError, match=r"mode must be one of \('min', 'max'\), got 'lowest'"):
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


def test_log_step_rejects_a_row_that_is_not_a_dict():
    with pytest.raises(ValueError, match="^row must be a dict"):
        MetricsTracker().log_step([("train/loss", 1.0)])


# --------------------------------------------------------------------------- W&B


def test_use_wandb_without_a_run_warns_once_and_keeps_the_rows():
    wandb = pytest.importorskip("wandb")
    assert wandb.run is None
    tracker = MetricsTracker(use_wandb=True)
    with pytest.warns(UserWarning, match=r"^MetricsTracker\(use_wandb=True\) found no active W&B run") as caught:
        tracker.log_epoch(0, {"train/loss": 1.0})
        tracker.log_step({"train/loss": 1.0})
    assert len(caught) == 1  # once, not per row
    assert tracker.epoch_rows == [{"epoch": 0, "train/loss": 1.0}] and tracker.step_rows == [{"train/loss": 1.0}]


@pytest.mark.parametrize(
    "log",
    [
        lambda tracker: tracker.log_step({"train/step": 1, "train/loss": 1.0}),
        lambda tracker: tracker.log_epoch(0, {"train/loss": 1.0}, step=1),
        lambda tracker: tracker.log_scalar("bench/speedup", 1.5),
    ],
    ids=["log_step", "log_epoch", "log_scalar"],
)
def test_use_wandb_without_wandb_installed_gives_the_install_hint(monkeypatch, log):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail, as if it were not installed
    tracker = MetricsTracker(use_wandb=True)
    with pytest.raises(ImportError, match="pip install wandb") as excinfo:
        log(tracker)
    assert type(excinfo.value) is ImportError  # not a bare ModuleNotFoundError


def _offline_run(wandb, wandb_dir):
    return wandb.init(mode="offline", dir=str(wandb_dir), project="metrics-tracker-test")


def test_rows_are_logged_at_the_optimizer_step(wandb_dir, offline_wandb_log):
    wandb = pytest.importorskip("wandb")
    run = _offline_run(wandb, wandb_dir)
    try:
        tracker = MetricsTracker(use_wandb=True)
        tracker.log_step({"train/step": 2, "train/loss": 3.0, "amp/loss_scale": None})
        tracker.log_step({"train/step": 4, "train/loss": 2.0})
        tracker.log_epoch(0, {"train/mean_loss": 2.5}, {"val/loss": 2.2}, step=4)  # the same step: one row
        tracker.log_step({"train/step": 6, "train/loss": 1.5})
        run.log({"amp/precision": "bf16"})  # another logger without step= closes step 6 ...
        tracker.log_epoch(1, {"train/mean_loss": 1.6}, {"val/accuracy": 0.5}, step=6)  # ... so this goes to 7
    finally:
        run.finish()
    history = _history(offline_wandb_log(b"val/accuracy"))
    assert [row["_step"] for row in history] == [2, 4, 6, 7]
    assert [row.get("train/step") for row in history] == [2, 4, 6, 6]
    assert history[0]["train/loss"] == 3.0 and "amp/loss_scale" not in history[0]  # None values are left out
    assert history[1]["train/loss"] == 2.0 and history[1]["val/loss"] == 2.2 and history[1]["epoch"] == 0
    assert history[2]["amp/precision"] == "bf16"
    assert history[3]["val/accuracy"] == 0.5 and history[3]["epoch"] == 1  # not dropped as a step going backwards


def test_prefixed_trackers_share_a_run_with_their_own_step_axis(wandb_dir, offline_wandb_log):
    wandb = pytest.importorskip("wandb")
    run = _offline_run(wandb, wandb_dir)
    try:
        for prefix in ("fp32/", "bf16/"):  # like the AMP benchmark's two arms, each from step 1
            tracker = MetricsTracker(use_wandb=True, wandb_prefix=prefix)
            tracker.log_step({"train/step": 1, "train/loss": 2.0})
            tracker.log_step({"train/step": 2, "train/loss": 1.0})
            tracker.log_epoch(0, {"train/mean_loss": 1.5}, {"val/loss": 1.2}, step=2)
            tracker.log_scalar("speedup", 1.5, step=2)
    finally:
        run.finish()
    records = list(_records(offline_wandb_log(b"bf16/speedup")))
    metrics = [(r.metric.glob_name, r.metric.step_metric) for r in records if r.WhichOneof("record_type") == "metric"]
    assert metrics == [("fp32/*", "fp32/train/step"), ("bf16/*", "bf16/train/step")]  # once per prefix
    history = _history_of(records)
    for prefix in ("fp32/", "bf16/"):
        rows = [row for row in history if any(key.startswith(prefix) for key in row)]
        assert [row[f"{prefix}train/step"] for row in rows] == [1, 2, 2, 2]  # every row carries its step
        assert rows[2][f"{prefix}val/loss"] == 1.2 and rows[3][f"{prefix}speedup"] == 1.5
    assert [row["_step"] for row in history] == list(range(8))  # wandb's own counter, never backwards


# --------------------------------------------------------------------------- reading an offline run

# wandb 0.31 has no public reader for an offline run's .wandb file. It is a LevelDB-style
# log: a 7-byte header (':W&B', magic, version), then 32 KiB blocks of chunks, each with a
# CRC (4 bytes), a length (2) and a type (1 full, 2 first, 3 middle, 4 last), holding
# wandb_internal Record protobufs. This reads only what these tests need.
_BLOCK_SIZE, _HEADER_SIZE, _CHUNK_HEADER_SIZE = 32 * 1024, 7, 7


def _records(log: bytes):
    from wandb.proto import wandb_internal_pb2

    assert log[:4] == b":W&B", log[:_HEADER_SIZE]
    position, parts = _HEADER_SIZE, []
    while position + _CHUNK_HEADER_SIZE <= len(log):
        if _BLOCK_SIZE - position % _BLOCK_SIZE < _CHUNK_HEADER_SIZE:  # block trailer: zero padding
            position += _BLOCK_SIZE - position % _BLOCK_SIZE
            continue
        _crc, length, kind = struct.unpack("<IHB", log[position : position + _CHUNK_HEADER_SIZE])
        parts.append(log[position + _CHUNK_HEADER_SIZE : position + _CHUNK_HEADER_SIZE + length])
        position += _CHUNK_HEADER_SIZE + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def _history_of(records) -> list[dict]:
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def _history(log: bytes) -> list[dict]:
    """The run's history rows, in order, each with wandb's '_step'."""
    return _history_of(_records(log))
