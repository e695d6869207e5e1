"""The search space of a hyperparameter search: its format, its default, and its parsing.

The search space names ``test_fine_tuning`` keywords. Each entry is one of:

- ``(low, high)``: a uniform range (integers for ``batch_size``,
  ``warmup_steps`` and ``gradient_accumulation_steps``, floats otherwise);
- ``(low, high, 'log')``: the same on a log scale (``low`` > 0);
- ``[a, b, c]``: a list of choices (``None`` is a valid choice for ``grad_clip``).

Every bound and choice is checked as the setting it will become, before any trial, and
each trial draws its values through ``SearchDimension.suggest``.

Example:
    >>> space = parse_search_space({"learning_rate": (1e-4, 1e-2, "log"), "batch_size": [4, 8]})
    >>> space["learning_rate"].log, space["batch_size"].choices
    (True, (4, 8))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from utils.checks import is_int, is_number
from utils.training import loop

if TYPE_CHECKING:  # optuna loads when a search runs, never on import
    import optuna

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


def resolve_space(
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
