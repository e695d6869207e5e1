"""Tier 3: which training settings work best? ``test_hyperparameter_search``, an optuna search over the engine.

Each trial trains a fresh model from ``model_factory()`` through the training
engine (``utils.training.loop.train``) with settings drawn from the search
space, and scores it by its validation loss. The validation loss at each epoch
end is reported to optuna through the engine's callback hooks, so a pruner can
stop a poor trial early. Only optuna's core API is used (a seeded
``TPESampler``, its pruners, its storages and ``get_param_importances``), and
optuna is imported only when a search runs.

The search space names ``test_fine_tuning`` keywords. Each entry is one of:

- ``(low, high)``: a uniform range (integers for ``batch_size``,
  ``warmup_steps`` and ``gradient_accumulation_steps``, floats otherwise);
- ``(low, high, 'log')``: the same on a log scale (``low`` > 0);
- ``[a, b, c]``: a list of choices (``None`` is a valid choice for ``grad_clip``).

Example:
    >>> from utils.models import tiny_gpt
    >>> from utils.tier3_hyperparameter_search import test_hyperparameter_search
    >>> _, config = tiny_gpt()
    >>> search = test_hyperparameter_search(lambda: tiny_gpt()[0], config, n_trials=10)
    >>> search["best_params"], search["trials"]          # a dict, and a DataFrame, one row per trial
    >>> search = test_hyperparameter_search(
    ...     lambda: tiny_gpt()[0], config, n_trials=20,
    ...     search_space={"learning_rate": (1e-4, 1e-2, "log"), "batch_size": [4, 8]},
    ...     storage="sqlite:///search.db", study_name="tiny-gpt",  # run again to resume after a crash
    ... )
"""

from __future__ import annotations

import dataclasses
import gc
import math
import re
import time
import types
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from utils.checks import check_bool, check_int, check_positive_int, check_positive_number, check_str, is_int, is_number
from utils.device import resolve_device
from utils.model_helpers import count_parameters
from utils.optional import import_optional
from utils.progress import progress_bar
from utils.training import loop
from utils.training.plots import create_training_figure

if TYPE_CHECKING:  # pandas, matplotlib and optuna load when a search runs, never on import
    import optuna
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Sized for the built-in tiny GPT on a 2-core CPU: 10 trials take a minute or two.
DEFAULT_SEARCH_SPACE: dict[str, tuple | list] = {
    "learning_rate": (1e-5, 1e-2, "log"),
    "weight_decay": (0.0, 0.1),
    "warmup_steps": (0, 10),
    "batch_size": [4, 8, 16],
    "grad_clip": (0.5, 2.0),
    "gradient_accumulation_steps": [1, 2],
}
INTEGER_KEYWORDS = frozenset({"warmup_steps", "batch_size", "gradient_accumulation_steps"})
# Training options whose search defaults differ from test_fine_tuning's. A small corpus keeps every epoch
# short, so the pruner sees each one; the whole validation set (no batch cap) keeps the objective the same
# text for every trial, whatever batch size it draws.
SEARCH_OPTION_DEFAULTS: dict[str, Any] = {"max_corpus_bytes": 32_000, "max_val_batches": None}
# TrainingSettings fields a search sets itself, and what to do instead.
RESERVED_OPTIONS = {
    "max_steps": "use max_steps_per_trial= (retrain_best trains without it)",
    "checkpoint_dir": "trials are not checkpointed; train the best params with test_fine_tuning(checkpoint_dir=...)",
    "resume_from": "a search resumes through storage= and study_name=, not a checkpoint",
    "load_best": "trials are not checkpointed; train the best params with test_fine_tuning(load_best=True)",
    "monitor": "the search minimises the validation loss ('val/loss')",
    "mode": "the search minimises the validation loss ('val/loss')",
}
# The median pruner compares a trial with the finished ones; optuna's default of 5 leaves a
# 10-trial search almost nothing to prune.
MEDIAN_PRUNER_STARTUP_TRIALS = 2
IMPORTANCE_MIN_TRIALS = 4  # completed trials before parameter importances mean anything
FAIL_REASON_ATTR = "fail_reason"
PRUNED_AT_ATTR = "pruned_at_epoch"
INTERRUPTED_REASON = "interrupted: the search stopped during this trial; it was marked failed when the search resumed"

__all__ = [
    "DEFAULT_SEARCH_SPACE",
    "create_search_figure",
    "import_optuna",
    "parse_search_space",
    "test_hyperparameter_search",
    "trials_table",
]


@dataclass(frozen=True)
class SearchDimension:
    """One searched keyword: a float or integer range (log scale or not), or a list of choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)


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


def test_hyperparameter_search(
    model_factory: Callable[[], nn.Module],
    config: Any,
    train_data: Any = None,
    n_trials: int = 10,
    search_space: Mapping[str, tuple | list] | None = None,
    *,
    val_data: Any = None,
    n_epochs: int = 3,
    max_steps_per_trial: int | None = 200,
    seed: int = 0,
    pruner: str | Any = "median",
    timeout_s: float | None = None,
    storage: str | Any | None = None,
    study_name: str | None = None,
    device: str | torch.device | None = "auto",
    precision: str = "auto",
    retrain_best: bool = False,
    progress: bool = True,
    **training_options: Any,
) -> dict[str, Any]:
    """Search ``test_fine_tuning``'s training keywords for the lowest validation loss, with optuna.

    Args:
        model_factory: a function that returns a new ``nn.Module`` each call, e.g. ``lambda: tiny_gpt()[0]``.
            It is called once up front (to check it and size the model), then once per trial, after
            seeding, so every trial starts from the same initial weights.
        config: the model's config, as for ``test_fine_tuning``.
        train_data, val_data: as for ``test_fine_tuning``. None trains on the built-in corpus, capped by
            ``max_corpus_bytes`` (32 kB in a search), with its tail held out for validation.
        n_trials: trials the study should hold when the search ends, counting finished, pruned and
            failed trials already stored under ``storage``/``study_name``.
        search_space: ``{keyword: spec}`` over ``learning_rate``, ``weight_decay``, ``warmup_steps``,
            ``batch_size``, ``grad_clip`` and ``gradient_accumulation_steps``, where spec is
            ``(low, high)``, ``(low, high, 'log')`` or a list of choices. Only the keywords named are
            searched. None searches ``DEFAULT_SEARCH_SPACE``, less any keyword fixed in ``training_options``.
        n_epochs: epochs per trial; the validation loss at each epoch end goes to the pruner.
        max_steps_per_trial: cap on one trial's optimizer steps (None: no cap). Keep an epoch under
            ``max_steps_per_trial / n_epochs`` steps, or the pruner sees fewer epochs.
        seed: seeds the sampler (``TPESampler(seed=seed)``) and every trial's training: the same seed
            gives the same trials on CPU.
        pruner: 'median' (``MedianPruner`` after 2 completed trials), 'none', or an optuna pruner.
        timeout_s: start no new trial after this many seconds (the running one finishes).
        storage: an optuna storage URL (``'sqlite:///search.db'``) or storage object, to keep the study
            and resume it: run the same call again after a crash. Needs ``study_name``. One search per
            study at a time: a resumed search marks trials left running as failed (interrupted).
        study_name: the study's name in ``storage``.
        device, precision: as for ``test_fine_tuning``.
        retrain_best: then train a fresh model with the best params for ``n_epochs`` without the
            per-trial step cap, and return it as ``best_model`` with ``best_results``.
        progress: show a progress bar over trials, with the best value so far.
        **training_options: other ``test_fine_tuning`` keywords, fixed for every trial (``seq_len``,
            ``log_every``, ``max_corpus_bytes``, ``max_val_batches``, ``use_amp``, or a searchable keyword
            to hold it fixed). A search's own defaults: ``max_corpus_bytes=32_000`` (short epochs) and
            ``max_val_batches=None`` (the whole validation set, so every batch size is scored on the
            same text). An unknown option is a TypeError.

    Returns:
        A dict: ``best_params``, ``best_value`` (validation loss) and ``best_trial`` (its number; all None
        when no trial completed), ``trials`` (``trials_table``: one row per trial with its state, value,
        params, ``pruned_at_epoch`` and ``fail_reason``), ``importances`` (None with too few completed
        trials), ``figure`` (``create_search_figure``), ``study`` (the optuna study), ``n_pruned``,
        ``n_failed``, ``timed_out``, ``parameters`` (the model's size), and with ``retrain_best``,
        ``best_model`` and ``best_results`` (``test_fine_tuning``'s results, with its figure).

    Raises:
        ImportError: optuna is not installed.
        TypeError, ValueError: on a bad argument, a bad search space, an unknown training option or a
            storage that cannot be opened, before any trial runs. A trial that fails (a NaN loss, CUDA
            out of memory) is recorded as failed with its reason, and the search goes on.
    """
    optuna = import_optuna()
    _check_search_args(n_trials, max_steps_per_trial, timeout_s, storage, study_name, retrain_best, progress)
    settings = _base_settings(training_options, n_epochs, max_steps_per_trial, seed, device, precision)
    space = _resolve_space(search_space, training_options, settings)
    chosen_pruner = _resolve_pruner(optuna, pruner)
    n_parameters = _check_model_factory(model_factory)
    plan = SearchPlan(
        model_factory, config, train_data, val_data, space, settings, seed, resolve_device(settings.device)
    )
    with _quiet_optuna_logging(optuna):
        study = _open_study(optuna, storage, study_name, seed, chosen_pruner)
        _fail_interrupted_trials(optuna, study)
        timed_out = _run_trials(optuna, study, plan, n_trials, timeout_s, progress)
        results = _collect_results(optuna, study, n_parameters, timed_out)
    if retrain_best and results["best_params"] is not None:
        results["best_model"], results["best_results"] = _retrain_best(plan, results["best_params"], progress)
    elif retrain_best:
        results["best_model"] = results["best_results"] = None
    return results


test_hyperparameter_search.__test__ = False  # a library function, not a pytest test


def import_optuna() -> types.ModuleType:
    """The ``optuna`` module, or an ImportError that says how to install it."""
    return import_optional("optuna", "test_hyperparameter_search")


# -- checks, before any trial ---------------------------------------------------


def _check_search_args(
    n_trials: Any,
    max_steps_per_trial: Any,
    timeout_s: Any,
    storage: Any,
    study_name: Any,
    retrain_best: Any,
    progress: Any,
) -> None:
    """The search's own arguments; the training ones are checked by ``TrainingSettings``."""
    check_positive_int(n_trials, "n_trials")
    check_positive_int(max_steps_per_trial, "max_steps_per_trial", allow_none=True)
    check_positive_number(timeout_s, "timeout_s", allow_none=True)
    check_str(study_name, "study_name", allow_none=True)
    check_bool(retrain_best, "retrain_best")
    check_bool(progress, "progress")
    if isinstance(storage, str) and not storage.strip():
        raise ValueError("storage must be a database URL such as 'sqlite:///search.db', or None, got ''")
    if storage is not None and study_name is None:
        raise ValueError(
            "storage= needs study_name= too, the name to resume the search by; pass e.g. study_name='my-search'"
        )


def _base_settings(
    training_options: dict[str, Any],
    n_epochs: int,
    max_steps_per_trial: int | None,
    seed: int,
    device: Any,
    precision: str,
) -> loop.TrainingSettings:
    """Every trial's settings before its drawn params: the training options over the search's defaults."""
    check_positive_int(n_epochs, "n_epochs")
    check_int(seed, "seed")
    fields = {f.name for f in dataclasses.fields(loop.TrainingSettings)}
    allowed = fields - set(RESERVED_OPTIONS) - {"n_epochs", "seed", "device", "precision", "progress"}
    for name in training_options:
        if name in RESERVED_OPTIONS:
            raise ValueError(f"{name}= is not a search option: {RESERVED_OPTIONS[name]}")
        if name not in allowed:
            raise TypeError(f"unknown training option {name!r}; the options are {sorted(allowed)}")
    return loop.TrainingSettings(
        **{**SEARCH_OPTION_DEFAULTS, **training_options},
        n_epochs=n_epochs,
        max_steps=max_steps_per_trial,
        seed=seed,
        device=device,
        precision=precision,
        progress=False,  # one bar over trials, not one per trial
    )


def _resolve_space(
    search_space: Mapping[str, Any] | None, training_options: dict[str, Any], settings: loop.TrainingSettings
) -> dict[str, SearchDimension]:
    """The parsed search space; a keyword may be searched or fixed, not both."""
    if search_space is None:
        return parse_search_space(_default_space(training_options, settings.max_steps), settings)
    both = sorted(set(training_options) & set(search_space)) if isinstance(search_space, Mapping) else []
    if both:
        raise ValueError(f"{both} are both searched (search_space) and fixed (training options); drop one")
    return parse_search_space(search_space, settings)


def _default_space(training_options: dict[str, Any], max_steps: int | None) -> dict[str, Any]:
    """``DEFAULT_SEARCH_SPACE`` less the fixed keywords, its warmup kept to half the step cap."""
    space = {k: v for k, v in DEFAULT_SEARCH_SPACE.items() if k not in training_options}
    if "warmup_steps" in space and max_steps is not None:
        # The engine refuses a warmup longer than the run; a short cap would fail most trials.
        low, high = space["warmup_steps"]
        space["warmup_steps"] = (low, min(high, max_steps // 2))
        if max_steps // 2 <= low:
            del space["warmup_steps"]
    if not space:
        raise ValueError("every searchable keyword is fixed in the training options; leave one to search")
    return space


def parse_search_space(
    search_space: Mapping[str, Any], settings: loop.TrainingSettings | None = None
) -> dict[str, SearchDimension]:
    """Check a ``{keyword: spec}`` search space and parse it (see the module docstring for the format).

    Every bound and choice is checked as the setting it will become (``settings.replace``), so a
    ``batch_size`` of 0 or a negative ``learning_rate`` is refused here rather than in a trial.

    Raises:
        ValueError: an unknown keyword, an empty space, or a malformed range or choice list.
    """
    if not isinstance(search_space, Mapping) or not search_space:
        raise ValueError(
            "search_space must be a non-empty dict such as {'learning_rate': (1e-4, 1e-2, 'log'), "
            f"'batch_size': [4, 8]}}, got {search_space!r}"
        )
    unknown = sorted(str(name) for name in search_space if name not in DEFAULT_SEARCH_SPACE)
    if unknown:
        raise ValueError(f"search_space names unknown keyword(s) {unknown}; searchable: {list(DEFAULT_SEARCH_SPACE)}")
    settings = settings if settings is not None else loop.TrainingSettings(progress=False)
    return {name: _parse_dimension(name, spec, settings) for name, spec in search_space.items()}


def _parse_dimension(name: str, spec: Any, settings: loop.TrainingSettings) -> SearchDimension:
    where = f"search_space[{name!r}] = {spec!r}"
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"{where}: give at least one choice, e.g. [2, 4, 8]")
        for value in spec:
            _check_setting(name, value, settings, where)
        return SearchDimension(name, choices=tuple(spec))
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(f"{where}: give (low, high), (low, high, 'log') or a list of choices")
    low, high, scale = spec if len(spec) == 3 else (*spec, "linear")
    if scale not in ("linear", "log"):
        raise ValueError(f"{where}: the third item must be 'log' (or 'linear'), got {scale!r}")
    integer = name in INTEGER_KEYWORDS
    if integer and not (is_int(low) and is_int(high)):
        raise ValueError(f"{where}: {name} is a whole number; give integer bounds, e.g. (2, 16)")
    if not (is_number(low) and is_number(high) and math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{where}: the bounds must be finite numbers with low < high")
    if scale == "log" and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0")
    for value in (low, high):
        _check_setting(name, value, settings, where)
    return SearchDimension(name, low=low, high=high, log=scale == "log", integer=integer)


def _check_setting(name: str, value: Any, settings: loop.TrainingSettings, where: str) -> None:
    """The same check the value meets when a trial uses it."""
    try:
        settings.replace(**{name: value})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err


def _resolve_pruner(optuna: types.ModuleType, pruner: Any) -> Any:
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner is None or (isinstance(pruner, str) and pruner == "none"):
        return optuna.pruners.NopPruner()
    if isinstance(pruner, str) and pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_PRUNER_STARTUP_TRIALS, n_warmup_steps=0)
    raise ValueError(
        f"pruner must be 'median', 'none' or an optuna pruner such as optuna.pruners.HyperbandPruner(), got {pruner!r}"
    )


def _check_model_factory(model_factory: Any) -> int:
    """Call the factory once, to check what it returns; the model's parameter count."""
    if isinstance(model_factory, nn.Module) or not callable(model_factory):
        raise TypeError(
            "model_factory must be a function that builds a new model for each trial, e.g. "
            f"lambda: tiny_gpt(d_model=64)[0]; got {type(model_factory).__name__}"
        )
    model = model_factory()
    if isinstance(model, tuple) and model and isinstance(model[0], nn.Module):
        raise TypeError("model_factory() returned a tuple; return the model only, e.g. lambda: tiny_gpt()[0]")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_factory() must return a torch.nn.Module, got {type(model).__name__}")
    return count_parameters(model)["total"]


# -- the study -------------------------------------------------------------------


@contextmanager
def _quiet_optuna_logging(optuna: types.ModuleType) -> Iterator[None]:
    """Optuna logs every trial at INFO, which floods a notebook; show warnings only, then restore."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def _open_study(optuna: types.ModuleType, storage: Any, study_name: str | None, seed: int, pruner: Any) -> Any:
    """A new study, or the stored one of that name, minimising the validation loss."""
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=pruner,
            direction="minimize",
            load_if_exists=True,
        )
    except ImportError:
        raise  # optuna's own install hint (SQLAlchemy for a database storage)
    except Exception as err:  # SQLAlchemy's errors for a bad URL or folder share no base class with ours
        cause = getattr(err, "orig", None) or err  # the driver's own line, without SQLAlchemy's background text
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ValueError(
            f"storage={mask_password(storage)!r} cannot be opened ({type(cause).__name__}: {reason}); pass a URL "
            "such as 'sqlite:///search.db' whose folder exists, or storage=None to keep the study in memory"
        ) from err
    if study.direction != optuna.study.StudyDirection.MINIMIZE:  # a stored study of that name made elsewhere
        raise ValueError(f"study_name={study_name!r} in this storage maximises its objective; pick another name")
    return study


def mask_password(storage: Any) -> Any:
    """A storage URL with any password replaced by '***', for messages and reports."""
    if not isinstance(storage, str):
        return storage
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", storage)


def _fail_interrupted_trials(optuna: types.ModuleType, study: Any) -> None:
    """A killed search leaves its last trial RUNNING in the storage; close it as failed before resuming."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def _finished_trials(optuna: types.ModuleType, study: Any) -> list[Any]:
    states = optuna.trial.TrialState
    return study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED, states.FAIL))


def _run_trials(
    optuna: types.ModuleType, study: Any, plan: SearchPlan, n_trials: int, timeout_s: float | None, progress: bool
) -> bool:
    """Run trials until the study holds ``n_trials`` finished ones; True when the timeout stopped it."""
    done = len(_finished_trials(optuna, study))
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
                return len(_finished_trials(optuna, study)) < n_trials
    finally:
        bar.close()
    return False


def _progress_postfix(optuna: types.ModuleType, study: Any) -> dict[str, str]:
    trials = _finished_trials(optuna, study)
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


# -- results ---------------------------------------------------------------------


def _collect_results(optuna: types.ModuleType, study: Any, n_parameters: int, timed_out: bool) -> dict[str, Any]:
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


def _retrain_best(plan: SearchPlan, best_params: dict[str, Any], progress: bool) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh model trained with the best params on the full budget: ``n_epochs``, no per-trial step cap."""
    settings = plan.settings.replace(**best_params, max_steps=None, progress=progress)
    loop.seed_everything(plan.seed)
    model = plan.model_factory()
    results = loop.train(model, plan.config, settings, plan.train_data, plan.val_data)
    results["figure"] = create_training_figure(results)
    return model, results


# -- the figure ------------------------------------------------------------------


def create_search_figure(
    trials: Sequence[Any], importances: dict[str, float] | None = None, *, importance_note: str = "", title: str = ""
) -> Figure:
    """The search as one Figure of three panels.

    The panels: the optimisation history (completed and pruned values, failed trials as red lines, the
    best so far), each trial's validation loss per epoch (pruned trials dashed, an x where they stopped),
    and the parameter importances, or ``importance_note`` when there are none.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax_history, ax_curves, ax_importance = fig.subplots(1, 3)
    _plot_history(ax_history, trials)
    _plot_curves(ax_curves, trials)
    _plot_importances(ax_importance, importances, importance_note)
    fig.suptitle(title or "Hyperparameter search")
    return fig


def _plot_history(ax: Axes, trials: Sequence[Any]) -> None:
    from matplotlib.ticker import MaxNLocator

    by_state = {state: [t for t in trials if t.state.name == state] for state in ("COMPLETE", "PRUNED")}
    completed = by_state["COMPLETE"]
    ax.plot([t.number for t in completed], [t.value for t in completed], "o", label="completed")
    pruned = [t for t in by_state["PRUNED"] if t.value is not None]
    ax.plot([t.number for t in pruned], [t.value for t in pruned], "x", color="grey", label="pruned (last value)")
    if completed:
        best = [min(t.value for t in completed if t.number <= c.number) for c in completed]
        numbers = [t.number for t in completed] + [trials[-1].number]  # the line runs on to the last trial
        ax.step(numbers, best + best[-1:], where="post", color="C3", label="best so far")
    failed = [t.number for t in trials if t.state.name == "FAIL"]
    for number in failed:
        ax.axvline(number, color="red", alpha=0.25, lw=1)
    if failed:
        ax.plot([], [], color="red", alpha=0.4, label=f"failed ({len(failed)})")
    _log_scale_if_wide(ax, [t.value for t in completed + pruned])
    ax.set(title="Optimisation history", xlabel="trial", ylabel="validation loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")


def _plot_curves(ax: Axes, trials: Sequence[Any]) -> None:
    from matplotlib.ticker import MaxNLocator

    values = []
    for t in trials:
        if not t.intermediate_values:
            continue
        epochs, losses = zip(*sorted(t.intermediate_values.items()))
        values.extend(losses)
        if t.state.name == "PRUNED":
            ax.plot(epochs, losses, "--", color="grey", alpha=0.7)
            ax.plot(epochs[-1], losses[-1], "x", color="grey", markersize=9)
        else:
            ax.plot(epochs, losses, "o-", alpha=0.8, lw=1.2)
    ax.plot([], [], "--x", color="grey", label="pruned (x: where)")
    _log_scale_if_wide(ax, values)
    ax.set(title="Validation loss per epoch", xlabel="epoch", ylabel="validation loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")


def _plot_importances(ax: Axes, importances: dict[str, float] | None, note: str) -> None:
    ax.set_title("Parameter importance")
    if not importances:
        ax.text(0.5, 0.5, note or "no importances", ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.set_axis_off()
        return
    names = list(importances)[::-1]  # the most important on top
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (optuna, sums to 1)")


def _log_scale_if_wide(ax: Axes, values: Sequence[float]) -> None:
    """A diverged trial's loss can be 1000x a good one's; a log axis keeps both readable."""
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if finite and max(finite) / min(finite) > 20:
        ax.set_yscale("log")
