"""Run checks one after another into one summary table, turning a failing check into an 'error' row.

``run_checks`` returns a summary DataFrame with the columns ``test``,
``status`` ('pass', 'warn', 'fail' or 'error'), ``key_figure`` and
``time_s``. An exception inside one check becomes an 'error' row carrying
the message, and the other checks still run; a check is never reported as
passing unless it said so.

The detailed result of each check (its tables and figures) is in
``summary.attrs['results']``, a dict keyed by test name; for an 'error' row
it holds ``{'status': 'error', 'error': ..., 'traceback': ...}``.

Example:
    >>> from utils.diagnostics.tiers import TIER1_TESTS
    >>> summary = run_checks(model, config, TIER1_TESTS, desc="Tier 1")
    >>> summary.attrs["results"]["test_gradient_flow"]["figure"]
"""

from __future__ import annotations

import inspect
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import torch.nn as nn

from utils.checks import check_bool, check_positive_int, check_str, is_collection
from utils.model_helpers import probe_model, require_config_values, validate_model
from utils.progress import progress_bar

SUMMARY_COLUMNS = ("test", "status", "key_figure", "time_s")
STATUSES = ("pass", "warn", "fail", "error")


class CheckResults(dict):
    """Per-check details. pandas deep-copies ``attrs`` on every operation; this shares instead."""

    def __deepcopy__(self, memo: dict) -> CheckResults:
        return self


def run_checks(
    model: nn.Module,
    config: Any,
    checks: tuple[Callable[..., dict], ...],
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    seq_len: int | None = None,
    progress: bool = True,
    desc: str = "checks",
) -> Any:
    """Run ``checks`` in order, one summary row each, never stopping at a failing one.

    Args:
        model: the model to check.
        config: its config; needs ``vocab_size``, and ``max_seq_len`` unless ``seq_len`` is given.
        checks: the check functions, each ``check(model, config, **kwargs) -> dict``.
        options: keyword arguments per check, keyed by the check's name.
        seq_len: tokens per sequence for every check that takes ``seq_len`` (an option for one
            check wins); needed for a config without ``max_seq_len`` (T5's relative positions).
        progress: show a progress bar over the checks.
        desc: the progress bar's label.

    Returns:
        DataFrame with columns test, status, key_figure, time_s (details in ``.attrs['results']``).

    Raises:
        TypeError, ValueError, RuntimeError: bad model, config, checks or options, before any check runs.
    """
    import pandas as pd

    checks = _check_checks(checks)
    options = _check_options(options, checks)
    check_bool(progress, "progress")
    check_str(desc, "desc")
    check_positive_int(seq_len, "seq_len", allow_none=True)
    validate_model(model)
    required = ("vocab_size",) if seq_len is not None else ("vocab_size", "max_seq_len")
    require_config_values(config, required, "the Tier 1/2 checks (or pass seq_len=)")
    probe_model(model, config, desc)  # an unusable output fails here, before any check
    rows, details = [], CheckResults()
    bar = progress_bar(checks, desc=desc, unit="check", enabled=progress)
    for check in bar:
        bar.set_postfix_str(check.__name__)
        kwargs = {**_seq_len_keyword(check, seq_len), **options.get(check.__name__, {})}
        row, details[check.__name__] = _run_one(check, model, config, kwargs)
        rows.append(row)
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    summary.attrs["results"] = details
    return summary


def _check_checks(checks: Any) -> tuple[Callable[..., dict], ...]:
    """``checks`` as a tuple of named functions, or a ValueError saying what to pass."""
    items = tuple(checks) if is_collection(checks) else ()
    if not items or not all(callable(check) and hasattr(check, "__name__") for check in items):
        raise ValueError(
            f"checks must be a non-empty tuple of check functions such as TIER1_TESTS or "
            f"(test_gradient_flow, test_robustness), got {checks!r:.80}"
        )
    return items


def _check_options(options: Any, checks: tuple[Callable, ...]) -> dict[str, Mapping[str, Any]]:
    """``options`` as a dict, each entry naming a check in ``checks`` and only keywords that check takes."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(
            "options must be a dict of test name -> keyword arguments, e.g. "
            f"{{'test_inference_speed': {{'n_iters': 5}}}}; got {options!r:.80}"
        )
    by_name = {check.__name__: check for check in checks}
    unknown = [name for name in options if name not in by_name]
    if unknown:
        raise ValueError(f"options has unknown test name(s) {unknown}; valid names are {list(by_name)}")
    for name, kwargs in options.items():
        if not isinstance(kwargs, Mapping):
            raise TypeError(f"options[{name!r}] must be a dict of keyword arguments, got {type(kwargs).__name__}")
        _check_keywords(by_name[name], kwargs)
    return dict(options)


def _check_keywords(check: Callable[..., dict], kwargs: Mapping[str, Any]) -> None:
    """Each key of ``kwargs`` is a keyword ``check`` takes after (model, config)."""
    try:
        params = list(inspect.signature(check).parameters.values())
    except (TypeError, ValueError):  # a builtin or C function hides its signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    allowed = [p.name for p in params[2:] if p.kind in keyword_kinds]  # model and config come from the runner
    unknown = [key for key in kwargs if key not in allowed]
    if unknown:
        raise ValueError(
            f"options[{check.__name__!r}] has unknown keyword(s) {unknown}; {check.__name__} takes {allowed} "
            "(model and config are passed by the runner)"
        )


def _seq_len_keyword(check: Callable[..., dict], seq_len: int | None) -> dict[str, int]:
    """``{'seq_len': seq_len}`` for a check that takes it, else nothing."""
    if seq_len is None:
        return {}
    try:
        return {"seq_len": seq_len} if "seq_len" in inspect.signature(check).parameters else {}
    except (TypeError, ValueError):  # a hidden signature: do not guess
        return {}


def _run_one(check: Callable[..., dict], model: nn.Module, config: Any, kwargs: Mapping[str, Any]) -> tuple[dict, Any]:
    """One summary row and the detailed result; an exception becomes an 'error' row."""
    if "progress" in inspect.signature(check).parameters:
        kwargs = {"progress": False, **kwargs}  # the runner's bar is enough
    start = time.perf_counter()
    try:
        result = check(model, config, **kwargs)
        status = result.get("status", "error") if isinstance(result, Mapping) else "error"
        key_figure = (
            result.get("summary", "") if isinstance(result, Mapping) else f"unexpected result {type(result).__name__}"
        )
    except Exception as err:  # one broken check must not hide the others
        status, key_figure = "error", f"{type(err).__name__}: {err}"
        result = {"status": "error", "error": key_figure, "traceback": traceback.format_exc()}
    if status not in STATUSES:
        status, key_figure = "error", f"check returned status {status!r}: {key_figure}"
    row = {"test": check.__name__, "status": status, "key_figure": key_figure, "time_s": time.perf_counter() - start}
    return row, result
