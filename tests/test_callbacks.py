"""Tests for utils.training.callbacks (EarlyStopping) and the engine's best checkpoint.

Runs are tiny: the conftest 2-layer GPT, 16-token rows, a few steps per epoch.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from tiny_models import TINY

from utils import models
from utils import tier3_training_utilities as tier3
from utils.training import checkpoint as ckpt
from utils.training import loop
from utils.training.callbacks import EarlyStopping, is_improvement

SEQ_LEN = 16
RUN = dict(
    learning_rate=3e-3,
    batch_size=2,
    seq_len=SEQ_LEN,
    max_val_batches=1,
    log_every=2,
    progress=False,
    device="cpu",
    precision="fp32",
)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest


def _ids(*shape, seed=0):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))


DATA = dict(train_data=_ids(8, SEQ_LEN), val_data=_ids(2, SEQ_LEN, seed=1))  # 4 steps per epoch


class StopAfterEpoch:
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, state, row):
        if state.epoch == self.epoch:
            state.stop_training = True


# -- EarlyStopping on its own ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(patience=0), "patience must be a positive integer"),
        (dict(patience=True), "patience must be a positive integer"),
        (dict(patience=2, min_delta=-0.1), "min_delta must be a non-negative finite number"),
        (dict(patience=2, min_delta=math.inf), "min_delta must be a non-negative finite number"),
        (dict(patience=2, mode="avg"), r"mode must be one of \('min', 'max'\)"),
        (dict(patience=2, monitor=""), "monitor must be a non-empty string"),
    ],
)
def test_early_stopping_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)


def test_patience_counts_epochs_without_improvement_beyond_min_delta():
    stop = EarlyStopping(patience=2, min_delta=0.1)
    state = SimpleNamespace(epoch=0, stop_training=False)
    for epoch, loss in enumerate([3.0, 2.95, 2.5, 2.45, 2.41]):  # improvements of 0.05 do not count
        state.epoch = epoch
        stop.on_epoch_end(state, {"val/loss": loss})
        if state.stop_training:
            break
    assert (stop.best, stop.wait, stop.stopped_epoch) == (2.5, 2, 4)


def test_is_improvement_handles_max_mode_and_nan():
    assert is_improvement(0.6, 0.5, "max") and not is_improvement(0.4, 0.5, "max")
    assert not is_improvement(math.nan, 1.0, "min") and not is_improvement(math.nan, None, "min")
    assert is_improvement(1.0, None, "min")


def test_early_stopping_names_a_missing_monitor_key():
    stop = EarlyStopping(patience=1, monitor="val/bleu")
    with pytest.raises(ValueError, match=r"EarlyStopping\(monitor='val/bleu'\): the epoch row has no such key"):
        stop.on_epoch_end(SimpleNamespace(epoch=0, stop_training=False), {"val/loss": 1.0})


# -- in the engine --------------------------------------------------------------------------------------


def test_early_stopping_ends_the_run_through_state_stop_training(tiny_gpt):
    model, config = tiny_gpt
    stop = EarlyStopping(patience=1, min_delta=100.0)  # nothing after the first epoch counts as better
    results = tier3.test_fine_tuning(model, config, n_epochs=5, callbacks=[stop], **DATA, **RUN)
    assert stop.stopped_epoch == 1
    assert len(results["metrics_summary"]) == 2 and results["optimizer_steps"] == 8
    assert results["stopped_early"] is True
    full = tier3.test_fine_tuning(copy.deepcopy(model), config, n_epochs=2, **DATA, **RUN)
    assert full["stopped_early"] is False  # ran out of epochs: not an early stop


@pytest.mark.parametrize("monitor, mode", [("val/loss", "min"), ("val/accuracy", "max")])
def test_best_checkpoint_holds_the_best_epoch_and_load_best_restores_it(tiny_gpt, tmp_path, monitor, mode):
    model, config = tiny_gpt
    results = tier3.test_fine_tuning(
        model,
        config,
        n_epochs=3,
        checkpoint_dir=tmp_path,
        monitor=monitor,
        mode=mode,
        load_best=True,
        **DATA,
        **RUN,
    )
    values = results["metrics_summary"][monitor].tolist()
    pick = min if mode == "min" else max
    best_epoch = values.index(pick(values))  # the first epoch with the best value
    assert (results["best_epoch"], results["best_value"]) == (best_epoch, values[best_epoch])
    assert results["best_checkpoint_path"] == str(tmp_path / "best.pt") and results["best_loaded"] is True
    best = ckpt.load_best(tmp_path / "best.pt")
    assert (best["epoch"], best["value"], best["monitor"], best["mode"]) == (
        best_epoch,
        values[best_epoch],
        monitor,
        mode,
    )
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, best["model"][name], rtol=0, atol=0)  # the model holds the best weights


def test_without_a_checkpoint_dir_the_best_value_is_still_reported(tiny_gpt):
    model, config = tiny_gpt
    results = tier3.test_fine_tuning(model, config, n_epochs=2, **DATA, **RUN)
    assert results["best_value"] == min(results["metrics_summary"]["val/loss"])
    assert results["best_checkpoint_path"] is None and results["best_loaded"] is False


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(load_best=True), "load_best=True needs checkpoint_dir="),
        (dict(monitor="val/bleu"), "monitor must be one of"),
        (dict(mode="lowest"), r"mode must be one of \('min', 'max'\)"),
        (dict(load_best=1), "load_best must be True or False"),
    ],
)
def test_lifecycle_settings_are_checked_before_any_work(tiny_gpt, kwargs, match, monkeypatch):
    monkeypatch.setattr(loop, "build_parts", lambda *a, **k: pytest.fail("setup started"))
    model, config = tiny_gpt
    with pytest.raises(ValueError, match=match):
        tier3.test_fine_tuning(model, config, **kwargs, **DATA, **RUN)


def test_patience_and_the_best_value_survive_a_resume(tiny_gpt, tmp_path):
    """Interrupted after epoch 1 and resumed, the run stops where the uninterrupted one does, with its weights."""
    model, config = tiny_gpt
    initial = copy.deepcopy(model.state_dict())
    straight_stop = EarlyStopping(patience=2, min_delta=100.0)
    straight = tier3.test_fine_tuning(model, config, n_epochs=6, callbacks=[straight_stop], **DATA, **RUN)
    assert straight_stop.stopped_epoch == 2
    straight_weights = copy.deepcopy(model.state_dict())

    model.load_state_dict(initial)
    first_stop = EarlyStopping(patience=2, min_delta=100.0)
    tier3.test_fine_tuning(
        model, config, n_epochs=6, checkpoint_dir=tmp_path, callbacks=[first_stop, StopAfterEpoch(1)], **DATA, **RUN
    )
    assert first_stop.wait == 1  # epoch 1 did not improve: one epoch of patience used
    assert ckpt.load_checkpoint(tmp_path)["callbacks"]["EarlyStopping"]["wait"] == 1

    resumed_stop = EarlyStopping(patience=2, min_delta=100.0)  # a fresh object, as in a new process
    torch.manual_seed(123)
    fresh, _ = models.tiny_gpt(**TINY)  # other initial weights: everything must come from the checkpoint
    resumed = tier3.test_fine_tuning(
        fresh, config, n_epochs=6, resume_from=tmp_path, callbacks=[resumed_stop], **DATA, **RUN
    )
    assert resumed_stop.stopped_epoch == 2  # had patience been lost, it would have run to epoch 3
    assert resumed["best_value"] == straight["best_value"] and resumed["best_epoch"] == straight["best_epoch"] == 0
    assert resumed["loss_history"] == straight["loss_history"]
    for name, tensor in fresh.state_dict().items():
        torch.testing.assert_close(tensor, straight_weights[name], rtol=0, atol=0)
