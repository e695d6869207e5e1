"""Weights & Biases behind one seam: import it, find the active run, build a flat config, open and close runs.

``wandb`` is optional: it is imported inside the functions that need it,
through ``import_wandb``, so ``import utils.training.wandb_run`` works without it
and every W&B entry point fails with the same install hint. ``active_run`` and
``require_active_run`` are the one place that asks "is there a W&B run?".

Runs never prompt for a login and never lose their metrics: without an API key,
or when the online start fails (no network, a bad key), they are written
offline and can be uploaded later with ``wandb sync <dir>``.

Example:
    >>> plan = resolve_precision("auto", use_amp=True)
    >>> wandb_config = build_wandb_config(model, config, precision=plan.name, learning_rate=3e-4)
    >>> run = initialize_wandb_run(name="amp-bf16", config=wandb_config)
    >>> run.log({"train/loss": 2.3})
    >>> finish_wandb_run(run)
"""

from __future__ import annotations

import functools
import netrc
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch.nn as nn

from utils.checks import check_positive_number
from utils.optional import import_optional
from utils.training.wandb_config import build_wandb_config, json_scalar

WANDB_MODES = ("online", "offline", "disabled")
DEFAULT_WANDB_HOST = "https://api.wandb.ai"

# Legacy WANDB_MODE values that wandb itself still accepts.
_ENV_MODE_ALIASES = {"dryrun": "offline", "run": "online"}


# --------------------------------------------------------------------------- the seam


def import_wandb() -> Any:
    """The ``wandb`` module, or an ImportError that says how to install it.

    Every W&B entry point in ``utils`` imports wandb through here, so a missing
    package always gives the same message instead of a bare ModuleNotFoundError.

    Raises:
        ImportError: if wandb is not installed.
    """
    return import_optional("wandb", "W&B logging", alternative="or run without W&B logging (use_wandb=False)")


def active_run() -> Any:
    """The active W&B run (``wandb.run``), or None when no run is active.

    Raises:
        ImportError: if wandb is not installed.
    """
    return import_wandb().run


def require_active_run(purpose: str) -> Any:
    """The active W&B run, or a RuntimeError that says who needs one and how to start it.

    Args:
        purpose: who needs the run, e.g. 'AmpWandbCallback'; it starts the message.

    Raises:
        RuntimeError: if no run is active.
        ImportError: if wandb is not installed.

    Example:
        >>> run = require_active_run("MetricsTracker(use_wandb=True)")
    """
    run = active_run()
    if run is None:
        raise RuntimeError(
            f"{purpose} needs an active W&B run, and none is active; start one with "
            "utils.training.wandb_run.initialize_wandb_run() or wandb.init() first "
            "(test_fine_tuning(use_wandb=True) starts one for you)"
        )
    return run


# --------------------------------------------------------------------------- runs


def initialize_wandb_run(
    project: str = "utils-transformer-tests",
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    group: str | None = None,
    tags: Sequence[str] | None = None,
    mode: str | None = None,
    dir: str | os.PathLike | None = None,
    init_timeout_s: float = 30.0,
    **init_kwargs: Any,
) -> Any:
    """Start a W&B run that never prompts for a login and never loses its metrics.

    The mode is ``mode`` if given, else ``WANDB_MODE``, else 'online'. An online
    run is written offline instead, with one warning line that says why, where
    and how to upload it later (``wandb sync <dir>``), when there is no API key
    (no ``WANDB_API_KEY`` and no netrc entry for the W&B host) or when the online
    start fails: no network, an unreachable host or a rejected key.

    Args:
        project: the W&B project.
        name: the run's display name (offline runs may show None until synced).
        config: a flat dict, e.g. from ``build_wandb_config``.
        group: optional run group, e.g. one sweep or benchmark.
        tags: optional list of string tags.
        mode: None, 'online', 'offline' or 'disabled'.
        dir: folder under which wandb writes ``wandb/<run folder>``; created if
            missing. Default: ``WANDB_DIR`` as it is now, else the current directory.
        init_timeout_s: how long an online start may take before the run goes
            offline (wandb's own default, 90 s, retries an unreachable host that long).
            It is wandb's ``init_timeout`` setting and overrides ``WANDB_INIT_TIMEOUT``.
        **init_kwargs: passed on to ``wandb.init``. A ``settings`` (``wandb.Settings``
            or dict) is merged with the defaults here (silent, ``init_timeout_s``);
            the fields it sets win.

    Returns:
        The ``wandb`` Run (a no-op run for mode 'disabled').

    Raises:
        ValueError: on a bad ``mode``, ``WANDB_MODE``, ``project``, ``tags``,
            ``init_timeout_s`` or ``settings``.
        TypeError: if ``config`` is not a mapping.
        ImportError: if wandb is not installed.

    Example:
        >>> run = initialize_wandb_run(name="baseline", config=wandb_config, mode="offline")
    """
    requested = _requested_mode(mode)
    _validate_run_args(project, config, tags)
    check_positive_number(init_timeout_s, "init_timeout_s")
    wandb = import_wandb()
    user_settings = init_kwargs.pop("settings", None)
    _check_settings(wandb, user_settings)
    settings = functools.partial(_merged_settings, wandb, user_settings, init_timeout_s)
    init_kwargs.update(
        project=project,
        name=name,
        config=dict(config) if config is not None else None,
        group=group,
        tags=list(tags) if tags is not None else None,
        dir=_run_dir(dir),
    )
    if requested == "online" and not has_wandb_api_key():
        reason = f"no API key found (WANDB_API_KEY or a netrc entry for {_wandb_host()})"
        return _start_offline_instead(wandb, settings, init_kwargs, reason)
    try:
        return wandb.init(mode=requested, settings=settings(), **init_kwargs)
    except (wandb.errors.Error, TimeoutError) as err:
        if requested != "online":
            raise
        return _start_offline_instead(wandb, settings, init_kwargs, _online_failure(err, init_timeout_s))


