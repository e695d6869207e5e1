"""Tests for utils.tier3_hyperparameter_search: test_hyperparameter_search and its parts.

Every search is tiny: the conftest 2-layer, 32-wide GPT, 16-token rows of an 800-byte slice of the
built-in corpus (6 batches of 8 per epoch), a handful of trials. Optuna is the real one, with its
real SQLite storage under tmp_path. The library's test_* function is reached through the module
(``hps.test_hyperparameter_search``) so that pytest never collects it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from tiny_models import TINY

from utils import models
from utils import tier3_hyperparameter_search as hps

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = models.tiny_gpt(**TINY)[1]
# 800 bytes of corpus: 45 training rows of 16 tokens, 5 validation rows.
FAST = dict(seq_len=16, max_corpus_bytes=800, log_every=2, device="cpu", precision="fp32", progress=False)
RUN = {**FAST, "batch_size": 8}
SANE_LR, ABSURD_LR = [3e-3, 1e-2], [5.0, 50.0]  # 5.0 and 50.0 stay finite but end with losses of 10^2-10^5


class TinyFactory:
    """Builds the tiny GPT and counts its calls: once for the up-front check, then once per trial.

    ``nan_calls`` are calls whose model has NaN weights (its loss is NaN: the engine raises
    NonFiniteLossError); at ``raise_on_call`` it raises ``KeyboardInterrupt`` instead.
    """

    def __init__(self, nan_calls: tuple[int, ...] = (), raise_on_call: int | None = None) -> None:
        self.calls = 0
        self.nan_calls = nan_calls
        self.raise_on_call = raise_on_call
        self.verbosity_seen: list[int] = []

    def __call__(self) -> torch.nn.Module:
        self.calls += 1
        self.verbosity_seen.append(optuna.logging.get_verbosity())
        if self.calls == self.raise_on_call:
            raise KeyboardInterrupt
        model = models.tiny_gpt(**TINY)[0]
        if self.calls in self.nan_calls:
            with torch.no_grad():
                model.lm_head.weight.fill_(float("nan"))  # tied to the embedding: every logit is NaN
        return model


def _search(factory=None, **kwargs):
    return hps.test_hyperparameter_search(factory or TinyFactory(), CONFIG, **{**RUN, **kwargs})


@pytest.fixture(scope="module")
def pruned_search():
    """6 trials over sane and absurd learning rates, median pruner, seed 0 (one run, shared)."""
    return _search(n_trials=6, search_space={"learning_rate": SANE_LR + ABSURD_LR}, seed=0)


# -- pruning, results and figure ----------------------------------------------------------


def test_absurd_learning_rates_are_pruned_and_the_best_is_sane(pruned_search):
    trials = pruned_search["trials"]
    assert len(trials) == 6 and pruned_search["n_pruned"] >= 1
    assert (trials["state"] == "PRUNED").sum() == pruned_search["n_pruned"]
    assert pruned_search["best_params"]["learning_rate"] in SANE_LR
    pruned = trials[trials["state"] == "PRUNED"]
    # Pruned at an epoch end before the last (3 epochs), after reporting exactly the epochs it ran.
    assert (pruned["pruned_at_epoch"] < 2).all()
    assert (pruned["epochs_reported"] == pruned["pruned_at_epoch"] + 1).all()
    assert (trials.loc[trials["state"] == "COMPLETE", "epochs_reported"] == 3).all()


def test_results_are_data_with_the_best_trial_in_the_table(pruned_search):
    trials = pruned_search["trials"]
    assert isinstance(trials, pd.DataFrame)
    assert list(trials.columns) == [
        "number",
        "state",
        "value",
        "learning_rate",
        "epochs_reported",
        "pruned_at_epoch",
        "fail_reason",
        "duration_s",
    ]
    completed = trials[trials["state"] == "COMPLETE"]
    best_row = completed.loc[completed["value"].idxmin()]
    assert pruned_search["best_trial"] == best_row["number"]
    assert pruned_search["best_value"] == best_row["value"]
    assert math.isfinite(pruned_search["best_value"])
    assert pruned_search["study"].best_trial.number == pruned_search["best_trial"]
    assert pruned_search["parameters"] == sum(p.numel() for p in models.tiny_gpt(**TINY)[0].parameters())
    assert trials["fail_reason"].isna().all() and pruned_search["timed_out"] is False


def test_the_figure_shows_history_curves_with_pruned_marked_and_importances(pruned_search):
    fig = pruned_search["figure"]
    assert isinstance(fig, Figure)
    history, curves, importance = fig.axes
    assert [ax.get_title() for ax in fig.axes] == [
        "Optimisation history",
        "Validation loss per epoch",
        "Parameter importance",
    ]
    assert "pruned (last value)" in [t.get_text() for t in history.get_legend().get_texts()]
    dashed = [line for line in curves.lines if line.get_linestyle() == "--" and len(line.get_xdata())]
    assert len(dashed) == pruned_search["n_pruned"]  # one dashed curve per pruned trial
    n_completed = (pruned_search["trials"]["state"] == "COMPLETE").sum()
    if n_completed >= hps.IMPORTANCE_MIN_TRIALS:
        assert set(pruned_search["importances"]) == {"learning_rate"} and len(importance.patches) == 1
    else:
        assert pruned_search["importances"] is None and "importances need" in importance.texts[0].get_text()


# -- reproducibility, progress, logging ----------------------------------------------------


def test_the_same_seed_gives_the_same_trials_with_a_progress_bar_and_quiet_optuna(capsys):
    space = {"learning_rate": (1e-3, 3e-2, "log"), "weight_decay": (0.0, 0.1)}
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        factory = TinyFactory()
        first = _search(factory, n_trials=3, search_space=space, seed=1, pruner="none", progress=True)
        assert optuna.logging.get_verbosity() == optuna.logging.INFO  # restored after the search
    finally:
        optuna.logging.set_verbosity(previous)
    assert factory.verbosity_seen[1:] == [optuna.logging.WARNING] * 3  # quiet while the trials ran
    err = capsys.readouterr().err
    assert "hyperparameter search: 3/3 trials" in err and f"best={first['best_value']:.4f}" in err

    again = _search(n_trials=3, search_space=space, seed=1, pruner="none")
    other = _search(n_trials=3, search_space=space, seed=2, pruner="none")
    columns = ["learning_rate", "weight_decay"]
    pd.testing.assert_frame_equal(first["trials"][columns], again["trials"][columns])
    # Same params, same seed, same CPU: the losses are bit-for-bit equal.
    torch.testing.assert_close(first["trials"]["value"].tolist(), again["trials"]["value"].tolist(), rtol=0, atol=0)
    assert first["trials"]["learning_rate"].tolist() != other["trials"]["learning_rate"].tolist()


# -- failures and interruptions ---------------------------------------------------------------


def test_a_failed_trial_is_recorded_with_its_reason_and_the_search_goes_on():
    factory = TinyFactory(nan_calls=(3,))  # call 1 is the up-front check: trial 1 gets the NaN model
    with pytest.warns(UserWarning, match="NaN or Inf logits"):  # the engine's own warning, at setup
        results = _search(factory, n_trials=3, search_space={"learning_rate": (1e-3, 1e-2, "log")}, pruner="none")
    trials = results["trials"]
    assert trials["state"].tolist() == ["COMPLETE", "FAIL", "COMPLETE"] and results["n_failed"] == 1
    assert trials["fail_reason"][1].startswith("NonFiniteLossError: the training loss became nan")
    assert results["best_trial"] in (0, 2) and factory.calls == 4
    note = results["figure"].axes[2].texts[0].get_text()  # 2 completed: too few for importances
    assert results["importances"] is None and note.startswith("importances need 4 completed trials")


@pytest.mark.filterwarnings("ignore:the model returned NaN or Inf logits")
def test_when_every_trial_fails_there_is_no_best_and_a_warning_says_why():
    factory = TinyFactory(nan_calls=(2, 3))
    with pytest.warns(UserWarning, match=r"no trial of 2 completed.*NonFiniteLossError"):
        results = _search(factory, n_trials=2, search_space={"learning_rate": [1e-3]}, retrain_best=True)
    assert results["best_params"] is None and results["best_value"] is None and results["best_trial"] is None
    assert results["best_model"] is None and results["best_results"] is None
    assert results["trials"]["state"].tolist() == ["FAIL", "FAIL"]


def test_an_interrupt_fails_the_running_trial_and_the_search_can_resume(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    kwargs = dict(n_trials=3, search_space={"learning_rate": (1e-3, 1e-2, "log")}, pruner="none")
    with pytest.raises(KeyboardInterrupt):
        _search(TinyFactory(raise_on_call=3), storage=url, study_name="ctrl-c", **kwargs)
    stored = optuna.load_study(study_name="ctrl-c", storage=url).trials
    assert [t.state.name for t in stored] == ["COMPLETE", "FAIL"]
    assert stored[1].user_attrs["fail_reason"] == "interrupted (KeyboardInterrupt)"
    resumed = _search(storage=url, study_name="ctrl-c", **kwargs)
    assert resumed["trials"]["state"].tolist() == ["COMPLETE", "FAIL", "COMPLETE"]


KILLED_SEARCH = textwrap.dedent(
    """
    import os, signal, sys, torch
    sys.path[:0] = [{repo!r}, {tests!r}]
    from tiny_models import TINY
    from utils import models
    from utils import tier3_hyperparameter_search as hps

    calls = 0

    def factory():
        global calls
        calls += 1
        if calls == 4:  # the up-front check, trials 0 and 1, then trial 2's model: killed mid-trial
            os.kill(os.getpid(), signal.SIGKILL)
        return models.tiny_gpt(**TINY)[0]

    torch.set_num_threads(1)
    hps.test_hyperparameter_search(factory, models.tiny_gpt(**TINY)[1], storage=sys.argv[1], **{kwargs})
    """
)


def test_a_killed_search_resumes_where_it_stopped_and_ends_with_n_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    kwargs = dict(
        RUN, n_trials=5, study_name="killed", search_space={"learning_rate": (1e-3, 1e-2, "log")}, pruner="none"
    )
    script = tmp_path / "killed_search.py"
    script.write_text(KILLED_SEARCH.format(repo=str(REPO_ROOT), tests=str(REPO_ROOT / "tests"), kwargs=kwargs))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), url], env=env, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    before = optuna.load_study(study_name="killed", storage=url).trials
    assert [t.state.name for t in before] == ["COMPLETE", "COMPLETE", "RUNNING"]

    factory = TinyFactory()
    resumed = _search(factory, storage=url, **{k: v for k, v in kwargs.items() if k not in RUN})
    trials = resumed["trials"]
    assert len(resumed["study"].trials) == 5 and len(trials) == 5
    assert trials["state"].tolist() == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials["fail_reason"][2].startswith("interrupted: the search stopped during this trial")
    assert trials["value"][:2].tolist() == [t.value for t in before[:2]]  # kept, not re-run
    assert factory.calls == 1 + 2  # the up-front check and the two trials still missing

    again = _search(factory, storage=url, **{k: v for k, v in kwargs.items() if k not in RUN})
    assert len(again["trials"]) == 5 and factory.calls == 1 + 2 + 1  # already complete: no trial runs


# -- the full-budget retrain, timeout, the default space -------------------------------------


def test_retrain_best_trains_a_fresh_model_on_the_full_budget():
    factory = TinyFactory()
    # The default space, less batch_size (fixed), its warmup range cut to half the 3-step cap.
    results = _search(factory, n_trials=2, n_epochs=2, max_steps_per_trial=3, pruner="none", retrain_best=True)
    assert results["n_failed"] == 0 and "batch_size" not in results["trials"]
    assert set(results["best_params"]) == set(hps.DEFAULT_SEARCH_SPACE) - {"batch_size"}
    assert results["best_params"]["warmup_steps"] <= 1
    best = results["best_results"]
    assert len(best["metrics_summary"]) == 2 and best["optimizer_steps"] > 3  # both epochs, no step cap
    assert isinstance(best["figure"], Figure) and factory.calls == 1 + 2 + 1
    torch.manual_seed(0)  # the search seeds each model it builds with seed=0
    untrained = factory()
    trained = results["best_model"]
    assert isinstance(trained, torch.nn.Module)
    assert not torch.equal(trained.lm_head.weight, untrained.lm_head.weight)


def test_a_timeout_lets_the_running_trial_finish_then_stops():
    results = _search(n_trials=5, search_space={"learning_rate": [1e-3]}, timeout_s=1e-6)
    assert len(results["trials"]) == 1 and results["timed_out"] is True


def test_the_default_space_parses_with_integer_keywords_as_integers():
    space = hps.parse_search_space(hps.DEFAULT_SEARCH_SPACE)
    assert list(space) == list(hps.DEFAULT_SEARCH_SPACE)
    assert space["learning_rate"].log and not space["learning_rate"].integer
    assert space["warmup_steps"].integer and space["batch_size"].choices == (4, 8, 16)


# -- bad input, refused before any trial --------------------------------------------------------

BAD_INPUTS = [
    pytest.param(dict(model_factory=42), TypeError, "model_factory must be a function", id="factory-not-callable"),
    pytest.param(dict(model_factory=models.tiny_gpt(**TINY)[0]), TypeError, "builds a new model", id="factory-model"),
    pytest.param(dict(model_factory=lambda: "gpt"), TypeError, "must return a torch.nn.Module", id="returns-str"),
    pytest.param(dict(model_factory=lambda: models.tiny_gpt(**TINY)), TypeError, r"\[0\]", id="returns-tuple"),
    pytest.param(dict(n_trials=0), ValueError, "n_trials must be a positive integer", id="n_trials-0"),
    pytest.param(dict(n_epochs=0), ValueError, "n_epochs must be a positive integer", id="n_epochs-0"),
    pytest.param(dict(max_steps_per_trial=0), ValueError, "max_steps_per_trial must be", id="step-cap-0"),
    pytest.param(dict(timeout_s=-1), ValueError, "timeout_s must be a positive", id="timeout-negative"),
    pytest.param(dict(search_space={"dropout": [0.1]}), ValueError, r"unknown keyword\(s\) \['dropout'\]", id="key"),
    pytest.param(dict(search_space={}), ValueError, "non-empty dict", id="space-empty"),
    pytest.param(dict(search_space={"learning_rate": (1e-2, 1e-4)}), ValueError, "low < high", id="range-reversed"),
    pytest.param(dict(search_space={"learning_rate": (0.0, 1e-2, "log")}), ValueError, "low > 0", id="log-from-0"),
    pytest.param(dict(search_space={"learning_rate": (1e-4, 1e-2, "cubic")}), ValueError, "'log'", id="bad-scale"),
    pytest.param(dict(search_space={"learning_rate": (1e-4,)}), ValueError, r"\(low, high\)", id="range-short"),
    pytest.param(dict(search_space={"learning_rate": 1e-3}), ValueError, "list of choices", id="range-scalar"),
    pytest.param(dict(search_space={"learning_rate": ("1e-4", 1e-2)}), ValueError, "finite numbers", id="range-str"),
    pytest.param(dict(search_space={"batch_size": []}), ValueError, "at least one choice", id="choices-empty"),
    pytest.param(dict(search_space={"batch_size": (2.5, 8)}), ValueError, "integer bounds", id="int-range"),
    pytest.param(dict(search_space={"batch_size": [0, 4]}), ValueError, "batch_size must be a positive", id="choice"),
    pytest.param(dict(pruner="average"), ValueError, "pruner must be 'median', 'none'", id="pruner-name"),
    pytest.param(
        dict(storage="sqlite:////nonexistent-dir/x.db", study_name="s"), ValueError, "cannot be opened", id="storage"
    ),
    pytest.param(dict(storage="sqlite:///x.db"), ValueError, "needs study_name", id="storage-without-name"),
    pytest.param(dict(foo=1), TypeError, r"unknown option\(s\) \['foo'\]", id="unknown-option"),
    pytest.param(dict(max_steps=5), ValueError, "use max_steps_per_trial", id="reserved-option"),
    pytest.param(dict(seq_len=0), ValueError, "seq_len must be a positive integer", id="bad-option-value"),
    pytest.param(dict(device="tpu"), ValueError, "device='tpu'", id="device"),
    pytest.param(
        dict(search_space={"learning_rate": [1e-3]}, learning_rate=1e-3), ValueError, "both searched", id="both"
    ),
]


@pytest.mark.parametrize("overrides, error, match", BAD_INPUTS)
def test_bad_input_is_refused_before_any_trial(overrides, error, match):
    factory = TinyFactory()
    kwargs = {"model_factory": factory, "config": CONFIG, "n_trials": 2, **FAST, **overrides}
    with pytest.raises(error, match=match):
        hps.test_hyperparameter_search(**kwargs)
    assert factory.calls <= 1  # at most the up-front check: no trial built a model


def test_a_stored_study_of_that_name_that_maximises_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(storage=url, study_name="accuracy", direction="maximize")
    factory = TinyFactory()
    with pytest.raises(ValueError, match="study_name='accuracy' in this storage maximises"):
        _search(factory, storage=url, study_name="accuracy", search_space={"learning_rate": [1e-3]})
    assert factory.calls <= 1 and optuna.load_study(study_name="accuracy", storage=url).trials == []


def test_a_storage_whose_driver_is_missing_is_refused_before_any_trial(monkeypatch):
    """A postgresql:// URL without its driver: a clear ImportError up front, no server contacted, no model built."""
    if importlib.util.find_spec("psycopg") or importlib.util.find_spec("psycopg2"):
        pytest.skip("a PostgreSQL driver is installed here")
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("the test tried to reach a server")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    factory = TinyFactory()
    with pytest.raises(ImportError) as caught:
        _search(factory, storage="postgresql://user:secret@host/db", study_name="s", n_trials=2)
    message = str(caught.value)
    assert "storage='postgresql://user:***@host/db' needs the database driver 'psycopg" in message
    assert re.search(r"`pip install '?psycopg", message) and "storage=None" in message
    assert "secret" not in message
    assert factory.calls == 0 and attempts == []


def test_without_optuna_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    factory = TinyFactory()
    with pytest.raises(ImportError, match=r"needs the 'optuna' package; install it with `pip install optuna`"):
        hps.test_hyperparameter_search(factory, CONFIG)
    assert factory.calls == 0  # refused before anything else


def test_importing_the_module_loads_no_heavy_dependency():
    """Tier 3 re-exports it and must stay light: optuna, pandas and matplotlib load when a search runs."""
    heavy = ["optuna", "pandas", "matplotlib"]
    code = f"import sys, utils.tier3_hyperparameter_search; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_library_function_is_not_collected_as_a_test():
    assert hps.test_hyperparameter_search.__test__ is False


def test_a_storage_error_masks_the_password_and_keeps_one_line():
    from utils.tier3_hyperparameter_search import mask_password

    assert mask_password("postgresql://bob:s3cret@db.local/optuna") == "postgresql://bob:***@db.local/optuna"
    assert mask_password("sqlite:///search.db") == "sqlite:///search.db"
