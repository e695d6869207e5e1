"""Tier 3: which training settings work best? ``test_hyperparameter_search``, an optuna search over the engine.

Each trial trains a fresh model from ``model_factory()`` through the training
engine (``utils.training.loop.train``) with settings drawn from the search
space, and scores it by its validation loss. The validation loss at each epoch
end is reported to optuna through the engine's callback hooks, so a pruner can
stop a poor trial early. Only optuna's core API is used (a seeded
``TPESampler``, its pruners, its storages and ``get_param_importances``), and
optuna is imported only when a search runs.

The search space names ``test_fine_tuning`` keywords: ``(low, high)``,
``(low, high, 'log')`` or a list of choices (see ``utils.search.space``). The
parts live in ``utils.search``: ``space`` (the search space), ``study`` (optuna,
the pruner, the storage and resuming), ``trials`` (running and reading trials)
and ``figure``.

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

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

# noqa: F401 below: besides what it calls, this path re-exports the names it has always offered,
# defined in utils.search now.
from utils.checks import check_bool, check_int, check_positive_int, check_positive_number, check_str
from utils.device import resolve_device
from utils.model_helpers import count_parameters
from utils.search.figure import create_search_figure  # noqa: F401
from utils.search.space import (  # noqa: F401
    DEFAULT_SEARCH_SPACE,
    INTEGER_KEYWORDS,
    SearchDimension,
    parse_search_space,
    resolve_space,
)
from utils.search.study import (  # noqa: F401
    MEDIAN_PRUNER_STARTUP_TRIALS,
    check_storage_driver,
    fail_interrupted_trials,
    import_optuna,
    mask_password,
    open_study,
    quiet_optuna_logging,
    resolve_pruner,
)
from utils.search.trials import (  # noqa: F401
    FAIL_REASON_ATTR,
    IMPORTANCE_MIN_TRIALS,
    INTERRUPTED_REASON,
    PRUNED_AT_ATTR,
    EpochReporter,
    SearchPlan,
    collect_results,
    run_trials,
    trials_table,
)
from utils.training import loop
from utils.training.plots import create_training_figure
from utils.training.settings import from_options

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

__all__ = [
    "DEFAULT_SEARCH_SPACE",
    "create_search_figure",
    "import_optuna",
    "parse_search_space",
    "test_hyperparameter_search",
    "trials_table",
]


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
        ImportError: optuna is not installed, or the database driver a storage URL needs is not (checked
            without contacting the database).
        TypeError, ValueError: on a bad argument, a bad search space, an unknown training option or a
            storage that cannot be opened, before any trial runs. A trial that fails (a NaN loss, CUDA
            out of memory) is recorded as failed with its reason, and the search goes on.
    """
    optuna = import_optuna()
    _check_search_args(n_trials, max_steps_per_trial, timeout_s, storage, study_name, retrain_best, progress)
    settings = _base_settings(training_options, n_epochs, max_steps_per_trial, seed, device, precision)
    space = resolve_space(search_space, training_options, settings)
    chosen_pruner = resolve_pruner(optuna, pruner)
    n_parameters = _check_model_factory(model_factory)
    plan = SearchPlan(
        model_factory, config, train_data, val_data, space, settings, seed, resolve_device(settings.device)
    )
    with quiet_optuna_logging(optuna):
        study = open_study(optuna, storage, study_name, seed, chosen_pruner)
        fail_interrupted_trials(optuna, study)
        timed_out = run_trials(optuna, study, plan, n_trials, timeout_s, progress)
        results = collect_results(optuna, study, n_parameters, timed_out)
    if retrain_best and results["best_params"] is not None:
        results["best_model"], results["best_results"] = _retrain_best(plan, results["best_params"], progress)
    elif retrain_best:
        results["best_model"] = results["best_results"] = None
    return results


test_hyperparameter_search.__test__ = False  # a library function, not a pytest test


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
    check_storage_driver(storage)


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
    return from_options(
        "test_hyperparameter_search",
        training_options,
        reserved=RESERVED_OPTIONS,
        defaults=SEARCH_OPTION_DEFAULTS,
        n_epochs=n_epochs,
        max_steps=max_steps_per_trial,
        seed=seed,
        device=device,
        precision=precision,
        progress=False,  # one bar over trials, not one per trial
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


# -- after the search ------------------------------------------------------------


def _retrain_best(plan: SearchPlan, best_params: dict[str, Any], progress: bool) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh model trained with the best params on the full budget: ``n_epochs``, no per-trial step cap."""
    settings = plan.settings.replace(**best_params, max_steps=None, progress=progress)
    loop.seed_everything(plan.seed)
    model = plan.model_factory()
    results = loop.train(model, plan.config, settings, plan.train_data, plan.val_data)
    results["figure"] = create_training_figure(results)
    return model, results
