"""The wizard's terminal questions: answers from a list, from a closed stdin, and through a real pseudo-terminal."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import TERMINAL_GIVE_UP_S, TINY, read_terminal

from utils.ui import terminal
from utils.ui.presets import ConfigPresets
from utils.ui.setup_wizard import WizardConfig
from utils.ui.terminal import ask, editable_fields, format_value, parse_answer

REPO_ROOT = Path(__file__).resolve().parents[1]
# The 'tiny' preset cut to the TINY model (max_seq_len 32) and 6,000 bytes of the built-in corpus.
SMALL_RUN = dict(max_corpus_bytes=6_000, seq_len=32)
CTRL_D = "\x04"  # the terminal's end of input, at the start of a line


@pytest.fixture
def small_config():
    return ConfigPresets.customize("tiny", **SMALL_RUN)


class Answers:
    """An ``input_fn`` that answers each question by its field's name (Enter when not given), then ends input.

    ``script`` maps a field to its answers, in order; ``questions`` counts what was asked, in order.
    ``stop_after`` questions, it raises EOFError as ``input`` does on a closed stdin.
    """

    def __init__(self, stop_after: int = 1000, **script: list[str]) -> None:
        self.script, self.stop_after, self.questions = script, stop_after, []

    def __call__(self, prompt: str) -> str:
        if len(self.questions) >= self.stop_after:
            raise EOFError
        name = prompt.split(" ", 1)[0]
        self.questions.append(name)
        return self.script.get(name, []).pop(0) if self.script.get(name) else ""


# -- reading answers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("learning_rate", " 3e-4 ", 3e-4),
        ("max_corpus_bytes", "50_000", 50_000),
        ("warmup_steps", "None", None),
        ("warmup_steps", "", None),
        ("use_mixed_precision", "yes", True),
        ("use_mixed_precision", "off", False),
        ("data_source", "FILE", "file"),
        ("device", "cuda:1", "cuda:1"),
        ("texts", '["a", "b"]', ["a", "b"]),
        ("texts", "one\n---\ntwo\n", ["one", "two"]),
    ],
)
def test_answers_read_as_the_fields_type(name, text, value):
    assert parse_answer(name, text) == value
    assert type(parse_answer(name, text)) is type(value)  # 50_000 is an int, not a float


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("batch_size", "1.5", "batch_size: '1.5' is not a whole number; type one like 4"),
        ("learning_rate", "none", "learning_rate: 'none' is not a number; type one like 0.001 or 1e-3"),
        ("seq_len", "long", "seq_len: 'long' is not a whole number; type one like 4 (or 'none')"),
        ("data_source", "web", "data_source: 'web' is not one of builtin, file, folder, strings"),
        ("use_mixed_precision", "maybe", "use_mixed_precision: 'maybe' is not yes or no"),
        ("texts", "[1, 2]", "texts: a JSON list of strings is needed"),
    ],
)
def test_a_bad_answer_names_the_field_and_says_what_to_type(name, text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_answer(name, text)


def test_every_setting_reads_back_as_it_is_shown():
    cfg = ConfigPresets.customize("chat", use_mixed_precision=True, run_name="r1", max_steps=7, grad_clip=None)
    cfg = cfg.replace(dataset_path="notes.txt", texts=["a b", 'say "hi"'])  # every optional field set, but one
    for name in editable_fields():
        value = getattr(cfg, name)
        assert parse_answer(name, format_value(name, value)) == value, name


# -- asking, with answers from a list -------------------------------------------------


def test_good_answers_a_bad_one_re_asked_and_enter_for_the_rest(small_config):
    answers = Answers(n_epochs=["2"], learning_rate=["fast", "2e-3"], use_mixed_precision=["no"])
    printed = []
    result = ask(small_config, validate=lambda c: c.validate(), input_fn=answers, print_fn=printed.append)
    assert (result.n_epochs, result.learning_rate, result.use_mixed_precision) == (2, 2e-3, False)
    assert result.replace(n_epochs=1, learning_rate=1e-3, use_mixed_precision=None) == small_config  # Enter kept
    assert small_config.n_epochs == 1  # the caller's config is left alone
    assert answers.questions.count("learning_rate") == 2 and answers.questions.count("n_epochs") == 1
    assert "dataset_path" not in answers.questions  # the built-in corpus reads no path
    assert "  learning_rate: 'fast' is not a number; type one like 0.001 or 1e-3" in printed
    assert printed[-1] == "Checked: no problems."


def test_only_the_fields_with_problems_are_asked_again(small_config, tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("The quick brown fox jumps over the lazy dog.\n" * 200)
    answers = Answers(data_source=["file"], dataset_path=["", str(text_file)], warmup_steps=["1000", "none"])
    printed = []
    result = ask(small_config, validate=lambda c: c.validate(), input_fn=answers, print_fn=printed.append)
    assert result.dataset_path == str(text_file) and result.warmup_steps is None
    first_pass = [name for name in editable_fields() if name != "texts"]  # 'file' reads dataset_path, not texts
    # The warm-up is checked once the data reads, so it is found (and asked) in the second round.
    assert answers.questions == [*first_pass, "dataset_path", "warmup_steps"]
    assert any(line.startswith("  - dataset_path: data_source='file' needs the path") for line in printed)


def test_rounds_of_questions_are_bounded(small_config):
    answers = Answers()
    printed = []

    def never_happy(cfg: WizardConfig) -> list[str]:
        return ["n_epochs: always wrong here"]

    result = ask(small_config, validate=never_happy, input_fn=answers, print_fn=printed.append, max_rounds=2)
    assert answers.questions.count("n_epochs") == 1 + 2 and result == small_config
    assert printed[-2:] == ["1 problem(s) remain:", "  - n_epochs: always wrong here"]


def test_a_model_problem_is_reported_not_asked(small_config):
    answers = Answers()
    printed = []
    result = ask(small_config, validate=lambda c: ["model: broken"], input_fn=answers, print_fn=printed.append)
    assert answers.questions == [n for n in editable_fields() if n not in ("dataset_path", "texts")]
    assert printed[-1] == "  - model: broken" and result == small_config


def test_an_answer_that_never_reads_keeps_the_value(small_config):
    answers = Answers(batch_size=["big"] * 10)
    printed = []
    result = ask(small_config, validate=lambda c: c.validate(), input_fn=answers, print_fn=printed.append)
    assert answers.questions.count("batch_size") == terminal.MAX_TRIES and result.batch_size == 8
    assert "  keeping batch_size=8 after 5 answers that could not be read" in printed


def test_end_of_input_keeps_the_answers_so_far_and_the_defaults(small_config):
    answers = Answers(stop_after=3, n_epochs=["4"])
    printed = []
    result = ask(small_config, validate=pytest.fail, input_fn=answers, print_fn=printed.append)
    assert answers.questions == ["data_source", "n_epochs", "learning_rate"]
    assert result == small_config.replace(n_epochs=4)
    assert printed[-1] == "\nNo more input: keeping the remaining settings as they are."


def test_a_closed_stdin_asks_once_and_keeps_the_defaults(small_config, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # what `input` reads: nothing, ever
    result = ask(small_config, validate=pytest.fail)
    assert result == small_config
    assert capsys.readouterr().out.count("data_source [builtin]") == 1  # asked once, not in a loop


# -- asking through a real pseudo-terminal ----------------------------------------------

# Run the whole wizard in a fresh interpreter whose stdin and stdout are a terminal.
WIZARD_SCRIPT = """
import json, torch
torch.set_num_threads(1)
from utils import models
from utils.ui.setup_wizard import SetupWizard
torch.manual_seed(0)
model, config = models.tiny_gpt(**{tiny!r})
result = SetupWizard().run(model, config, interactive={interactive}, preset="tiny", **{small_run!r})
print("RESULT " + json.dumps(result.to_dict()))
"""
# A question waiting for its answer: the last line is "<field> [<current>]<hint>: ".
QUESTION = re.compile(r"(?:^|\n)(\w+) \[[^\n]*\][^\n]*: $")
GIVE_UP_S = TERMINAL_GIVE_UP_S


def _converse(interactive: object, answers: dict[str, list[str]]) -> tuple[str, int]:
    """Run the wizard under a pseudo-terminal, answer each question by its field (Enter when not given).

    Returns:
        The transcript (``\\r\\n`` as ``\\n``) and the exit code.
    """
    script = WIZARD_SCRIPT.format(tiny=TINY, interactive=interactive, small_run=SMALL_RUN)
    leader, follower = os.openpty()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=follower, stdout=follower, stderr=follower, cwd=REPO_ROOT, env=env
    )
    os.close(follower)
    transcript, answered_upto = "", 0
    try:
        while (chunk := read_terminal(leader, child)) is not None:
            transcript += chunk
            question = QUESTION.search(transcript, answered_upto)
            if question:
                reply = answers.get(question.group(1), [])
                reply = reply.pop(0) if reply else ""
                os.write(leader, (reply if reply == CTRL_D else reply + "\n").encode())
                answered_upto = len(transcript)
        return transcript.replace("\r\n", "\n"), child.wait(timeout=GIVE_UP_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(leader)


def _result(transcript: str) -> dict:
    [line] = [line for line in transcript.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def test_the_wizard_asks_in_a_terminal_end_to_end():
    # 5 steps leave the preset's 10 warm-up steps too many: the check finds it and asks warmup_steps again.
    answers = {"n_epochs": ["2"], "learning_rate": ["fast", "2e-3"], "max_steps": ["5"], "warmup_steps": ["", "2"]}
    transcript, code = _converse(True, answers)
    assert code == 0, transcript
    result = _result(transcript)
    assert (result["n_epochs"], result["learning_rate"], result["max_steps"], result["warmup_steps"]) == (2, 2e-3, 5, 2)
    assert result["seq_len"] == 32 and result["batch_size"] == 8  # Enter kept the preset's values
    assert transcript.count("learning_rate [0.001]: ") == 2  # the bad answer was asked again
    assert "learning_rate: 'fast' is not a number" in transcript
    assert "- warmup_steps: 10 exceeds the 5 optimizer steps" in transcript and transcript.count("warmup_steps [") == 2
    assert "Checked: no problems." in transcript and "setup wizard [5/5] summary: ready" in transcript


def test_ctrl_d_in_a_terminal_keeps_the_preset():
    transcript, code = _converse(None, {"data_source": [CTRL_D]})  # None: a terminal is found, and asked
    assert code == 0, transcript
    assert transcript.count("data_source [builtin]") == 1
    assert "No more input: keeping the remaining settings as they are." in transcript
    assert _result(transcript) == ConfigPresets.customize("tiny", **SMALL_RUN).to_dict()
