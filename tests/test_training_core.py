"""Tests for utils.training.training_core: TrainingCoordinator, train_model and the run folder.

The coordinator is a thin shell over the engine, so these tests check what it
adds: the run folder and what it holds, resume by name (after a real kill -9),
early stopping through it, and bad input refused before anything is written.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tiny_models import cpu_coordinator, lifecycle_model

from utils import tier3_training_utilities as tier3
from utils.training import checkpoint as ckpt
from utils.training import loop
from utils.training import training_core as tc

REPO_ROOT = Path(__file__).resolve().parents[1]
# Built-in corpus, 16-token rows, 4 steps per epoch: a few seconds per run on CPU.
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
EARLY = dict(n_epochs=6, early_stopping_patience=2, early_stopping_min_delta=100.0)  # stops after epoch 2

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest


_model = lifecycle_model


_coordinator = cpu_coordinator


def test_train_makes_a_run_folder_with_everything_a_run_leaves(tmp_path):
    model, config = _model()
    results = _coordinator(tmp_path).train(model, config, run_name="first", n_epochs=2, **RUN)
    run_dir = tmp_path / "first"
    assert results["run_dir"] == str(run_dir) and results["model"] is model and results["config"] is config
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoints",
        "config.json",
        "metrics.csv",
        "results.json",
        "steps.csv",
        "tokenizer.json",  # the run's tokenizer (here the bytes one), beside its weights
        "training_curves.png",
    ]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["settings"]["n_epochs"] == 2 and saved["settings"]["learning_rate"] == 3e-3
    assert saved["settings"]["use_amp"] is False and saved["settings"]["precision"] == "fp32"
    assert saved["data"]["train_data"] == "python-stdlib" and saved["model"]["config"]["d_model"] == 32
    assert results["best_checkpoint_path"] == str(run_dir / "checkpoints" / "best.pt")
    assert results["best_value"] == min(results["metrics_summary"]["val/loss"]) and results["best_loaded"] is True
    assert results["stopped_early"] is False
    written = json.loads((run_dir / "results.json").read_text())
    assert written["val_loss"] == pytest.approx(results["val_loss"]) and written["run_dir"] == str(run_dir)
    assert (run_dir / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs


def test_train_takes_exactly_test_fine_tunings_keywords_plus_the_lifecycle_ones():
    facade = set(inspect.signature(tier3.test_fine_tuning).parameters) - {"checkpoint_dir", "resume_from"}
    lifecycle = {"run_name", "early_stopping_patience", "early_stopping_min_delta", "resume", "overwrite"}
    train = set(inspect.signature(tc.TrainingCoordinator.train).parameters) - {"self"}
    assert train == facade | lifecycle


def test_an_existing_run_needs_resume_or_overwrite_and_overwrite_replaces_it(tmp_path):
    model, config = _model()
    coordinator = _coordinator(tmp_path)
    coordinator.train(model, config, run_name="r", n_epochs=1, **RUN)
    (tmp_path / "r" / "note.txt").write_text("old run")
    with pytest.raises(ValueError, match=r"run_name='r': .* already exists; pass resume=True .* overwrite=True"):
        coordinator.train(model, config, run_name="r", n_epochs=1, **RUN)
    coordinator.train(model, config, run_name="r", n_epochs=1, overwrite=True, **RUN)
    assert not (tmp_path / "r" / "note.txt").exists() and (tmp_path / "r" / "checkpoints" / "last.pt").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no leftovers of the old folder


def test_a_failed_overwrite_before_any_checkpoint_puts_the_old_run_back(tmp_path):
    model, config = _model()
    coordinator = _coordinator(tmp_path)
    coordinator.train(model, config, run_name="r", n_epochs=1, **RUN)
    before = sorted(p.name for p in (tmp_path / "r").rglob("*"))
    with pytest.raises(TypeError, match="train_data has unsupported type"):
        coordinator.train(model, config, 7, run_name="r", n_epochs=1, overwrite=True, **RUN)
    assert sorted(p.name for p in (tmp_path / "r").rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


def test_a_new_run_that_fails_before_any_checkpoint_leaves_no_folder(tmp_path):
    model, config = _model()
    with pytest.raises(TypeError, match="train_data has unsupported type"):
        _coordinator(tmp_path).train(model, config, 7, run_name="broken", **RUN)
    assert not (tmp_path / "broken").exists()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(run_name="a/b"), ValueError, "run_name must be a folder name"),
        (dict(run_name=".."), ValueError, "run_name must be a folder name"),
        (dict(run_name="a\n"), ValueError, "run_name must be a folder name"),
        (dict(run_name="none", resume=True), ValueError, r"resume=True, but .* holds no checkpoint to resume"),
        (dict(resume=True), ValueError, "resume=True needs the run_name"),
        (dict(run_name="x", resume=True, overwrite=True), ValueError, "contradict each other"),
        (dict(early_stopping_patience=0), ValueError, "early_stopping_patience must be a positive integer"),
        (dict(early_stopping_min_delta=-1.0), ValueError, "early_stopping_min_delta must be a non-negative"),
        (dict(learning_rate=True), ValueError, "learning_rate must be a positive finite number"),
        (dict(monitor="val/bleu"), ValueError, "monitor must be one of"),
        (dict(resume="yes", run_name="x"), ValueError, "resume must be True or False"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, monkeypatch, kwargs, error, match):
    monkeypatch.setattr(loop, "build_parts", lambda *a, **k: pytest.fail("setup started"))
    model, config = _model()
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        _coordinator(out).train(model, config, **{**RUN, **kwargs})
    assert not out.exists()


def test_an_output_dir_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="output_dir=.*is a file"):
        tc.TrainingCoordinator(output_dir=tmp_path / "file" / "runs")
    with pytest.raises(ValueError, match="precision must be one of"):
        tc.TrainingCoordinator(output_dir=tmp_path, precision="fp8")


def test_resume_with_changed_settings_is_refused_as_not_exact(tmp_path):
    model, config = _model()
    coordinator = _coordinator(tmp_path)
    coordinator.train(model, config, run_name="r", n_epochs=3, callbacks=[StopAfterFirstEpoch()], **RUN)
    with pytest.raises(ValueError, match=r"settings that differ from run 'r' \(learning_rate: 0.003 -> 0.01\)"):
        coordinator.train(model, config, run_name="r", n_epochs=3, resume=True, **{**RUN, "learning_rate": 1e-2})


class StopAfterFirstEpoch:
    def on_epoch_end(self, state, row):
        state.stop_training = True


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys, torch
    sys.path[:0] = [{repo!r}, {tests!r}]
    from tiny_models import TINY
    from utils import models
    from utils.training.training_core import TrainingCoordinator

    class KillAtEpoch2:
        def on_epoch_end(self, state, row):
            if state.epoch == 2:  # epoch 1's last.pt is on disk; epoch 2's is not
                os.kill(os.getpid(), signal.SIGKILL)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, config = models.tiny_gpt(**{{**TINY, "max_seq_len": 16}})
    coordinator = TrainingCoordinator(output_dir=sys.argv[1], device="cpu", progress=False)
    coordinator.train(model, config, run_name="es", callbacks=[KillAtEpoch2()], **{early}, **{run})
    """
)


