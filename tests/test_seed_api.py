"""The original (seed) system's API, as its users' code calls it: each case here failed before it was fixed.

The seed's own test files describe these shapes: the callback's constructor and
per-epoch hook, ``MetricsTracker.log_epoch`` with plain 'loss'/'accuracy' dicts,
the perplexity clip, ``ConfigPresets.list_presets()`` as ``{name: description}``,
and ``test_fine_tuning`` on a config that has only a vocabulary.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from utils.training.amp_utils import AmpWandbCallback  # the seed's import path
from utils.training.metrics_tracker import MetricsTracker

# --------------------------------------------------------------------------- AmpWandbCallback


@pytest.fixture
def no_wandb_run():
    wandb = pytest.importorskip("wandb")
    if wandb.run is not None:
        wandb.run.finish()
    return wandb


def _trainer(scale: float | None, epoch: int = 0):
    """What the callback reads of a Lightning trainer: the strategy's precision plugin and its real GradScaler."""
    scaler = torch.amp.GradScaler("cpu", init_scale=scale) if scale is not None else None
    return SimpleNamespace(
        current_epoch=epoch, strategy=SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler))
    )


@pytest.mark.parametrize("precision", ["16", "16-mixed", "16_true", "bf16", "32"])
def test_the_seed_constructor_keeps_enabled_and_precision(precision):
    callback = AmpWandbCallback(enabled=True, precision=precision)
    assert callback.enabled is True and callback.precision == precision
    assert AmpWandbCallback(enabled=False, precision="16").enabled is False
    assert AmpWandbCallback(log_every=3).log_every == 3  # today's form still works beside it


@pytest.mark.parametrize(("kwargs", "name"), [({"enabled": "yes"}, "enabled"), ({"precision": 16}, "precision")])
def test_the_seed_constructor_names_a_bad_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        AmpWandbCallback(**kwargs)


def test_the_seed_hook_reads_the_scaler_from_the_strategy():
    callback = AmpWandbCallback(enabled=True, precision="16")
    assert callback._get_loss_scale(_trainer(65536.0)) == 65536.0
    assert callback._get_loss_scale(_trainer(None)) is None


def test_the_seed_hook_without_a_run_logs_nothing_and_does_not_raise(no_wandb_run):
    AmpWandbCallback(enabled=True, precision="16").on_train_epoch_end(_trainer(1024.0), None)
    AmpWandbCallback(enabled=False, precision="16").on_train_start(_trainer(None), None)  # the seed never raised here
    assert no_wandb_run.run is None


def test_the_seed_hook_logs_once_per_epoch_to_a_real_offline_run(no_wandb_run, wandb_dir):
    wandb = no_wandb_run
    run = wandb.init(mode="offline", dir=str(wandb_dir), project="seed-api")
    try:
        callback = AmpWandbCallback(enabled=True, precision="16-mixed")
        callback.on_train_batch_end(_trainer(8.0), None, None, None, batch_idx=0)  # per-batch: not in the seed form
        assert "amp/precision" not in run.summary.keys()
        callback.on_train_epoch_end(_trainer(2048.0, epoch=3), None)
        assert run.summary.get("amp/enabled") == 1
        assert run.summary.get("amp/precision") == "16-mixed"
        assert run.summary.get("amp/loss_scale") == 2048.0
        assert run.summary.get("epoch") == 3
        # bf16 has no scaler: no loss scale is logged even when the trainer holds one.
        AmpWandbCallback(enabled=True, precision="bf16").on_train_epoch_end(_trainer(4.0, epoch=4), None)
        assert run.summary.get("amp/precision") == "bf16" and run.summary.get("amp/loss_scale") == 2048.0
    finally:
        run.finish()


# --------------------------------------------------------------------------- MetricsTracker


def _seed_epoch(tracker: MetricsTracker, epoch: int = 0, val_loss: float = 2.7):
    return tracker.log_epoch(
        epoch=epoch,
        train_metrics={"loss": 2.3026, "accuracy": 0.75},
        val_metrics={"loss": val_loss, "accuracy": 0.72},
        learning_rate=5e-5,
        gradient_norm=0.85,
        epoch_duration=120.5,
    )


def test_log_epoch_takes_the_seed_signature_and_keeps_train_and_val_apart():
    tracker = MetricsTracker(use_wandb=False)
    _seed_epoch(tracker)
    (row,) = tracker.metrics_history
    assert row["train/loss"] == 2.3026 and row["train/accuracy"] == 0.75  # before: lost under val's 'loss'
    assert row["val/loss"] == 2.7 and row["val/accuracy"] == 0.72
    assert row["gradient_norm"] == 0.85 and row["epoch_duration"] == 120.5
    assert row["learning_rate"] == 5e-5 and row["lr"] == 5e-5
    assert row["train/perplexity"] == pytest.approx(10.0, abs=0.01)
    assert row["val/perplexity"] == pytest.approx(math.exp(2.7))
    assert "loss" not in row and "accuracy" not in row


