"""The trials of a hyperparameter search: run each through the engine, then read them back as data.

Each trial draws its settings from the search space, trains a fresh model through
``utils.training.loop.train`` and reports the validation loss at every epoch end to
optuna (``EpochReporter``), so a pruner can stop it early. A trial that fails is recorded
with its reason and the search goes on. ``collect_results`` and ``trials_table`` turn the
study into the search's results.

Example:
    >>> timed_out = run_trials(optuna, study, plan, n_trials=10, timeout_s=None, progress=True)
    >>> trials_table(study.trials)
"""

from __future__ import annotations

import gc
import math
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from utils.progress import progress_bar
from utils.search.figure import create_search_figure
from utils.search.space import SearchDimension
from utils.search.study import finished_trials
from utils.training import loop

if TYPE_CHECKING:  # pandas loads when a search runs, never on import
    import pandas as pd

IMPORTANCE_MIN_TRIALS = 4  # completed trials before parameter importances mean anything
FAIL_REASON_ATTR = "fail_reason"
PRUNED_AT_ATTR = "pruned_at_epoch"
INTERRUPTED_REASON = "interrupted: the search stopped during this trial; it was marked failed when the search resumed"


@dataclass(frozen=True)
class SearchPlan:
    """What every trial shares: how to build the model, its data, the searched space and the fixed settings."""

    model_factory: Callable[[], nn.Module]
    config: Any
    train_data: Any
    val_data: Any
    space: dict[str, SearchDimension]
    settings: loop.TrainingSettings  # per-trial settings before the drawn params (progress off, step cap on)
    seed: int
    device: torch.device


def run_trials(
    optuna: types.ModuleType, study: Any, plan: SearchPlan, n_trials: int, timeout_s: float | None, progress: bool
) -> bool:
    """Run trials until the study holds ``n_trials`` finished ones; True when the timeout stopped it."""
    done = len(finished_trials(optuna, study))
    bar = progress_bar(
        total=n_trials, initial=min(done, n_trials), desc="hyperparameter search", unit="trial", enabled=progress
    )
    start_s = time.perf_counter()
    try:
        for _ in range(n_trials - done):
            _run_trial(optuna, study, plan)
            bar.update(1)
            bar.set_postfix(**_progress_postfix(optuna, study), refresh=False)
            if timeout_s is not None and time.perf_counter() - start_s >= timeout_s:
                return len(finished_trials(optuna, study)) < n_trials
    finally:
        bar.close()
    return False


def _progress_postfix(optuna: types.ModuleType, study: Any) -> dict[str, str]:
    trials = finished_trials(optuna, study)
    values = [t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in trials)
    best = f"{min(values):.4f}" if values else "none yet"
    return {"best": best, "pruned": str(pruned), "failed": str(failed)}


def _run_trial(optuna: types.ModuleType, study: Any, plan: SearchPlan) -> None:
    """Ask for a trial, train it, and tell the study how it ended: complete, pruned, or failed with its reason."""
    states = optuna.trial.TrialState
    trial = study.ask()
    try:
        value = _train_trial(optuna, trial, plan)
    except optuna.TrialPruned:
        study.tell(trial, state=states.PRUNED)
    except Exception as err:  # a NaN loss, CUDA out of memory, a bad combination: this trial fails, the search goes on
        trial.set_user_attr(FAIL_REASON_ATTR, f"{type(err).__name__}: {err}")
        study.tell(trial, state=states.FAIL)
    except KeyboardInterrupt:
        trial.set_user_attr(FAIL_REASON_ATTR, "interrupted (KeyboardInterrupt)")
        study.tell(trial, state=states.FAIL)
        raise
    else:
        study.tell(trial, value)
    finally:
        # The exception (and the frames holding the model) is gone by now, so its memory can be returned.
        _free_memory(plan.device)


def _train_trial(optuna: types.ModuleType, trial: Any, plan: SearchPlan) -> float:
    """One real training run with the trial's params; its final validation loss."""
    params = {name: dimension.suggest(trial) for name, dimension in plan.space.items()}
    settings = plan.settings.replace(**params)
    reporter = EpochReporter(trial, settings)
    loop.seed_everything(plan.seed)  # every trial starts from the same initial weights
    results = loop.train(
        plan.model_factory(), plan.config, settings, plan.train_data, plan.val_data, callbacks=[reporter]
    )
    if reporter.pruned_at_epoch is not None:
        trial.set_user_attr(PRUNED_AT_ATTR, reporter.pruned_at_epoch)
        raise optuna.TrialPruned(f"pruned after epoch {reporter.pruned_at_epoch}")
    value = results["val_loss"]
    if value is None or not math.isfinite(value):
        raise loop.NonFiniteLossError(f"the final validation loss is {value}")
    return float(value)


