"""The wizard's notebook form, built with real ipywidgets and driven through its controls and buttons."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import ipywidgets as widgets
import pytest
from tiny_models import TINY

from utils import models
from utils.ui import form as form_module
from utils.ui import setup_wizard
from utils.ui.form import build_form
from utils.ui.presets import ConfigPresets
from utils.ui.setup_wizard import SetupWizard, WizardConfig

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

# The 'tiny' preset cut to the TINY model (max_seq_len 32) and 6,000 bytes of the built-in corpus.
SMALL_RUN = dict(max_corpus_bytes=6_000, seq_len=32)


@pytest.fixture
def small_config():
    return ConfigPresets.customize("tiny", **SMALL_RUN)


@pytest.fixture
def built(tiny_gpt, small_config):
    """A form on ``small_config`` that validates against the tiny GPT, and the configs ``on_apply`` received."""
    model, config = tiny_gpt
    applied = []
    form = build_form(small_config, validate=lambda c: c.validate(model, config), on_apply=applied.append)
    return form, small_config, applied


def _shown(form) -> dict[str, str]:
    """The fields that show a message, and its text."""
    return {name: html.value for name, html in form.messages.items() if html.value}


def test_one_prefilled_control_per_field(built):
    form, cfg, _ = built
    expected = [f.name for f in dataclasses.fields(WizardConfig) if f.name != "preset"]  # preset is shown in the title
    assert list(form.fields) == list(form.messages) == expected
    assert isinstance(form.fields["data_source"], widgets.Dropdown) and form.fields["data_source"].value == "builtin"
    assert isinstance(form.fields["precision"], widgets.Dropdown) and "bf16" in form.fields["precision"].options
    assert form.fields["use_mixed_precision"].value == "none"  # None: follow precision
    assert isinstance(form.fields["texts"], widgets.Textarea) and form.fields["texts"].value == ""
    assert form.fields["learning_rate"].value == "0.001" and form.fields["seq_len"].value == "32"
    assert form.fields["max_steps"].value == "" and cfg.max_steps is None  # an empty box is None
    assert form.check_button in form.children[-2].children and form.apply_button in form.children[-2].children


def test_a_good_config_is_applied_in_place_and_handed_on_once(built):
    form, cfg, applied = built
    form.fields["learning_rate"].value = "2e-3"
    form.fields["n_epochs"].value = "2"
    form.fields["max_steps"].value = "5"
    form.fields["use_mixed_precision"].value = "no"
    form.fields["warmup_steps"].value = ""  # an empty optional box is None
    form.apply_button.click()
    assert applied == [cfg] and applied[0] is cfg  # the very object the wizard returned
    assert (cfg.learning_rate, cfg.n_epochs, cfg.max_steps) == (2e-3, 2, 5)
    assert cfg.use_mixed_precision is False and cfg.warmup_steps is None
    assert _shown(form) == {} and "Applied" in form.summary.value


def test_a_bad_learning_rate_and_a_missing_path_show_next_to_their_fields(built):
    form, cfg, applied = built
    form.fields["learning_rate"].value = "-1"
    form.fields["data_source"].value = "file"
    form.apply_button.click()
    shown = _shown(form)
    assert applied == []
    assert sorted(shown) == ["dataset_path", "learning_rate"]
    assert "must be a positive finite number" in shown["learning_rate"]
    assert form_module.ERROR_COLOR in shown["learning_rate"]  # shown in red
    assert "needs the path of your UTF-8 text file" in shown["dataset_path"]
    assert "2 problem(s)" in form.summary.value
    assert cfg.learning_rate == -1.0 and cfg.data_source == "file"  # applied in place, though not handed on


def test_fixing_the_problems_then_applying_hands_the_config_on(built, tmp_path):
    form, cfg, applied = built
    text_file = tmp_path / "notes.txt"
    # 9,000 bytes: 281 sequences of 32, so more optimizer steps than the preset's 10 warm-up steps.
    text_file.write_text("The quick brown fox jumps over the lazy dog.\n" * 200)
    form.fields["data_source"].value = "file"
    form.apply_button.click()
    assert applied == [] and "dataset_path" in _shown(form)
    form.fields["dataset_path"].value = str(text_file)
    form.apply_button.click()
    assert _shown(form) == {}, _shown(form)
    assert applied == [cfg] and cfg.dataset_path == str(text_file)


def test_text_that_is_not_a_number_is_a_message_not_an_exception(built):
    form, cfg, applied = built
    before = cfg.to_dict()
    form.fields["learning_rate"].value = "fast"
    form.fields["batch_size"].value = "4.5"
    form.fields["seed"].value = ""
    form.check_button.click()
    shown = _shown(form)
    assert sorted(shown) == ["batch_size", "learning_rate", "seed"]
    assert "&#x27;fast&#x27; is not a number" in shown["learning_rate"]  # the message is HTML-escaped
    assert "&#x27;4.5&#x27; is not a whole number" in shown["batch_size"] and "needs a whole number" in shown["seed"]
    assert cfg.to_dict() == before and applied == []  # Check changes nothing


def test_check_shows_a_bad_value_without_applying_it(built):
    form, cfg, applied = built
    form.fields["grad_clip"].value = "0"
    form.check_button.click()
    assert list(_shown(form)) == ["grad_clip"] and cfg.grad_clip == 1.0 and applied == []
    form.fields["grad_clip"].value = "none"  # typed 'none' clears an optional setting too
    form.check_button.click()
    assert _shown(form) == {} and "No problems" in form.summary.value


def test_model_problems_show_at_the_top(small_config):
    model, config = models.tiny_gpt(**{**TINY, "vocab_size": 100})  # fewer ids than the byte tokenizer's 256
    form = build_form(small_config, validate=lambda c: c.validate(model, config), on_apply=pytest.fail)
    form.apply_button.click()
    assert _shown(form) == {}
    assert "model: its vocab_size=100 is below the byte tokenizer" in form.summary.value


def test_texts_are_typed_one_after_another(small_config):
    applied = []
    form = build_form(small_config, validate=lambda c: c.validate(), on_apply=applied.append)
    form.fields["data_source"].value = "strings"
    form.fields["texts"].value = "def first():\n    return 1\n---\ndef second():\n    return 2\n"
    form.fields["max_corpus_bytes"].value = "50_000"
    form.fields["seq_len"].value = "4"
    form.fields["warmup_steps"].value = ""  # None: 10% of this short run
    form.apply_button.click()
    assert _shown(form) == {}, _shown(form)
    assert applied[0].texts == ["def first():\n    return 1", "def second():\n    return 2"]
    again = build_form(applied[0], validate=lambda c: c.validate(), on_apply=applied.append)
    assert again.fields["texts"].value == form.fields["texts"].value.rstrip("\n")  # it reads back as typed


def test_the_wizard_shows_the_real_form_in_a_notebook(tiny_gpt, monkeypatch):
    model, config = tiny_gpt
    shown = []
    monkeypatch.setattr(setup_wizard, "is_interactive", lambda stream=None: True)  # a notebook kernel
    monkeypatch.setattr("IPython.display.display", shown.append)
    wizard = SetupWizard(quiet=True, measure_time=False)
    result = wizard.run(model, config, preset="tiny", **SMALL_RUN)
    [form] = shown
    form.fields["n_epochs"].value = "2"
    form.apply_button.click()
    assert result.n_epochs == 2 and wizard.report[-1]["config"]["n_epochs"] == 2  # on_apply reviewed it again
    assert wizard.report[-1]["status"] == "ok"


def test_the_form_module_imports_ipywidgets_only_where_the_form_is_built():
    tree = ast.parse(Path(form_module.__file__).read_text())
    [builder] = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "build_form"]
    at_top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert "ipywidgets" in _imported(builder)  # the check can fail: the form does import it, in build_form
    assert not any("ipywidgets" in _imported(node) for node in at_top)


def _imported(tree: ast.AST) -> set[str]:
    """The modules an import statement (or an ``import_optional`` call) names anywhere in ``tree``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "import_optional" and node.args:
            names.add(node.args[0].value)  # the library's one seam for optional packages
    return names