def test_metrics_history_names_the_epoch_rows_and_feeds_the_summary():
    tracker = MetricsTracker()
    for epoch, val_loss in enumerate([3.0, 2.5, 2.8]):
        _seed_epoch(tracker, epoch, val_loss)
    assert tracker.metrics_history is tracker.epoch_rows
    summary = tracker.get_summary()
    assert len(summary) == 3 and {"train/perplexity", "gradient_norm", "epoch_duration"} <= set(summary.columns)
    assert tracker.get_best_epoch("val/loss", "min") == 1


@pytest.mark.parametrize(
    ("kwargs", "name"), [({"gradient_norm": -1.0}, "gradient_norm"), ({"epoch_duration": "2"}, "epoch_duration")]
)
def test_log_epoch_names_a_bad_seed_argument(kwargs, name):
    tracker = MetricsTracker()
    with pytest.raises(ValueError, match=f"^{name} must be"):
        tracker.log_epoch(0, {"loss": 1.0}, **kwargs)
    assert tracker.metrics_history == []


def test_use_wandb_without_a_run_warns_and_goes_on(no_wandb_run):
    tracker = MetricsTracker(use_wandb=True)
    with pytest.warns(UserWarning, match="found no active W&B run"):
        _seed_epoch(tracker)
    assert len(tracker.metrics_history) == 1


def test_perplexity_of_a_huge_loss_is_clipped_at_100():
    assert MetricsTracker(use_wandb=False).compute_perplexity(150.0) == math.exp(100.0)
    assert math.isfinite(MetricsTracker.compute_perplexity(150.0))


# --------------------------------------------------------------------------- test_fine_tuning


def _namespace_model(vocab_size: int = 30):
    from utils.models import tiny_gpt

    torch.manual_seed(0)
    model, _ = tiny_gpt(vocab_size=vocab_size, max_seq_len=32, d_model=16, n_layers=1, n_heads=2)
    return model, SimpleNamespace(vocab_size=vocab_size)  # the seed's kind of config: no max_seq_len


def test_fine_tuning_infers_the_sequence_length_from_fixed_length_rows():
    from utils import tier3_training_utilities as tier3

    model, config = _namespace_model()
    rows = [torch.randint(0, 30, (12,)) for _ in range(16)]
    results = tier3.test_fine_tuning(model, config, train_data=rows, n_epochs=1, batch_size=4, progress=False)
    assert len(results["loss_history"]) == 4  # 14 training rows (2 held out) of 12 tokens, batch 4: 4 steps


def test_a_config_without_a_length_and_text_data_still_says_what_to_pass():
    from utils import tier3_training_utilities as tier3

    model, config = _namespace_model(vocab_size=256)
    with pytest.raises(ValueError, match="config has no max_seq_len .* the data does not show one; .* pass seq_len="):
        tier3.test_fine_tuning(model, config, train_data=["some text"] * 8, progress=False)


def test_fine_tuning_prints_the_accumulation_and_the_effective_batch_once(tiny_gpt, capsys):
    from utils import tier3_training_utilities as tier3

    model, config = tiny_gpt
    tier3.test_fine_tuning(model, config, max_steps=1, batch_size=2, gradient_accumulation_steps=3)
    out = capsys.readouterr().out
    assert out.count("Gradient accumulation steps: 3\n") == 1
    assert out.count("Effective batch size: 6\n") == 1
    tier3.test_fine_tuning(model, config, max_steps=1, batch_size=2, progress=False)
    assert "Effective batch size" not in capsys.readouterr().out


def test_an_early_stopping_monitor_that_names_no_metric_is_refused_before_training(tiny_gpt, monkeypatch):
    from utils import tier3_training_utilities as tier3
    from utils.training import loop
    from utils.training.callbacks import EarlyStopping

    model, config = tiny_gpt
    monkeypatch.setattr(loop, "build_parts", lambda *a, **k: pytest.fail("setup started"))
    with pytest.raises(ValueError, match=r"^EarlyStopping\(monitor='val/los'\) names no key of the epoch row"):
        tier3.test_fine_tuning(model, config, callbacks=[EarlyStopping(patience=1, monitor="val/los")])


# --------------------------------------------------------------------------- ConfigPresets


def test_list_presets_is_the_seeds_name_to_description_dict():
    from utils.ui.presets import ConfigPresets

    listed = ConfigPresets.list_presets()
    assert isinstance(listed, dict) and {"tiny", "small", "medium", "large"} <= set(listed)
    assert all(isinstance(text, str) and text for text in listed.values())
    assert [row["name"] for row in ConfigPresets.preset_rows()] == list(listed)  # the rows, under another name
