"""Tests for utils.training.checkpoint, and resuming test_fine_tuning from one.

The resume tests train 2 epochs straight, then 1 epoch with a checkpoint and a
resumed second epoch from it, and require the same histories and metrics.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from utils import tier3_training_utilities as tier3
from utils.models import tiny_gpt
from utils.training import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest

RUN = dict(
    learning_rate=3e-3, batch_size=4, seq_len=16, max_corpus_bytes=6_000, max_val_batches=2,
    progress=False, log_every=2, device="cpu",
)  # fmt: skip


class StopAfterEpoch:
    def on_epoch_end(self, state, row):
        state.stop_training = True


def _model(dropout=0.1):
    torch.manual_seed(0)
    return tiny_gpt(d_model=32, n_layers=2, n_heads=2, max_seq_len=16, dropout=dropout)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_resuming_after_an_epoch_continues_exactly(tmp_path, precision):
    """Same data order (set_epoch), same dropout (RNG states), same schedule and loss scale."""
    model, config = _model()
    initial = copy.deepcopy(model.state_dict())
    straight = tier3.test_fine_tuning(model, config, n_epochs=2, precision=precision, **RUN)
    straight_weights = copy.deepcopy(model.state_dict())

    model.load_state_dict(initial)
    first = tier3.test_fine_tuning(  # the same 2-epoch run, interrupted after its first epoch
        model, config, n_epochs=2, precision=precision, checkpoint_dir=tmp_path, callbacks=[StopAfterEpoch()], **RUN
    )
    assert first["checkpoint_path"] == str(tmp_path / "last.pt")
    fresh, _ = _model()  # a new process would start from scratch: nothing carried in memory
    resumed = tier3.test_fine_tuning(fresh, config, n_epochs=2, precision=precision, resume_from=tmp_path / "last.pt", **RUN)

    steps_in_epoch_1 = first["optimizer_steps"]
    assert resumed["optimizer_steps"] == straight["optimizer_steps"] == 2 * steps_in_epoch_1
    for key in ("loss_history", "grad_norm_history", "lr_history", "loss_scale_history"):
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-6, atol=1e-6, msg=key)
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], rel=1e-6)
    assert len(resumed["metrics_summary"]) == 2  # the checkpoint's epoch is in the summary
    assert len(resumed["step_times_s"]) == steps_in_epoch_1  # only this run's steps are timed
    torch.testing.assert_close(fresh.state_dict(), straight_weights, rtol=1e-6, atol=1e-6)  # same end weights
    if precision == "fp16":
        assert resumed["final_loss_scale"] == straight["final_loss_scale"]


def test_resuming_a_finished_run_asks_for_more_epochs_before_any_work(tmp_path, monkeypatch):
    model, config = _model()
    tier3.test_fine_tuning(model, config, n_epochs=1, max_steps=2, checkpoint_dir=tmp_path, **RUN)
    monkeypatch.setattr(tier3, "_setup_training_environment", lambda *a, **k: pytest.fail("setup started"))
    with pytest.raises(ValueError, match=r"finished epoch 1 of its run.*pass n_epochs > 1"):
        tier3.test_fine_tuning(model, config, n_epochs=1, resume_from=tmp_path, **RUN)


def test_bad_checkpoint_arguments_name_the_argument(tmp_path):
    model, config = _model()
    with pytest.raises(FileNotFoundError, match="resume_from=.*no checkpoint at"):
        tier3.test_fine_tuning(model, config, resume_from=tmp_path / "missing.pt", **RUN)
    a_file = tmp_path / "note.txt"
    a_file.write_text("not a folder")
    with pytest.raises(ValueError, match="checkpoint_dir=.*is a file; pass a folder"):
        tier3.test_fine_tuning(model, config, checkpoint_dir=a_file, **RUN)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a test_fine_tuning checkpoint"):
        tier3.test_fine_tuning(model, config, resume_from=tmp_path / "other.pt", **RUN)
    with pytest.raises(TypeError, match="checkpoint_dir must be a folder path or None"):
        tier3.test_fine_tuning(model, config, checkpoint_dir=3, **RUN)


def test_save_is_atomic_and_leaves_no_partial_file(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "sub" / "last.pt", {"epoch": 0})
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    assert ckpt.load_checkpoint(path)["epoch"] == 0
    assert ckpt.load_checkpoint(tmp_path / "sub")["format_version"] == ckpt.FORMAT_VERSION  # a folder works too


def test_rng_state_round_trip():
    state = ckpt.capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    ckpt.restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected
