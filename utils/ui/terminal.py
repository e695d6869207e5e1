"""The setup wizard's terminal questions, and how each setting reads and writes as text.

``ask`` asks one question per ``WizardConfig`` field, in the dataclass's order,
with the current value in brackets (Enter keeps it). An answer is read as the
field's type; a bad one is re-asked with the reason. After the last question
the config is checked, and only the fields with problems are asked again, for
a bounded number of rounds. When input ends (a closed stdin, Ctrl-D) it stops
asking and keeps what it has: it never waits for input that cannot come.

``parse_answer`` and ``format_value`` are the one place a setting becomes text
and back; the notebook form (``utils.ui.form``) reads its text boxes with them.

Example:
    >>> settings = ask(ConfigPresets.customize("tiny"), validate=lambda c: c.validate(model, config))
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from utils.checks import check_non_negative_int
from utils.training.precision import PRECISIONS
from utils.ui.config import WizardConfig, field_types
from utils.ui.data_source import DATA_SOURCES

# Where the config came from: shown, but not asked, since changing it changes no training setting.
NOT_ASKED = ("preset",)
# Fields whose value is one of a fixed set; the other types come from the dataclass's hints.
CHOICES: dict[str, tuple[str, ...]] = {"data_source": DATA_SOURCES, "precision": PRECISIONS}
# Fields a data source reads; asked on the first pass only when the chosen source reads them.
SOURCE_FIELDS = {"dataset_path": ("file", "folder"), "texts": ("strings",)}
MAX_ROUNDS = 3  # rounds of re-asking the fields with problems, after the first pass
MAX_TRIES = 5  # bad answers to one question before its value is kept
NONE_WORDS = ("", "none")  # how an optional setting is cleared
TRUE_WORDS = ("yes", "y", "true", "on", "1")
FALSE_WORDS = ("no", "n", "false", "off", "0")
TEXTS_SEPARATOR = "---"  # a line holding only this separates texts typed as plain text

Validate = Callable[[WizardConfig], list[str]]


def editable_fields() -> list[str]:
    """The ``WizardConfig`` fields a person sets, in the dataclass's order (read from it, so it cannot drift)."""
    return [f.name for f in dataclasses.fields(WizardConfig) if f.name not in NOT_ASKED]


def field_type(name: str) -> tuple[Any, bool]:
    """A field's type without None, and whether None is allowed: ``(int, True)`` for ``int | None``."""
    hint = field_types()[name]
    is_union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    args = typing.get_args(hint) if is_union else (hint,)
    kinds = [arg for arg in args if arg is not type(None)]
    return kinds[0], len(kinds) < len(args)


def problem_field(message: str) -> str:
    """The field a ``validate`` message concerns (its text before the first colon), or 'model'."""
    return message.split(":", 1)[0]


def format_value(name: str, value: Any, *, none: str = "none") -> str:
    """A setting as the text that ``parse_answer`` reads back ('yes'/'no' for a bool, JSON for texts)."""
    if value is None:
        return none
    if isinstance(value, bool):
        return "yes" if value else "no"
    if name == "texts" and isinstance(value, (list, tuple)):
        return json.dumps(list(value), ensure_ascii=False)
    return str(value)


def parse_answer(name: str, text: str) -> Any:
    """Read ``text`` as the value of field ``name``; '' or 'none' is None for an optional field.

    Texts are a JSON list of strings, or plain text with a line of ``---`` between texts.

    Raises:
        ValueError: ``"<name>: <why> ..."``, saying what to type instead.
    """
    kind, optional = field_type(name)
    text = text.strip() if name != "texts" else text
    if optional and text.strip().lower() in NONE_WORDS:
        return None
    if name in CHOICES:
        return _parse_choice(name, text)
    if kind is bool:
        return _parse_bool(name, text, optional)
    if kind is int or kind is float:
        return _parse_number(name, text, kind, optional)
    if typing.get_origin(kind) is list:
        return _parse_texts(name, text)
    return text


def _parse_choice(name: str, text: str) -> str:
    by_lower = {choice.lower(): choice for choice in CHOICES[name]}
    if text.lower() in by_lower:
        return by_lower[text.lower()]
    raise ValueError(f"{name}: {text!r} is not one of {', '.join(CHOICES[name])}; type one of them")


def _parse_bool(name: str, text: str, optional: bool) -> bool:
    word = text.lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    none = " or 'none'" if optional else ""
    raise ValueError(f"{name}: {text!r} is not yes or no; type 'yes', 'no'{none}")


def _parse_number(name: str, text: str, kind: type, optional: bool) -> int | float:
    try:
        return kind(text)  # int() and float() both take '50_000'; int() refuses '1.5' and '1e3'
    except ValueError:
        what, example = ("a whole number", "4") if kind is int else ("a number", "0.001 or 1e-3")
        got = f"{text!r} is not {what}" if text else f"it needs {what}"
        none = " (or 'none')" if optional else ""
        raise ValueError(f"{name}: {got}; type one like {example}{none}") from None


