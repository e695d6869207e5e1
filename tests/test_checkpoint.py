"""Tests for utils.training.checkpoint, and resuming test_fine_tuning from one.

The resume tests train 2 epochs straight, then 1 epoch with a checkpoint and a
resumed second epoch from it, and require the same histories and metrics.
"""

from __future__ import annotations

import copy
import pickle
import random

import numpy as np
import pytest
import torch

from utils import tier3_training_utilities as tier3
from utils.models import tiny_gpt
from utils.training import checkpoint as ckpt
from utils.training import loop

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest

RUN = dict(
    learning_rate=3e-3,
    batch_size=4,
    seq_len=16,
    max_corpus_bytes=6_000,
    max_val_batches=2,
    progress=False,
    log_every=2,
    device="cpu",
)


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
    resumed = tier3.test_fine_tuning(
        fresh, config, n_epochs=2, precision=precision, resume_from=tmp_path / "last.pt", **RUN
    )

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
    small = {**RUN, "max_corpus_bytes": 600}  # a whole epoch in a few steps (a max_steps cut leaves it unfinished)
    tier3.test_fine_tuning(model, config, n_epochs=1, checkpoint_dir=tmp_path, **small)
    monkeypatch.setattr(loop, "build_parts", lambda *a, **k: pytest.fail("setup started"))
    with pytest.raises(ValueError, match=r"finished epoch 1 of its run.*pass n_epochs > 1"):
        tier3.test_fine_tuning(model, config, n_epochs=1, resume_from=tmp_path, **small)
    with pytest.raises(
        ValueError, match=r"already took \d+ optimizer steps, all that n_epochs=2 and max_steps=2 allow"
    ):
        tier3.test_fine_tuning(model, config, n_epochs=2, max_steps=2, resume_from=tmp_path, **small)


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
    under_a_file = a_file / "ckpt"
    with pytest.raises(ValueError, match=r"checkpoint_dir=.*note.txt is a file, so the folder cannot be made there"):
        tier3.test_fine_tuning(model, config, checkpoint_dir=under_a_file, **RUN)


# -- checkpoints are data, never code --------------------------------------------------------------


