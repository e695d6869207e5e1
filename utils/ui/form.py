"""The setup wizard's notebook form: one ipywidgets control per ``WizardConfig`` field.

The controls are built from the dataclass's fields and type hints, so a new
field gets a control without an edit here: a Dropdown for a choice or an
optional yes/no, a Checkbox for a plain bool, a Textarea for the texts, and a
Text box for everything else (numbers included, so a mistyped number is a
message next to its field rather than an exception; an empty box is None for
an optional field). Text is read with the terminal wizard's own parser.

"Check" shows every problem next to its field, and problems with the model at
the top. "Use this config" writes the values into the config object the form
was built on (in place), checks it, and calls ``on_apply`` only when nothing is wrong.

Example:
    >>> form = build_form(settings, validate=lambda c: c.validate(model), on_apply=print)
    >>> form.fields["learning_rate"].value = "3e-4"
    >>> form.apply_button.click()
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from utils.optional import import_optional
from utils.ui.config import WizardConfig
from utils.ui.terminal import CHOICES, editable_fields, field_type, format_value, parse_answer, problem_field

if TYPE_CHECKING:
    import ipywidgets

TEXTS_SEPARATOR_LINE = "\n---\n"  # how the Textarea shows several texts; parse_answer splits on it
DESCRIPTION_WIDTH = "200px"
ERROR_COLOR = "#c62828"
OK_COLOR = "#2e7d32"


def build_form(
    wizard_config: WizardConfig,
    *,
    validate: Callable[[WizardConfig], list[str]],
    on_apply: Callable[[WizardConfig], Any],
) -> ipywidgets.VBox:
    """A form that edits ``wizard_config`` in place, checks it with ``validate``, and hands it to ``on_apply``.

    Args:
        wizard_config: the config to edit; its values prefill the form.
        validate: returns every problem of a config, each as ``"<field>: ..."`` (``"model: ..."`` for the model).
        on_apply: called with ``wizard_config`` when "Use this config" finds no problem.

    Returns:
        A VBox with attributes ``fields`` ({name: control}), ``messages`` ({name: HTML}),
        ``summary`` (HTML: the outcome and the model's problems), ``check_button``,
        ``apply_button`` and ``output`` (an Output that shows what ``on_apply`` prints).
    """
    # Imported here, so `import utils` and the terminal wizard never need it.
    widgets = import_optional("ipywidgets", "the setup wizard's notebook form", alternative="or pass interactive=False")

    names = editable_fields()
    form = widgets.VBox()
    form.fields = {name: _control(widgets, name, getattr(wizard_config, name)) for name in names}
    form.messages = {name: widgets.HTML() for name in names}
    form.summary = widgets.HTML()
    form.check_button = widgets.Button(description="Check", icon="check")
    form.apply_button = widgets.Button(description="Use this config", button_style="primary")
    form.output = widgets.Output()  # a button callback's prints go nowhere in a notebook unless captured
    origin = f" (from the {html.escape(repr(wizard_config.preset))} preset)" if wizard_config.preset else ""
    rows = [widgets.HBox([form.fields[name], form.messages[name]]) for name in names]
    buttons = widgets.HBox([form.check_button, form.apply_button])
    title = widgets.HTML(f"<b>Setup wizard</b>{origin}: empty box = None for an optional setting")
    form.children = (title, form.summary, *rows, buttons, form.output)
    form.check_button.on_click(lambda _button: check_form(form, wizard_config, validate))
    form.apply_button.on_click(lambda _button: apply_form(form, wizard_config, validate, on_apply))
    return form


def check_form(form: ipywidgets.VBox, wizard_config: WizardConfig, validate: Callable[..., list[str]]) -> list[str]:
    """Show every problem of the form's values (without changing ``wizard_config``) and return them."""
    values, unreadable = read_form(form)
    problems = _merge(unreadable, validate(wizard_config.replace(**values)))
    show_problems(form, problems)
    return problems


def apply_form(
    form: ipywidgets.VBox,
    wizard_config: WizardConfig,
    validate: Callable[..., list[str]],
    on_apply: Callable[[WizardConfig], Any],
) -> list[str]:
    """Write the form's values into ``wizard_config``, check it, and call ``on_apply`` when nothing is wrong.

    Returns:
        The problems shown; ``on_apply`` ran when it is empty.
    """
    values, unreadable = read_form(form)
    for name, value in values.items():
        setattr(wizard_config, name, value)  # in place: the wizard returned this very object
    problems = _merge(unreadable, validate(wizard_config))
    show_problems(form, problems)
    if problems:
        return problems
    form.output.clear_output()
    with form.output:  # the review's printed steps appear under the form
        on_apply(wizard_config)
    form.summary.value = _colored("Applied: the config is ready.", OK_COLOR)
    return problems


def read_form(form: ipywidgets.VBox) -> tuple[dict[str, Any], dict[str, str]]:
    """The value of every control that reads as its field's type, and a message for each that does not."""
    values, unreadable = {}, {}
    for name, control in form.fields.items():
        try:
            values[name] = control.value if isinstance(control.value, bool) else parse_answer(name, control.value)
        except ValueError as err:
            unreadable[name] = str(err)
    return values, unreadable


def show_problems(form: ipywidgets.VBox, problems: list[str]) -> None:
    """Each problem in red next to its field; the model's (and any other field's) at the top, with a count."""
    for name, message_html in form.messages.items():
        mine = [p for p in problems if problem_field(p) == name]
        message_html.value = "<br>".join(_colored(p, ERROR_COLOR) for p in mine)
    if not problems:
        form.summary.value = _colored("No problems found.", OK_COLOR)
        return
    general = [p for p in problems if problem_field(p) not in form.messages]
    lines = [f"{len(problems)} problem(s); each is shown next to its setting.", *general]
    form.summary.value = "<br>".join(_colored(line, ERROR_COLOR) for line in lines)


def _merge(unreadable: dict[str, str], problems: list[str]) -> list[str]:
    """Unreadable controls first; ``validate``'s messages about those fields judged the old value, so drop them."""
    return list(unreadable.values()) + [p for p in problems if problem_field(p) not in unreadable]


def _control(widgets: Any, name: str, value: Any) -> ipywidgets.Widget:
    """The control for one field, chosen by its type hint and prefilled with ``value``."""
    kind, optional = field_type(name)
    common = {"description": name, "style": {"description_width": DESCRIPTION_WIDTH}}
    if name in CHOICES:
        options = list(CHOICES[name]) + ([value] if value not in CHOICES[name] else [])  # a bad value stays visible
        return widgets.Dropdown(options=options, value=value, **common)
    if kind is bool and optional:
        options = [("auto (None)", "none"), ("yes", "yes"), ("no", "no")]
        return widgets.Dropdown(options=options, value=format_value(name, value), **common)
    if kind is bool:
        return widgets.Checkbox(value=bool(value), indent=False, **common)
    if name == "texts":
        placeholder = "one text, or several with a line of --- between them; empty = None"
        return widgets.Textarea(value=_texts_box_value(value), placeholder=placeholder, rows=4, **common)
    placeholder = "empty = None" if optional else ""
    return widgets.Text(value=format_value(name, value, none=""), placeholder=placeholder, **common)


def _texts_box_value(texts: Any) -> str:
    """Texts one after another with a '---' line between them; JSON where that would read back differently."""
    if texts is None:
        return ""
    joined = TEXTS_SEPARATOR_LINE.join(texts) if isinstance(texts, (list, tuple)) else None
    if joined is not None and joined.strip() and parse_answer("texts", joined) == list(texts):
        return joined
    return format_value("texts", texts)


def _colored(text: str, color: str) -> str:
    return f'<span style="color: {color}">{html.escape(text)}</span>'


__all__ = ["apply_form", "build_form", "check_form", "read_form", "show_problems"]
