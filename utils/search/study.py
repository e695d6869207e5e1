"""The optuna study of a hyperparameter search: optuna itself, the pruner, the storage and resuming.

A search keeps its study in memory, or in an optuna storage (``'sqlite:///search.db'``) by
name, so that running the same call again resumes it: ``open_study`` creates or loads it,
and ``fail_interrupted_trials`` closes the trial a killed search left running. A storage URL
is shown with its password masked (``mask_password``), and one whose database driver is not
installed is refused up front, with the package to install (``check_storage_driver``).

Example:
    >>> optuna = import_optuna()
    >>> study = open_study(optuna, "sqlite:///search.db", "my-search", seed=0, pruner=resolve_pruner(optuna, "median"))
"""

from __future__ import annotations

import re
import shlex
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from utils.optional import import_optional

# pip packages of the database drivers SQLAlchemy imports, where they differ from the module's name.
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pymysql": "PyMySQL",
    "MySQLdb": "mysqlclient",
    "mysql": "mysql-connector-python",
}
# For a URL that names no driver ('postgresql://'), the other common one, named in the URL.
_OTHER_DRIVERS = {"postgresql": ("psycopg2", "psycopg"), "mysql": ("pymysql",)}
# The median pruner compares a trial with the finished ones; optuna's default of 5 leaves a
# 10-trial search almost nothing to prune.
MEDIAN_PRUNER_STARTUP_TRIALS = 2


def import_optuna() -> types.ModuleType:
    """The ``optuna`` module, or an ImportError that says how to install it."""
    return import_optional("optuna", "test_hyperparameter_search")


def resolve_pruner(optuna: types.ModuleType, pruner: Any) -> Any:
    """The optuna pruner for ``pruner=``: 'median', 'none' (or None), or an optuna pruner as it is."""
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner is None or (isinstance(pruner, str) and pruner == "none"):
        return optuna.pruners.NopPruner()
    if isinstance(pruner, str) and pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_PRUNER_STARTUP_TRIALS, n_warmup_steps=0)
    raise ValueError(
        f"pruner must be 'median', 'none' or an optuna pruner such as optuna.pruners.HyperbandPruner(), got {pruner!r}"
    )


@contextmanager
def quiet_optuna_logging(optuna: types.ModuleType) -> Iterator[None]:
    """Optuna logs every trial at INFO, which floods a notebook; show warnings only, then restore."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def check_storage_driver(storage: Any) -> None:
    """Refuse a storage URL whose database driver is not installed, before anything is built or opened.

    The driver is found as SQLAlchemy finds it, by importing the module its dialect names: no
    server is contacted. Anything else (a storage object, no SQLAlchemy, a URL it cannot read)
    is left to optuna, whose error ``open_study`` reports.

    Raises:
        ImportError: naming the storage (password masked), the driver and the package to install.
    """
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
    except ImportError:
        return
    if not isinstance(storage, str):
        return
    try:
        url = make_url(storage)
        dialect = url.get_dialect()
    except (ArgumentError, ImportError):
        return
    load_driver = getattr(dialect, "import_dbapi", None) or getattr(dialect, "dbapi", None)  # SQLAlchemy 2 / 1.4
    try:
        if callable(load_driver):
            load_driver()
    except ImportError as err:
        module = (err.name if isinstance(err, ModuleNotFoundError) and err.name else dialect.driver).split(".")[0]
        raise ImportError(
            f"storage={mask_password(storage)!r} needs the database driver {module!r} (SQLAlchemy's driver for "
            f"'{url.drivername}://' URLs), which cannot be imported: {err}; install it with "
            f"`pip install {_package(module)}`{_other_driver(url, module)}, or pass "
            "storage=None to keep the study in memory"
        ) from err


def _package(module: str) -> str:
    """The pip package of a driver module, quoted for a shell ('psycopg[binary]')."""
    return shlex.quote(DRIVER_PACKAGES.get(module, module))


def _other_driver(url: Any, module: str) -> str:
    """For a URL without '+driver': the other common driver, and how to name it in the URL."""
    if "+" in url.drivername:
        return ""
    for other in _OTHER_DRIVERS.get(url.get_backend_name(), ()):
        if other != module:
            return f" (or `pip install {_package(other)}` and write the URL as '{url.drivername}+{other}://...')"
    return ""


def open_study(optuna: types.ModuleType, storage: Any, study_name: str | None, seed: int, pruner: Any) -> Any:
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


def fail_interrupted_trials(optuna: types.ModuleType, study: Any) -> None:
    """A killed search leaves its last trial RUNNING in the storage; close it as failed before resuming."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def finished_trials(optuna: types.ModuleType, study: Any) -> list[Any]:
    """The study's trials that ended: complete, pruned or failed (they count towards ``n_trials``)."""
    states = optuna.trial.TrialState
    return study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED, states.FAIL))
