"""The setup wizard: WizardConfig's checks and files, the five reported steps, and the interactive seams."""

from __future__ import annotations

import inspect
import io
import json
import math
import sys
import types

import pytest
import torch
import torch.nn as nn

from utils import models
from utils.training.training_core import TrainingCoordinator
from utils.ui import setup_wizard
from utils.ui.setup_wizard import STEP_NAMES, SetupWizard, WizardConfig, quick_setup

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

# A small built-in run for the TINY model: 6,000 bytes in blocks of 32 -> 168 train / 18 validation sequences.
SMALL_RUN = dict(max_corpus_bytes=6_000, seq_len=32)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("The quick brown fox jumps over the lazy dog.\n" * 40)
    return path


@pytest.fixture
def no_front_ends(monkeypatch):
    """A stdin that is no terminal (CI, a pipe; also under ``pytest -s``), and front ends that fail if asked."""
    monkeypatch.setattr(sys, "stdin", io.StringIO())

    def never(*args, **kwargs):
        raise AssertionError("the wizard asked for input where nobody can answer")

    for name, function in (("form", "build_form"), ("terminal", "ask")):
        monkeypatch.setitem(sys.modules, f"utils.ui.{name}", types.SimpleNamespace(**{function: never}))


# -- validate ----------------------------------------------------------------------


def test_defaults_validate_with_a_model(tiny_gpt):
    model, config = tiny_gpt
    assert WizardConfig(**SMALL_RUN).validate(model, config) == []
    assert WizardConfig(**SMALL_RUN).validate(model) == []  # the config is read from model.config


def test_validate_collects_every_error_at_once(tiny_gpt):
    model, config = tiny_gpt
    bad = WizardConfig(learning_rate=-0.1, data_source="file", seq_len=4096)
    errors = bad.validate(model, config)
    fields = [message.split(": ")[0] for message in errors]
    assert sorted(fields) == ["dataset_path", "learning_rate", "seq_len"]
    by_field = dict(message.split(": ", 1) for message in errors)
    assert by_field["learning_rate"] == "must be a positive finite number, got -0.1"  # the engine's own wording
    assert "pass dataset_path=" in by_field["dataset_path"]
    assert "exceeds the model's max_seq_len=32" in by_field["seq_len"]


def test_validate_reports_every_bad_field_with_the_engine_checks():
    bad = WizardConfig(
        n_epochs=0, batch_size="8", learning_rate=True, precision="fp8", grad_clip=-1.0, early_stopping_patience=0
    )
    errors = bad.validate()
    by_field = dict(message.split(": ", 1) for message in errors)
    assert set(by_field) == {
        "n_epochs",
        "batch_size",
        "learning_rate",
        "precision",
        "grad_clip",
        "early_stopping_patience",
    }
    assert "not text" in by_field["batch_size"] and "a bool is not a number" in by_field["learning_rate"]


def test_check_raises_one_error_listing_them_all():
    with pytest.raises(ValueError, match=r"2 problem\(s\)") as info:
        WizardConfig(n_epochs=-1, data_source="strings").check()
    assert "\n- n_epochs: " in str(info.value) and "\n- texts: " in str(info.value)


def test_validate_checks_the_tokenizer_fits_the_vocabulary():
    model, config = models.tiny_gpt(d_model=32, n_layers=2, n_heads=2, max_seq_len=32, vocab_size=100)
    errors = WizardConfig(**SMALL_RUN).validate(model, config)
    assert errors == [
        "model: its vocab_size=100 is below the byte tokenizer's 256 ids, so text holds ids the model cannot "
        "embed; build the model with vocab_size>=256"
    ]