def _check_settings(wandb: Any, settings: Any) -> None:
    if settings is not None and not isinstance(settings, (Mapping, wandb.Settings)):
        raise ValueError(f"settings must be a wandb.Settings or a dict, got {type(settings).__name__}")


def _merged_settings(wandb: Any, user_settings: Any, init_timeout_s: float) -> Any:
    """Silent settings with ``init_timeout``, overlaid with the fields the caller set.

    Built afresh for each ``wandb.init`` attempt: wandb writes into the Settings it is given.
    """
    defaults = {"silent": True, "init_timeout": float(init_timeout_s)}
    if user_settings is None:
        return wandb.Settings(**defaults)
    if isinstance(user_settings, Mapping):
        return wandb.Settings(**{**defaults, **user_settings})
    unset = {key: value for key, value in defaults.items() if key not in user_settings.model_fields_set}
    return user_settings.model_copy(update=unset)


def _run_dir(dir: str | os.PathLike | None) -> str | None:
    """The folder to pass to ``wandb.init``, created if missing (wandb only warns about a missing one)."""
    # wandb reads WANDB_DIR once per process; pass it each time so a later change is honoured.
    dir = dir if dir is not None else os.environ.get("WANDB_DIR")
    if dir is None:
        return None
    Path(dir).mkdir(parents=True, exist_ok=True)
    return str(dir)


def _start_offline_instead(wandb: Any, settings: Callable[[], Any], init_kwargs: dict[str, Any], reason: str) -> Any:
    """Start the run offline and say, in one warning line, why and how to upload it later."""
    run = wandb.init(mode="offline", settings=settings(), **init_kwargs)
    sync_dir = run.settings.sync_dir
    warnings.warn(
        f"W&B: {reason}, so this run is logged offline to {sync_dir}; upload it later with `wandb sync {sync_dir}`",
        stacklevel=3,  # the caller of initialize_wandb_run
    )
    return run


def _online_failure(err: BaseException, init_timeout_s: float) -> str:
    """Why the online start failed, on one line (wandb's messages run to several)."""
    first_line = (str(err).strip().splitlines() or [""])[0]
    return (
        f"the online run at {_wandb_host()} did not start within init_timeout_s={init_timeout_s:g} "
        f"({type(err).__name__}: {first_line})"
    )


def _requested_mode(mode: str | None) -> str:
    """The mode asked for by the argument, else ``WANDB_MODE``, else 'online'."""
    if mode is not None:
        if mode not in WANDB_MODES:
            raise ValueError(f"mode must be None or one of {WANDB_MODES}, got {mode!r}")
        return mode
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    env_mode = _ENV_MODE_ALIASES.get(env_mode, env_mode)
    if not env_mode:
        return "online"
    if env_mode not in WANDB_MODES:
        raise ValueError(
            f"WANDB_MODE={os.environ['WANDB_MODE']!r} is not a W&B mode; set it to one of {WANDB_MODES} "
            "or pass mode= explicitly"
        )
    return env_mode


def _validate_run_args(project: Any, config: Any, tags: Any) -> None:
    if not isinstance(project, str) or not project.strip():
        raise ValueError(f"project must be a non-empty string, got {project!r}")
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict (e.g. from build_wandb_config), got {type(config).__name__}")
    if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str) for t in tags)):
        raise ValueError(f"tags must be a list of strings, got {tags!r}; e.g. tags=['amp', 'bf16']")