class EpochReporter:
    """Engine callback: report each epoch's validation loss to the trial, and stop training when it is pruned."""

    def __init__(self, trial: Any, settings: loop.TrainingSettings) -> None:
        self.trial = trial
        self.settings = settings
        self.pruned_at_epoch: int | None = None

    def on_epoch_end(self, state: loop.TrainingState, row: dict[str, Any]) -> None:
        self.trial.report(row["val/loss"], step=state.epoch)
        max_steps = self.settings.max_steps
        last_epoch = state.epoch == self.settings.n_epochs - 1 or (
            max_steps is not None and state.optimizer_step >= max_steps
        )
        # A trial that has run its whole budget keeps its value: pruning it then saves nothing.
        if not last_epoch and self.trial.should_prune():
            self.pruned_at_epoch = state.epoch
            state.stop_training = True


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def collect_results(optuna: types.ModuleType, study: Any, n_parameters: int, timed_out: bool) -> dict[str, Any]:
    """The search's results from its study: the best trial, the trials table, importances and the figure."""
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    completed = [t for t in trials if t.state == states.COMPLETE]
    best = min(completed, key=lambda t: t.value) if completed else None
    if best is None:
        _warn_nothing_completed(trials)
    importances, note = _param_importances(optuna, study, len(completed))
    title = f"Hyperparameter search: {len(trials)} trials, {n_parameters:,}-parameter model"
    return {
        "best_params": dict(best.params) if best else None,
        "best_value": best.value if best else None,
        "best_trial": best.number if best else None,
        "trials": trials_table(trials),
        "importances": importances,
        "figure": create_search_figure(trials, importances, importance_note=note, title=title),
        "study": study,
        "n_pruned": sum(t.state == states.PRUNED for t in trials),
        "n_failed": sum(t.state == states.FAIL for t in trials),
        "timed_out": timed_out,
        "parameters": n_parameters,
    }


def _warn_nothing_completed(trials: Sequence[Any]) -> None:
    reasons = sorted({_fail_reason(t) for t in trials if t.state.name == "FAIL"} - {None})
    warnings.warn(
        f"no trial of {len(trials)} completed, so there are no best params; failure reasons: {reasons[:3]} "
        "(all in results['trials']['fail_reason'])",
        stacklevel=4,  # the caller of test_hyperparameter_search
    )


def _param_importances(optuna: types.ModuleType, study: Any, n_completed: int) -> tuple[dict | None, str]:
    """optuna's parameter importances, or None and a note saying why not."""
    if n_completed < IMPORTANCE_MIN_TRIALS:
        return None, f"importances need {IMPORTANCE_MIN_TRIALS} completed trials; {n_completed} completed"
    try:
        with warnings.catch_warnings():  # its small-sample heuristics warn on every short search
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study)), ""
    except (ValueError, RuntimeError) as err:  # e.g. every completed trial drew the same params
        return None, f"importances unavailable: {err}"


def _fail_reason(trial: Any) -> str | None:
    if trial.state.name != "FAIL":
        return None
    return trial.user_attrs.get(FAIL_REASON_ATTR, INTERRUPTED_REASON)


def trials_table(trials: Sequence[Any]) -> pd.DataFrame:
    """The trials as a DataFrame, one row each.

    Columns: number, state, value (a pruned trial's is its last reported validation loss), one per
    param, epochs_reported, pruned_at_epoch, fail_reason (a failed trial's error, or 'interrupted: ...'
    for one a killed search left running) and duration_s.
    """
    import pandas as pd

    param_names = list(dict.fromkeys(name for t in trials for name in t.params))
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            **{name: t.params.get(name) for name in param_names},
            "epochs_reported": len(t.intermediate_values),
            PRUNED_AT_ATTR: t.user_attrs.get(PRUNED_AT_ATTR),
            FAIL_REASON_ATTR: _fail_reason(t),
            "duration_s": t.duration.total_seconds() if t.duration is not None else None,
        }
        for t in trials
    ]
    columns = ["number", "state", "value", *param_names, "epochs_reported", PRUNED_AT_ATTR, FAIL_REASON_ATTR]
    return pd.DataFrame(rows, columns=[*columns, "duration_s"])