class Payload:
    """Unpickling this calls open(sentinel, 'w'): if the file appears, the loader ran code from the file."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def _write_plain_pickle(path, sentinel):
    with open(path, "wb") as f:
        pickle.dump({"format_version": ckpt.FORMAT_VERSION, "model": Payload(sentinel)}, f)


def _write_torch_save(path, sentinel):
    torch.save({"format_version": ckpt.FORMAT_VERSION, "epoch": 0, "model": {}, "evil": Payload(sentinel)}, path)


def _write_protocol_2_pickle(path, sentinel):
    with open(path, "wb") as f:
        pickle.dump({"format_version": ckpt.FORMAT_VERSION, "model": Payload(sentinel)}, f, protocol=2)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "write",
    [_write_plain_pickle, _write_protocol_2_pickle, _write_torch_save],
    ids=["pickle", "pickle-2", "torch.save"],
)
def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, write, monkeypatch):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    write(path, sentinel)
    assert not sentinel.exists()
    model, config = _model()
    before = copy.deepcopy(model.state_dict())
    monkeypatch.setattr(loop, "build_parts", lambda *a, **k: pytest.fail("setup started"))
    # A torch.save'd file reaches the GLOBAL and is refused there; a protocol-4 pickle is refused even earlier.
    with pytest.raises(
        ValueError, match=r"resume_from=.*was refused: it (holds objects that could run code|is not a plain-data)"
    ):
        tier3.test_fine_tuning(model, config, n_epochs=3, resume_from=path, **RUN)
    assert not sentinel.exists()  # nothing from the file ran
    torch.testing.assert_close(model.state_dict(), before, rtol=0, atol=0)
    # The control: an unrestricted loader would have run the payload.
    torch.load(path, weights_only=False) if write is _write_torch_save else pickle.loads(path.read_bytes())
    assert sentinel.exists()


def test_a_checkpoint_holds_only_what_weights_only_reads(tmp_path):
    model, config = _model()
    tier3.test_fine_tuning(model, config, n_epochs=1, max_steps=2, checkpoint_dir=tmp_path, precision="fp16", **RUN)
    raw = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)  # raises on anything else
    assert raw["format_version"] == ckpt.FORMAT_VERSION and raw["scaler"] is not None
    assert isinstance(raw["rng"]["numpy"][1], torch.Tensor)  # numpy's state, stored as a tensor


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_checkpoint_error_names_the_path(tmp_path, damage):
    model, config = _model()
    tier3.test_fine_tuning(model, config, n_epochs=1, max_steps=2, checkpoint_dir=tmp_path, **RUN)
    path = tmp_path / "last.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a checkpoint at all\n" * 64)
    with pytest.raises(
        ValueError, match=rf"resume_from='{path}' (is truncated or corrupted|was refused: it is not a plain-data)"
    ):
        tier3.test_fine_tuning(model, config, n_epochs=2, resume_from=path, **RUN)


def test_a_checkpoint_of_another_architecture_is_refused_before_any_weight_changes(tmp_path, monkeypatch):
    two_layers, config = _model()
    tier3.test_fine_tuning(two_layers, config, n_epochs=1, max_steps=2, checkpoint_dir=tmp_path, **RUN)
    torch.manual_seed(1)
    one_layer, small_config = tiny_gpt(d_model=32, n_layers=1, n_heads=2, max_seq_len=16)
    before = copy.deepcopy(one_layer.state_dict())
    monkeypatch.setattr(loop, "build_parts", lambda *a, **k: pytest.fail("setup started"))
    with pytest.raises(ValueError, match=r"does not fit this model \(unexpected keys \['blocks.1"):
        tier3.test_fine_tuning(one_layer, small_config, n_epochs=2, resume_from=tmp_path, **RUN)
    torch.testing.assert_close(one_layer.state_dict(), before, rtol=0, atol=0)  # not one tensor overwritten
    torch.manual_seed(1)
    wider, wide_config = tiny_gpt(d_model=64, n_layers=2, n_heads=2, max_seq_len=16)
    with pytest.raises(ValueError, match=r"shape mismatches \['tok_emb.weight: checkpoint \(256, 32\) vs model"):
        tier3.test_fine_tuning(wider, wide_config, n_epochs=2, resume_from=tmp_path, **RUN)


def test_save_is_atomic_and_leaves_no_partial_file(tmp_path):
    minimal = {key: {} for key in ckpt.REQUIRED_KEYS} | {"epoch": 0, "optimizer_step": 0}
    path = ckpt.save_checkpoint(tmp_path / "sub" / "last.pt", minimal)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    assert ckpt.load_checkpoint(path)["epoch"] == 0
    assert ckpt.load_checkpoint(tmp_path / "sub")["format_version"] == ckpt.FORMAT_VERSION  # a folder works too
    del minimal["history"]
    ckpt.save_checkpoint(path, minimal)
    with pytest.raises(ValueError, match=r"is an incomplete checkpoint: it lacks \['history'\]"):
        ckpt.load_checkpoint(path)


def test_rng_state_round_trip(tmp_path):
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()
    state = ckpt.capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    state = torch.load(tmp_path / "rng.pt", weights_only=True)  # the stored form is data only
    expected = (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(),
        np.random.standard_normal(),
        torch.rand(()).item(),
    )
    ckpt.restore_rng_state(state)
    got = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.standard_normal(), torch.rand(()).item())
    assert got == expected


def test_resuming_a_run_that_used_every_step_max_steps_allows_says_to_raise_it(tmp_path):
    model, config = _model()
    tier3.test_fine_tuning(model, config, n_epochs=2, max_steps=2, checkpoint_dir=tmp_path, **RUN)
    with pytest.raises(ValueError, match=r"already took 2 optimizer steps, all that n_epochs=2 and max_steps=2 allow"):
        tier3.test_fine_tuning(model, config, n_epochs=2, max_steps=2, resume_from=tmp_path, **RUN)