def start_run_unless_active(
    model: nn.Module,
    config: Any,
    *,
    precision: str,
    project: str = "utils-transformer-tests",
    name: str | None = None,
    **hyperparams: Any,
) -> Any:
    """Log to the active W&B run if there is one; else start one and return it.

    Returns:
        The run started here, which the caller must finish, or None when a
        run was already active (the caller leaves that one alone).

    Raises:
        ImportError: if wandb is not installed.
    """
    if active_run() is not None:
        return None
    wandb_config = build_wandb_config(model, config, precision=precision, **hyperparams)
    return initialize_wandb_run(project=project, name=name, config=wandb_config)


def has_wandb_api_key() -> bool:
    """True if wandb could log in without asking: ``WANDB_API_KEY``, an identity token, or a netrc entry.

    Reads the environment and the netrc file only; it never contacts a server.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(_wandb_host()).netloc
    for path in _netrc_paths():
        try:
            credentials = netrc.netrc(path).authenticators(host)
        except (FileNotFoundError, netrc.NetrcParseError, OSError):
            continue
        if credentials and credentials[2]:
            return True
    return False


def _wandb_host() -> str:
    return os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_HOST).rstrip("/")


def _netrc_paths() -> list[Path]:
    # Same search order as wandb: $NETRC wins, then ~/.netrc, then ~/_netrc.
    if os.environ.get("NETRC"):
        return [Path(os.environ["NETRC"]).expanduser()]
    return [Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()]


def describe_wandb_run(run: Any = None) -> dict[str, Any]:
    """The run's name, id, project, mode, local folder and summary metrics, as a JSON-friendly dict.

    Read it before ``run.finish()``: wandb empties ``run.summary`` once the run is finished.
    Metrics logged with an explicit ``step=`` reach the summary when the next step
    is logged (``finish_wandb_run`` commits the last one).

    Args:
        run: a wandb Run; None means the active ``wandb.run``.

    Returns:
        A dict with keys name, id, project, mode, dir and summary (metric -> last value;
        wandb's own '_step'/'_runtime'/'_timestamp' left out).

    Raises:
        RuntimeError: if ``run`` is None and no run is active.
    """
    run = _resolve_run(run)
    summary = {key: _summary_value(value) for key, value in dict(run.summary).items() if not key.startswith("_")}
    return {
        "name": run.name,
        "id": run.id,
        "project": run.project,
        "mode": run.settings.mode,
        "dir": str(run.settings.sync_dir),
        "summary": summary,
    }


def _summary_value(value: Any) -> str | int | float | bool | None:
    """A scalar as is; a logged media object (histogram, table ...) as '<its type>'; a nested dict as text."""
    if not callable(getattr(value, "keys", None)):
        return json_scalar(value)
    nested = {key: value[key] for key in value.keys()}  # wandb's SummarySubDict is not a Mapping
    return f"<{nested['_type']}>" if isinstance(nested.get("_type"), str) else str(nested)


def print_wandb_summary(run: Any = None) -> dict[str, Any]:
    """Print a short summary of a W&B run and return it (see ``describe_wandb_run``).

    Args:
        run: a wandb Run; None means the active ``wandb.run``.

    Returns:
        The dict from ``describe_wandb_run``.

    Raises:
        RuntimeError: if ``run`` is None and no run is active.

    Example:
        >>> info = print_wandb_summary(run)
        W&B run 'baseline' (id 1a2b3c4d, offline) in utils-transformer-tests
    """
    info = describe_wandb_run(run)
    print(f"W&B run {info['name']!r} (id {info['id']}, {info['mode']}) in {info['project']}")
    print(f"  local dir: {info['dir']}")
    for key, value in sorted(info["summary"].items()):
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    return info


def finish_wandb_run(run: Any = None, *, exit_code: int | None = None) -> dict[str, Any]:
    """Finish a W&B run and return its description, read just before finishing.

    Args:
        run: a wandb Run; None means the active ``wandb.run``.
        exit_code: passed to ``run.finish``; non-zero marks the run as failed.

    Returns:
        The dict from ``describe_wandb_run``, taken before wandb clears the summary.

    Raises:
        RuntimeError: if ``run`` is None and no run is active, or the run is already finished.
    """
    run = _resolve_run(run)
    wandb = import_wandb()
    try:
        # A row logged with an explicit step= waits for the next step; commit it so the summary is final.
        run.log({}, commit=True)
    except wandb.errors.UsageError as err:  # what wandb raises for a finished run
        raise RuntimeError(f"W&B run {run.id} is already finished; there is nothing left to finish") from err
    info = describe_wandb_run(run)
    run.finish(exit_code=exit_code)
    return info


def _resolve_run(run: Any) -> Any:
    if run is not None:
        return run
    return require_active_run("describe_wandb_run/print_wandb_summary/finish_wandb_run with run=None")
