"""Argument checks shared by every public function: one place, one wording.

Each check raises a ``ValueError`` that names the argument, says what it must
be and shows what it got, before any work starts. A bool is never a number
here (``True`` would otherwise pass as 1), and NaN or infinity is never a
valid setting.

Example:
    >>> check_positive_number(3e-4, "learning_rate")
    >>> check_positive_number(True, "learning_rate")
    Traceback (most recent call last):
    ...
    ValueError: learning_rate must be a positive finite number, got True
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def is_number(value: Any) -> bool:
    """True for a real number (int, float, numpy scalar); False for a bool, a string or anything else."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    """True for an integer (int, numpy integer); False for a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_collection(value: Any) -> bool:
    """True for a list, tuple, set or other iterable of items; False for a string, a mapping or a scalar."""
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping))


def check_positive_int(value: Any, name: str, *, allow_none: bool = False) -> None:
    """An int >= 1 (or None when ``allow_none``)."""
    if allow_none and value is None:
        return
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer{_or_none(allow_none)}, {_got(value)}")


def check_non_negative_int(value: Any, name: str, *, allow_none: bool = False) -> None:
    """An int >= 0 (or None when ``allow_none``)."""
    if allow_none and value is None:
        return
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer{_or_none(allow_none)}, {_got(value)}")


def check_int(value: Any, name: str) -> None:
    """Any int (a seed, say), but not a bool."""
    if not is_int(value):
        raise ValueError(f"{name} must be an integer, {_got(value)}")


def check_positive_number(value: Any, name: str, *, allow_none: bool = False) -> None:
    """A finite number > 0 (or None when ``allow_none``)."""
    if allow_none and value is None:
        return
    if not is_number(value) or not math.isfinite(value) or not value > 0:
        raise ValueError(f"{name} must be a positive finite number{_or_none(allow_none)}, {_got(value)}")


def check_non_negative_number(value: Any, name: str, *, allow_none: bool = False) -> None:
    """A finite number >= 0 (or None when ``allow_none``)."""
    if allow_none and value is None:
        return
    if not is_number(value) or not math.isfinite(value) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative finite number{_or_none(allow_none)}, {_got(value)}")


def check_number_in_range(
    value: Any, name: str, low: float, high: float, *, low_inclusive: bool = True, high_inclusive: bool = True
) -> None:
    """A finite number between ``low`` and ``high`` (inclusive unless told otherwise)."""
    ok = is_number(value) and math.isfinite(value)
    if ok:
        ok = (value >= low if low_inclusive else value > low) and (value <= high if high_inclusive else value < high)
    if not ok:
        brackets = ("[" if low_inclusive else "(") + f"{low}, {high}" + ("]" if high_inclusive else ")")
        raise ValueError(f"{name} must be a number in {brackets}, {_got(value)}")


def check_bool(value: Any, name: str, *, allow_none: bool = False) -> None:
    """True or False (or None when ``allow_none``); 0, 1 and 'yes' are not booleans."""
    if allow_none and value is None:
        return
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False{_or_none(allow_none)}, {_got(value)}")


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> None:
    """One of ``choices``."""
    choices = tuple(choices)
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_str(value: Any, name: str, *, allow_none: bool = False) -> None:
    """A non-empty string (or None when ``allow_none``)."""
    if allow_none and value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string{_or_none(allow_none)}, got {value!r}")


def check_path(value: Any, name: str, *, allow_none: bool = False) -> None:
    """A ``str`` or ``os.PathLike`` path (or None when ``allow_none``)."""
    if allow_none and value is None:
        return
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ValueError(f"{name} must be a file or folder path{_or_none(allow_none)}, got {value!r}")


def check_sequence(
    values: Any,
    name: str,
    check_item: Callable[[Any, str], None],
    *,
    items: str,
    example: str,
    convert: Callable[[Any], Any],
) -> tuple:
    """The sorted distinct items of a non-empty sequence (a sweep), each passing ``check_item(item, "name[i]")``.

    Args:
        values: what the caller passed.
        name: the argument's name, for the message.
        check_item: one of the ``check_*`` helpers above, e.g. ``check_positive_int``.
        items: what each item must be, in words, e.g. ``"positive ints"``.
        example: a valid value to show, e.g. ``"(1, 4)"``.
        convert: applied to each checked item (``int``, ``float``), so numpy scalars come back as Python ones.

    Example:
        >>> check_sequence([4, 1, 4], "batch_sizes", check_positive_int, items="positive ints", example="(1, 4)",
        ...                convert=int)
        (1, 4)
    """
    given = tuple(values) if is_collection(values) else ()
    if not given:
        raise ValueError(f"{name} must be a non-empty sequence of {items} such as {example}, got {values!r}")
    for index, item in enumerate(given):
        check_item(item, f"{name}[{index}]")
    return tuple(sorted({convert(item) for item in given}))


def _or_none(allow_none: bool) -> str:
    return " or None" if allow_none else ""


def _got(value: Any) -> str:
    """'got X', with the usual mistake spelled out: a number passed as a string, or a bool as a number."""
    if isinstance(value, str):
        return f"got the string {value!r}; pass the value itself, not text"
    if isinstance(value, bool):
        return f"got {value!r} (a bool is not a number here)"
    return f"got {value!r}"