def test_validate_reads_the_data_as_training_would(tmp_path, text_file):
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    assert WizardConfig(data_source="file", dataset_path=str(text_file), seq_len=32).validate() == []
    [error] = WizardConfig(data_source="file", dataset_path=str(binary), seq_len=32).validate()
    assert error.startswith("dataset_path: ") and "is not a text file (NUL byte at offset 0)" in error
    [error] = WizardConfig(data_source="file", dataset_path=str(tmp_path / "missing.txt")).validate()
    assert error.startswith("dataset_path: nothing at")
    [error] = WizardConfig(data_source="file", dataset_path=str(tmp_path)).validate()
    assert "pass data_source='folder'" in error
    [error] = WizardConfig(dataset_path=str(text_file)).validate()
    assert error.startswith("dataset_path: is set, but data_source='builtin' does not read it")


def test_validate_checks_the_warm_up_fits_the_run():
    [error] = WizardConfig(n_epochs=1, batch_size=8, warmup_steps=500, **SMALL_RUN).validate()
    assert error.startswith("warmup_steps: 500 exceeds the 21 optimizer steps this run takes")


def test_validate_reports_bf16_on_a_gpu_without_it(monkeypatch):
    # A T4 (compute capability 7.5) on this CPU machine: bf16 must be refused, by resolve_precision.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    [error] = WizardConfig(device="cuda", precision="bf16", **SMALL_RUN).validate()
    assert error.startswith("precision: ") and "compute capability >= 8.0" in error and "Tesla T4" in error
    assert WizardConfig(device="cuda", precision="fp16", **SMALL_RUN).validate() == []


def test_validate_reports_memory_that_cannot_fit(tiny_gpt):
    model, config = tiny_gpt
    # Ten million sequences of 32 tokens at once: terabytes of activations on any machine.
    [error] = WizardConfig(batch_size=10_000_000, **SMALL_RUN).validate(model, config)
    assert error.startswith("batch_size: training needs about") and "(estimate: Tier 1 memory check" in error
    assert "raise gradient_accumulation_steps" in error


# -- the data sources --------------------------------------------------------------