def _parse_texts(name: str, text: str) -> list[str]:
    if text.lstrip().startswith("["):
        try:
            texts = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f'{name}: not a JSON list ({err}); type ["first text", "second text"]') from None
        if isinstance(texts, list) and all(isinstance(t, str) for t in texts):
            return texts
        raise ValueError(f'{name}: a JSON list of strings is needed, like ["first text", "second text"]')
    chunks = re.split(rf"^{re.escape(TEXTS_SEPARATOR)}[ \t]*$", text, flags=re.MULTILINE)
    return [chunk.strip("\r\n") for chunk in chunks if chunk.strip()]


# -- asking --------------------------------------------------------------------------


def ask(
    wizard_config: WizardConfig,
    *,
    validate: Validate,
    input_fn: Callable[[str], str] = input,
    print_fn: Callable[..., Any] = print,
    max_rounds: int = MAX_ROUNDS,
) -> WizardConfig:
    """Ask for every setting in a terminal, check, and re-ask the ones with problems; return the new config.

    Args:
        wizard_config: the starting values, shown as defaults (left unchanged).
        validate: returns every problem of a config, each as ``"<field>: ..."``.
        input_fn: reads one answer (default ``input``); EOFError means no more answers.
        print_fn: writes one line (default ``print``).
        max_rounds: how many times the fields with problems are asked again.

    Returns:
        A copy of ``wizard_config`` with the answers; problems left after the
        last round (or after input ended) are printed, and the caller's check reports them.

    Example:
        >>> settings = ask(ConfigPresets.customize("tiny"), validate=lambda c: c.validate(model))

    Raises:
        ValueError: ``max_rounds`` is not a non-negative integer.
    """
    check_non_negative_int(max_rounds, "max_rounds")
    cfg = wizard_config.replace()
    origin = f" (from the {cfg.preset!r} preset)" if cfg.preset else ""
    print_fn(f"Setup wizard{origin}: press Enter to keep the value in [brackets]; 'none' clears an optional one.")
    try:
        for name in editable_fields():
            if cfg.data_source in SOURCE_FIELDS.get(name, DATA_SOURCES):
                ask_field(cfg, name, input_fn=input_fn, print_fn=print_fn)
        _recheck(cfg, validate, input_fn, print_fn, max_rounds)
    except EOFError:  # stdin closed or Ctrl-D: nobody can answer, so stop asking rather than wait
        print_fn("\nNo more input: keeping the remaining settings as they are.")
    return cfg


def ask_field(
    cfg: WizardConfig, name: str, *, input_fn: Callable[[str], str] = input, print_fn: Callable[..., Any] = print
) -> None:
    """Ask one setting and set it on ``cfg``; Enter keeps it, a bad answer is re-asked (``MAX_TRIES`` at most).

    Raises:
        EOFError: from ``input_fn``, when input has ended.
    """
    current = getattr(cfg, name)
    prompt = f"{name} [{_short(format_value(name, current))}]{_hint(name)}: "
    for _ in range(MAX_TRIES):
        answer = input_fn(prompt)
        if not answer.strip():
            return
        try:
            setattr(cfg, name, parse_answer(name, answer))
            return
        except ValueError as err:
            print_fn(f"  {err}")
    print_fn(f"  keeping {name}={format_value(name, current)} after {MAX_TRIES} answers that could not be read")


def _recheck(
    cfg: WizardConfig, validate: Validate, input_fn: Callable[[str], str], print_fn: Callable[..., Any], rounds: int
) -> None:
    """Check ``cfg``; re-ask the fields with problems, at most ``rounds`` times; print what is left."""
    settings = {f.name for f in dataclasses.fields(WizardConfig)}
    for round_number in range(rounds + 1):
        problems = validate(cfg)
        if not problems:
            print_fn("Checked: no problems.")
            return
        fixable = list(dict.fromkeys(problem_field(p) for p in problems if problem_field(p) in settings))
        if round_number == rounds or not fixable:
            _print_problems(f"{len(problems)} problem(s) remain:", problems, print_fn)
            return
        # A model problem is worth knowing, though no answer here fixes it.
        others = [p for p in problems if problem_field(p) not in fixable]
        _print_problems(f"{len(problems)} problem(s); asking those settings again.", others, print_fn)
        for name in fixable:
            _print_problems(None, [p for p in problems if problem_field(p) == name], print_fn)
            ask_field(cfg, name, input_fn=input_fn, print_fn=print_fn)


def _print_problems(title: str | None, problems: list[str], print_fn: Callable[..., Any]) -> None:
    if title:
        print_fn(title)
    for message in problems:
        print_fn(f"  - {message}")


def _hint(name: str) -> str:
    """What may be typed, when the brackets do not say: the choices, yes/no, or 'none'."""
    kind, optional = field_type(name)
    if name in CHOICES:
        return f" ({'/'.join(CHOICES[name])})"
    if kind is bool:
        return " (yes/no/none)" if optional else " (yes/no)"
    if name == "texts":
        return ' (["first", "second"] or none)'
    return " (or none)" if optional else ""


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "CHOICES",
    "NOT_ASKED",
    "ask",
    "ask_field",
    "editable_fields",
    "field_type",
    "format_value",
    "parse_answer",
    "problem_field",
]
