"""Tests for utils.training.run_folder: a killed overwrite never loses the old run; config.json and resumes checked.

The kill tests install a kill point in a forked child, which then SIGKILLs
itself there (no except or finally block runs, as after a real kill -9), and
check what the next call finds.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from tiny_models import cpu_coordinator, lifecycle_model, run_until_killed

from utils import folders
from utils.training import checkpoint as ckpt
from utils.training import loop, run_folder, training_core

# Built-in corpus, 16-token rows, 4 steps per epoch: about a second per epoch on CPU.
RUN = dict(
    learning_rate=3e-3,
    batch_size=4,
    seq_len=16,
    max_corpus_bytes=300,
    max_val_batches=1,
    log_every=2,
    precision="fp32",
    progress=False,
)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest


_model = lifecycle_model


_coordinator = cpu_coordinator


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def _old_run(out: Path) -> dict[str, bytes]:
    """A finished 1-epoch run ``out/r`` with a note in it; returns its files' bytes."""
    model, config = _model()
    _coordinator(out).train(model, config, run_name="r", n_epochs=1, **RUN)
    (out / "r" / "note.txt").write_text("the old run")
    return _snapshot(out / "r")


# -- an overwrite killed at each point -----------------------------------------------


def _kill(*args, **kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _KillOnLog:
    """Dies at the first logging step: training has begun, no checkpoint is written yet."""

    def on_log(self, state, row):
        _kill()


class _KillAtEpoch1:
    """Dies at the end of epoch 1, before its checkpoint: epoch 0's last.pt is on disk."""

    def on_epoch_end(self, state, row):
        if state.epoch == 1:
            _kill()


def _after_setting_aside() -> list:
    set_aside = folders.set_aside

    def set_aside_then_kill(target):
        set_aside(target)
        _kill()

    folders.set_aside = set_aside_then_kill
    return []


def _after_the_new_config() -> list:
    loop.train = _kill  # config.json is written just before the engine starts
    return []


def _during_training_before_the_first_checkpoint() -> list:
    return [_KillOnLog()]


def _after_the_first_checkpoint() -> list:
    return [_KillAtEpoch1()]


def _overwrite_killed(out: Path, kill_point: Callable[[], list]) -> None:
    """``train(run_name='r', n_epochs=2, overwrite=True)`` in a forked child that is killed at ``kill_point``."""

    def overwrite() -> None:
        callbacks = kill_point()
        model, config = _model(seed=1)
        _coordinator(out).train(model, config, run_name="r", n_epochs=2, overwrite=True, callbacks=callbacks, **RUN)

    run_until_killed(overwrite)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize(
    ("kill_point", "kept"),
    [
        (_after_setting_aside, "old"),
        (_after_the_new_config, "old"),
        (_during_training_before_the_first_checkpoint, "old"),
        (_after_the_first_checkpoint, "new"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_a_killed_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tmp_path, kill_point, kept):
    out = tmp_path / "runs"
    old = _old_run(out)
    _overwrite_killed(out, kill_point)
    (aside,) = [p for p in out.iterdir() if p.name.startswith(".r.replaced-")]  # the old run, whole, beside it
    assert _snapshot(aside) == old

    # The next call sorts it out before its checks: it sees the old run back, or the new one kept.
    model, config = _model()
    with pytest.raises(ValueError, match="already exists; pass resume=True"):
        _coordinator(out).train(model, config, run_name="r", n_epochs=1, **RUN)
    assert [p.name for p in out.iterdir()] == ["r"]  # no hidden leftovers
    if kept == "old":
        assert _snapshot(out / "r") == old
    else:
        assert not (out / "r" / "note.txt").exists()
        assert json.loads((out / "r" / "config.json").read_text())["settings"]["n_epochs"] == 2
        assert ckpt.load_checkpoint(out / "r" / "checkpoints")["epoch"] == 0
        resumed = _coordinator(out).resume_training(out / "r", model, config)  # and it carries on
        assert len(resumed["metrics_summary"]) == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_resume_training_also_recovers_a_killed_overwrite(tmp_path):
    out = tmp_path / "runs"
    old = _old_run(out)
    _overwrite_killed(out, _during_training_before_the_first_checkpoint)
    model, config = _model()
    with pytest.raises(ValueError, match="finished epoch 1 of its run"):  # the old run's own last.pt, found again
        _coordinator(out).resume_training(out / "r" / "checkpoints" / "last.pt", model, config)
    assert _snapshot(out / "r") == old and [p.name for p in out.iterdir()] == ["r"]


def test_recover_run_dir_restores_the_old_run_beside_an_uncheckpointed_new_one(tmp_path):
    run_dir = tmp_path / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    ckpt.checkpoint_path(run_dir / "checkpoints").write_bytes(b"old")
    aside = folders.set_aside(run_dir)
    assert aside.name.startswith(".r.replaced-") and not run_dir.exists()
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")  # the new run, killed before its first checkpoint
    run_folder.recover_run_dir(run_dir)
    assert ckpt.checkpoint_path(run_dir / "checkpoints").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


def test_a_run_without_an_old_one_beside_it_is_never_deleted_by_recovery(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")  # a new run killed early: nothing to restore, so it stays
    run_folder.recover_run_dir(run_dir)
    assert (run_dir / "config.json").read_text() == "{}"


# -- config.json ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run 'r' of 3 epochs stopped after its first (last.pt at epoch 0), and its config.json's bytes."""

    class StopAfterFirstEpoch:
        def on_epoch_end(self, state, row):
            state.stop_training = True

    out = tmp_path_factory.mktemp("runs")
    model, config = _model()
    _coordinator(out).train(model, config, run_name="r", n_epochs=3, callbacks=[StopAfterFirstEpoch()], **RUN)
    return out / "r", (out / "r" / "config.json").read_text()


def _edit_config(run_dir: Path, original: str, edit: Callable[[dict], None]) -> None:
    saved = json.loads(original)
    edit(saved)
    (run_dir / "config.json").write_text(json.dumps(saved))


@pytest.mark.parametrize("section", ["settings", "data", "lifecycle"])
def test_resume_of_a_config_json_without_a_section_names_it(stopped_run, monkeypatch, section):
    run_dir, original = stopped_run
    monkeypatch.setattr(loop, "build_parts", lambda *a, **k: pytest.fail("setup started"))
    _edit_config(run_dir, original, lambda saved: saved.pop(section))
    model, config = _model()
    try:
        with pytest.raises(ValueError, match=rf"config.json lacks '{section}': it was edited or damaged"):
            _coordinator(run_dir.parent).resume_training(run_dir, model, config)
    finally:
        (run_dir / "config.json").write_text(original)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (dict(batch_size=8), "batch_size: 8 in config.json, 4 in last.pt"),
        (dict(learning_rate=0.5), "learning_rate: 0.5 in config.json, 0.003 in last.pt"),
        (dict(batch_size=8, learning_rate=0.5), "batch_size: 8 in config.json, 4 in last.pt, learning_rate: 0.5"),
    ],
)
def test_resume_of_an_edited_config_json_is_refused_naming_the_setting(stopped_run, monkeypatch, edit, named):
    run_dir, original = stopped_run
    monkeypatch.setattr(loop, "build_parts", lambda *a, **k: pytest.fail("setup started"))
    _edit_config(run_dir, original, lambda saved: saved["settings"].update(edit))
    model, config = _model()
    try:
        with pytest.raises(ValueError, match="no longer matches the run's checkpoints/last.pt") as raised:
            _coordinator(run_dir.parent).resume_training(run_dir, model, config)
        assert named in str(raised.value)
    finally:
        (run_dir / "config.json").write_text(original)


def test_an_edit_of_a_setting_that_may_change_still_resumes(stopped_run, tmp_path):
    run_dir, original = stopped_run
    copy = tmp_path / "runs" / "r"
    shutil.copytree(run_dir, copy)  # the fixture's run stays as it was
    _edit_config(copy, original, lambda saved: saved["settings"].update(progress=True, n_epochs=2))
    model, config = _model()
    resumed = _coordinator(copy.parent).resume_training(copy, model, config, progress=False)
    assert len(resumed["metrics_summary"]) == 2


def test_last_pt_carries_the_settings_it_was_trained_with(stopped_run):
    run_dir, original = stopped_run
    trained = run_folder.trained_settings(ckpt.load_checkpoint(run_dir / "checkpoints"))
    assert trained == json.loads(original)["settings"]


# -- the one resume rule -----------------------------------------------------------------


def test_resume_changes_allows_exactly_resume_may_change():
    recorded = {"learning_rate": 1e-3, "batch_size": 4, **dict.fromkeys(run_folder.RESUME_MAY_CHANGE, "before")}
    asked = {"learning_rate": 0.5, "batch_size": 4, **dict.fromkeys(run_folder.RESUME_MAY_CHANGE, "after")}
    assert run_folder.resume_changes(recorded, asked) == ["learning_rate"]
    assert run_folder.resume_changes(recorded, {"unknown": 1}) == []


def test_resume_training_takes_exactly_the_settings_that_may_change():
    params = set(inspect.signature(training_core.TrainingCoordinator.resume_training).parameters)
    settings = params - {"self", "run_dir_or_checkpoint", "model", "config", "train_data", "val_data", "callbacks"}
    assert settings == set(run_folder.RESUME_MAY_CHANGE)
    assert training_core.RESUME_MAY_CHANGE is run_folder.RESUME_MAY_CHANGE