def test_folder_source_reads_its_text_files_sorted(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    for name, text in (("b.txt", "bravo " * 10), ("a.md", "alpha " * 10), ("sub/c.py", "charlie = 1\n" * 10)):
        (tmp_path / name).write_text(text)
    (tmp_path / ".git" / "HEAD.txt").write_text("hidden")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00")
    config = WizardConfig(data_source="folder", dataset_path=str(tmp_path), seq_len=16)
    assert config.validate() == []
    assert config.to_train_kwargs()["train_data"] == ["alpha " * 10, "bravo " * 10, "charlie = 1\n" * 10]


def test_folder_source_names_a_file_that_is_not_text_and_an_empty_folder(tmp_path):
    (tmp_path / "good.txt").write_text("fine text " * 20)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe broken")
    [error] = WizardConfig(data_source="folder", dataset_path=str(tmp_path), seq_len=16).validate()
    assert error.startswith("dataset_path: ") and "bad.txt" in error and "invalid UTF-8" in error
    (tmp_path / "empty").mkdir()
    [error] = WizardConfig(data_source="folder", dataset_path=str(tmp_path / "empty")).validate()
    assert "holds no text files (*.txt, *.md" in error


def test_strings_source_passes_the_texts():
    texts = ["def f(x):\n    return x\n" * 20, "print('hello')\n" * 20]
    config = WizardConfig(data_source="strings", texts=texts, seq_len=16)
    assert config.validate() == []
    assert config.to_train_kwargs()["train_data"] == texts
    [error] = WizardConfig(data_source="strings", texts="just one string").validate()
    assert error.startswith("texts: data_source='strings' needs a non-empty list of strings")


def test_train_kwargs_are_train_keywords(text_file):
    config = WizardConfig(data_source="file", dataset_path=text_file, use_mixed_precision=False, seq_len=32)
    kwargs = config.to_train_kwargs()
    assert set(kwargs) <= set(inspect.signature(TrainingCoordinator.train).parameters)
    for name in ("n_epochs", "learning_rate", "batch_size", "gradient_accumulation_steps", "warmup_steps", "seq_len"):
        assert name in kwargs
    assert kwargs["use_amp"] is False and "use_mixed_precision" not in kwargs
    assert kwargs["train_data"] == str(text_file)
    assert WizardConfig().to_train_kwargs()["train_data"] is None  # the built-in corpus


def test_train_kwargs_refuse_a_config_with_problems():
    with pytest.raises(ValueError, match="learning_rate: must be a positive finite number"):
        WizardConfig(learning_rate=0).to_train_kwargs()


# -- save and load -----------------------------------------------------------------


def test_save_load_round_trip(tmp_path, text_file):
    config = WizardConfig(
        data_source="file", dataset_path=text_file, learning_rate=3e-4, warmup_steps=5, run_name="r1", preset="chat"
    )
    path = config.save(tmp_path / "wizard.json")
    saved = json.loads(path.read_text())
    assert saved["format_version"] == setup_wizard.FORMAT_VERSION and saved["dataset_path"] == str(text_file)
    loaded = WizardConfig.load(path)
    assert loaded.to_dict() == config.to_dict()
    strings = WizardConfig(data_source="strings", texts=["a", "b"], grad_clip=None)
    assert WizardConfig.load(strings.save(tmp_path / "s.json")) == strings


def _write(tmp_path, **changes):
    data = {**WizardConfig().to_dict(), **changes}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_load_names_an_unknown_key(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr'\] \(did you mean 'learning_rate' for 'lr'\?\)"):
        WizardConfig.load(_write(tmp_path, lr=0.1))


def test_load_names_every_key_of_the_wrong_type(tmp_path):
    with pytest.raises(ValueError) as info:
        WizardConfig.load(_write(tmp_path, learning_rate="fast", n_epochs=True, texts=[1, 2]))
    message = str(info.value)
    assert "learning_rate: expected float, got str 'fast'" in message
    assert "n_epochs: expected int, got bool True" in message
    assert "texts: expected list[str] | None, got list [1, 2]" in message


@pytest.mark.parametrize("version", [2, None, "1", True])
def test_load_refuses_another_format_version(tmp_path, version):
    with pytest.raises(ValueError, match=f"format_version: expected 1, got {version!r}"):
        WizardConfig.load(_write(tmp_path, format_version=version))


def test_load_refuses_a_file_that_is_not_a_config(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a JSON wizard config"):
        WizardConfig.load(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        WizardConfig.load(tmp_path / "list.json")
    with pytest.raises(FileNotFoundError, match="no wizard config file there"):
        WizardConfig.load(tmp_path / "missing.json")


# -- the wizard --------------------------------------------------------------------


def test_setup_wizard_constructs_with_no_arguments():
    wizard = SetupWizard()
    assert wizard.report == [] and wizard.quiet is False


def test_the_wizard_reports_its_five_steps(tiny_gpt, capsys):
    model, config = tiny_gpt
    wizard = SetupWizard()
    result = wizard.run(model, config, preset="tiny", interactive=False, **SMALL_RUN)
    assert isinstance(result, WizardConfig) and result.preset == "tiny" and result.seq_len == 32
    report = wizard.report
    assert [step["name"] for step in report] == list(STEP_NAMES)
    assert [step["step"] for step in report] == [1, 2, 3, 4, 5]
    assert all(step["errors"] == [] for step in report)
    data, tokenizer, model_check, settings, summary = report
    assert (data["n_bytes"], data["n_tokens"], data["n_train_sequences"], data["n_val_sequences"]) == (
        6000,
        6000,
        168,
        18,
    )
    assert tokenizer["fits"] is True and tokenizer["model_vocab_size"] == 256
    assert model_check["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert model_check["shape_check"] and all(row["status"] == "pass" for row in model_check["shape_check"])
    assert settings["precision"] in ("fp32", "bf16") and settings["precision_reason"]
    assert settings["optimizer_steps"] == 21
    assert summary["time"]["seconds_per_step"] > 0 and summary["time"]["optimizer_steps"] == 21
    assert summary["memory"]["estimate_mb"] > summary["memory"]["static_mb"] > 0
    assert summary["memory"]["available_mb"] > 0 and summary["memory"]["device"] == str(summary["time"]["device"])
    assert summary["config"] == result.to_dict()
    printed = capsys.readouterr().out.splitlines()
    assert [line.split("]")[0] for line in printed] == [f"setup wizard [{n}/5" for n in range(1, 6)]
    print("\n".join(step["summary"] for step in report))


@pytest.mark.parametrize("native_bf16", [True, False])
def test_the_settings_step_resolves_the_precision_for_this_cpu(tiny_gpt, cpu_bf16, native_bf16):
    cpu_bf16(native_bf16)
    model, config = tiny_gpt
    wizard = SetupWizard(quiet=True, measure_time=False)
    wizard.run(model, config, interactive=False, device="cpu", **SMALL_RUN)
    settings = wizard.report[3]
    assert settings["precision"] == ("bf16" if native_bf16 else "fp32")
    assert settings["status"] == ("ok" if native_bf16 else "warn")  # the engine's warning becomes a note
    if native_bf16:
        assert settings["notes"] == [] and settings["precision_reason"] == "AMP on cpu with native bf16"
    else:
        assert "has no native bf16" in settings["precision_reason"] and "training in FP32" in settings["notes"][0]


def test_quiet_wizard_prints_nothing(tiny_gpt, capsys):
    model, config = tiny_gpt
    SetupWizard(quiet=True, measure_time=False).run(model, config, interactive=False, **SMALL_RUN)
    assert capsys.readouterr().out == ""


def test_the_wizard_raises_with_every_problem_and_keeps_its_report(tiny_gpt):
    model, config = tiny_gpt
    wizard = SetupWizard(quiet=True)
    with pytest.raises(ValueError, match=r"found 2 problem\(s\)") as info:
        wizard.run(model, config, preset="chat", interactive=False, seq_len=32, learning_rate=-1.0)
    assert "\n- dataset_path: " in str(info.value) and "\n- learning_rate: " in str(info.value)
    assert len(wizard.report) == 5 and wizard.report[-1]["status"] == "error"
    assert wizard.report[-1]["time"] is None and "fix the problems first" in wizard.report[-1]["time_note"]


class BrokenModel(nn.Module):
    """A model whose forward always fails, with a config that looks fine."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 4)
        self.config = {"vocab_size": 256, "max_seq_len": 32}

    def forward(self, input_ids):
        raise RuntimeError("boom: this layer is not wired")


def test_a_model_that_fails_is_reported_by_the_model_check():
    wizard = SetupWizard(quiet=True)
    with pytest.raises(ValueError, match="boom: this layer is not wired"):
        wizard.run(BrokenModel(), interactive=False, **SMALL_RUN)
    model_step = wizard.report[2]
    assert model_step["name"] == "model" and model_step["status"] == "error"
    assert model_step["errors"][0].startswith("model: ") and "boom" in model_step["errors"][0]
    assert model_step["parameters"]["total"] == 20


def test_run_rejects_an_unknown_override(tiny_gpt):
    model, config = tiny_gpt
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['epochs'\]"):
        SetupWizard(quiet=True).run(model, config, interactive=False, epochs=2)


def test_quick_setup_feeds_the_training_coordinator(tiny_gpt, tmp_path):
    model, config = tiny_gpt
    wizard_config = quick_setup(model, config, "tiny", quiet=True, run_name="wizard", **SMALL_RUN)
    estimate = setup_wizard.estimate_training_time(model, config, wizard_config)
    coordinator = TrainingCoordinator(output_dir=tmp_path, progress=False)
    results = coordinator.train(model, config, **wizard_config.to_train_kwargs())
    assert results["optimizer_steps"] == estimate["optimizer_steps"] == 21  # the wizard counts steps as the engine
    assert results["data_source"] == "python-stdlib" and results["run_dir"].endswith("wizard")
    assert results["loss_history"] and all(math.isfinite(loss) for loss in results["loss_history"])
    print(f"\nestimated {estimate['total_s']:.2f} s; trained in {results['training_time_seconds']:.2f} s")


# -- asking ------------------------------------------------------------------------


def test_interactive_none_under_pytest_asks_nothing(tiny_gpt, no_front_ends):
    model, config = tiny_gpt
    assert not sys.stdin.isatty()  # nobody can answer
    assert setup_wizard.interaction_mode(None) == "none"
    result = SetupWizard(quiet=True, measure_time=False).run(model, config, **SMALL_RUN)
    assert result.seq_len == 32 and len(result.validate(model, config)) == 0


def test_interactive_true_without_a_terminal_fails_fast(tiny_gpt, no_front_ends):
    model, config = tiny_gpt
    with pytest.raises(ValueError, match="interactive=True, but there is no notebook or terminal"):
        SetupWizard(quiet=True).run(model, config, interactive=True)


def test_a_terminal_asks_through_the_terminal_seam(tiny_gpt, monkeypatch):
    model, config = tiny_gpt
    calls = []

    def ask(wizard_config, *, validate):
        calls.append(validate(wizard_config.replace(learning_rate=-1.0)))
        return wizard_config.replace(n_epochs=2)

    monkeypatch.setattr(setup_wizard, "_stdin_is_terminal", lambda: True)
    monkeypatch.setitem(sys.modules, "utils.ui.terminal", types.SimpleNamespace(ask=ask))
    result = SetupWizard(quiet=True, measure_time=False).run(model, config, **SMALL_RUN)
    assert result.n_epochs == 2
    assert calls == [["learning_rate: must be a positive finite number, got -1.0"]]


def test_a_notebook_shows_the_form_through_its_seam(tiny_gpt, monkeypatch):
    model, config = tiny_gpt
    shown, built = [], {}

    def build_form(wizard_config, *, validate, on_apply):
        built.update(config=wizard_config, validate=validate, on_apply=on_apply)
        return "the form"

    monkeypatch.setattr(setup_wizard, "is_interactive", lambda stream=None: True)  # a notebook kernel
    monkeypatch.setitem(sys.modules, "utils.ui.form", types.SimpleNamespace(build_form=build_form))
    monkeypatch.setattr("IPython.display.display", shown.append)
    wizard = SetupWizard(quiet=True, measure_time=False)
    result = wizard.run(model, config, **SMALL_RUN)
    assert shown == ["the form"] and built["config"] is result  # the form edits the returned config in place
    result.n_epochs = 1
    assert built["on_apply"](result) is wizard.report and wizard.report[-1]["config"]["n_epochs"] == 1


def test_a_missing_front_end_is_not_implemented_yet(tiny_gpt, monkeypatch):
    model, config = tiny_gpt
    monkeypatch.setattr(setup_wizard, "_stdin_is_terminal", lambda: True)
    monkeypatch.setitem(sys.modules, "utils.ui.terminal", None)  # import fails as for a module not written yet
    with pytest.raises(NotImplementedError, match=r"terminal questions \(utils.ui.terminal\) is not written yet"):
        SetupWizard(quiet=True).run(model, config, **SMALL_RUN)
    assert setup_wizard.interaction_mode(False) == "none"


def test_the_missing_path_message_blames_the_preset_only_when_the_preset_reads_user_text():
    from utils.ui.presets import ConfigPresets

    chat = " ".join(ConfigPresets.get("chat").validate())
    assert "the 'chat' preset trains on your own text" in chat
    switched = " ".join(ConfigPresets.get("tiny").replace(data_source="file").validate())
    assert "dataset_path: data_source='file' needs the path" in switched
    assert "preset trains on your own text" not in switched  # 'tiny' trains on the built-in corpus