def test_an_early_stopped_run_killed_and_resumed_ends_as_one_that_never_stopped(tmp_path):
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN.format(repo=str(REPO_ROOT), tests=str(REPO_ROOT / "tests"), early=EARLY, run=RUN))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "killed")], env=env, capture_output=True, timeout=300
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    saved = ckpt.load_checkpoint(tmp_path / "killed" / "es" / "checkpoints")
    assert saved["epoch"] == 1 and saved["callbacks"]["EarlyStopping"]["wait"] == 1  # patience half used

    straight_model, config = _model()
    straight = _coordinator(tmp_path / "straight").train(straight_model, config, run_name="es", **EARLY, **RUN)
    assert straight["stopped_early"] is True and len(straight["metrics_summary"]) == 3  # epochs 0, 1, 2

    fresh, _ = _model(seed=7)  # other initial weights: everything must come from the checkpoint
    resumed = _coordinator(tmp_path / "killed").resume_training(tmp_path / "killed" / "es", fresh, config)
    assert resumed["stopped_early"] is True and len(resumed["metrics_summary"]) == 3
    assert resumed["loss_history"] == straight["loss_history"]
    assert resumed["best_value"] == straight["best_value"] and resumed["best_epoch"] == straight["best_epoch"]
    for name, tensor in fresh.state_dict().items():  # load_best: both end on the best epoch's weights
        torch.testing.assert_close(tensor, straight_model.state_dict()[name], rtol=0, atol=0)


def test_resume_training_accepts_the_checkpoint_path_and_needs_user_data_back(tmp_path):
    model, config = _model()
    coordinator = _coordinator(tmp_path)
    data = torch.randint(0, 256, (16, 16), generator=torch.Generator().manual_seed(0))
    coordinator.train(model, config, data, run_name="mine", n_epochs=3, callbacks=[StopAfterFirstEpoch()], **RUN)
    with pytest.raises(ValueError, match="trained on your own data .*pass the same train_data"):
        coordinator.resume_training(tmp_path / "mine" / "checkpoints" / "last.pt", model, config)
    resumed = coordinator.resume_training(tmp_path / "mine" / "checkpoints" / "last.pt", model, config, train_data=data)
    assert len(resumed["metrics_summary"]) == 3
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        coordinator.resume_training(tmp_path, model, config)


def test_quick_train_checks_the_wiring_on_the_built_in_corpus(tmp_path):
    model, config = _model()
    results = _coordinator(tmp_path).quick_train(model, config, precision="fp32")
    assert results["data_source"] == "python-stdlib" and results["optimizer_steps"] == tc.QUICK_TRAIN["max_steps"]
    assert Path(results["run_dir"]).name.startswith("quick-")


def test_train_model_is_a_default_coordinators_train(tmp_path):
    model, config = _model()
    results = tc.train_model(model, config, output_dir=tmp_path, run_name="m", n_epochs=1, device="cpu", **RUN)
    assert results["run_dir"] == str(tmp_path / "m") and results["optimizer_steps"] == 4


def test_use_amp_defaults_to_mixed_precision_under_auto(tmp_path, cpu_bf16):
    cpu_bf16(True)
    model, config = _model()
    options = {**RUN, "precision": None, "max_steps": 2}
    results = _coordinator(tmp_path).train(model, config, run_name="amp", n_epochs=1, **options)
    assert results["precision"] == "bf16"
    plain = _coordinator(tmp_path).train(copy.deepcopy(model), config, run_name="fp32", use_amp=False, **options)
    assert plain["precision"] == "fp32"


def test_export_of_a_run_defaults_to_its_folder_and_reloads_exactly(tmp_path):
    from utils.training.export import load_exported_weights

    model, config = _model()
    coordinator = _coordinator(tmp_path)
    results = coordinator.train(model, config, run_name="r", n_epochs=1, **RUN)
    export = coordinator.export_state_dict(results)
    assert Path(export["export_dir"]) == tmp_path / "r" / "export"
    assert export["parity"]["status"] == "ok", export["parity"]
    fresh, _ = _model(seed=9)
    load_exported_weights(fresh, export["export_dir"])
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], tensor, rtol=0, atol=0)
    with pytest.raises(ValueError, match="output_dir is needed"):
        coordinator.export_state_dict(model)
