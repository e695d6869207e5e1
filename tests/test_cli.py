"""The main job, `python -m utils`: end to end in a subprocess, and its argument errors in-process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from utils import cli

REPO = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
GPU_COUNT = torch.cuda.device_count()

USER_MODEL = '''
import torch
import torch.nn as nn


class BagOfTokens(nn.Module):
    """A user model with a keyword-only forward that returns (logits, None)."""

    def __init__(self, vocab_size=256, width=16):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, *, input_ids):
        return self.head(torch.tanh(self.emb(input_ids))), None


def build():
    return BagOfTokens(), {"vocab_size": 256, "max_seq_len": 32}
'''


@pytest.mark.slow
def test_main_job_end_to_end_writes_the_report(tmp_path):
    # The default --out, from a folder with no reports/ yet, as on a fresh clone.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "utils", "--quick", "--no-progress"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out,) = (tmp_path / "reports").iterdir()
    assert out.name.startswith("run-")
    names = {p.name for p in out.iterdir()}
    expected = ("training_curves.png", "amp_benchmark.png", "metrics.csv", "steps.csv", "results.json", "summary.md")
    assert set(expected) <= names
    assert {"tier1.csv", "tier2.csv", "tier1_test_gradient_flow.png", "tier2_test_attention_patterns.png"} <= names
    assert "tier1_test_memory_footprint.csv" in names  # each check's own table, not only the summary
    results = json.loads((out / "results.json").read_text())
    assert {row["status"] for row in results["tier1"] + results["tier2"]} <= {"pass", "warn"}
    fine = results["fine_tuning"]
    assert fine["optimizer_steps"] == 30
    assert fine["final_loss"] < fine["initial_loss"]
    assert results["amp_benchmark"]["status"] in ("ok", "skipped")
    assert "| fine_tuning | precision |" in proc.stdout
    assert (out / "summary.md").read_text().startswith("# utils report: built-in tiny GPT")


@pytest.mark.slow
def test_main_job_under_torchrun_trains_with_ddp_and_rank_0_writes_one_report(tmp_path):
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "utils"]
        + "--max-steps 6 --epochs 1 --batch-size 4 --no-progress --device cpu --precision fp32".split()
        + ["--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # one report, no stray temporary folders
    results = json.loads((out / "results.json").read_text())
    fine = results["fine_tuning"]
    assert fine["world_size"] == 2 and fine["optimizer_steps"] == 6
    assert set(results) == {"model", "version", "fine_tuning"}  # benchmark and tiers left out under torchrun
    assert proc.stdout.count("Report written to") == 1
    assert "DDP fine-tuning only" in proc.stdout


def test_help_lists_the_documented_flags():
    proc = subprocess.run([sys.executable, "-m", "utils", "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--model", "--device", "--precision", "--out", "--quick", "--compile"):
        assert flag in proc.stdout


def _help_by_option(help_text: str) -> dict[str, str]:
    """Each option's help, whitespace collapsed: an option line starts with two spaces and a dash."""
    blocks: dict[str, str] = {}
    flag = None
    for line in help_text.splitlines():
        if re.match(r"  -", line):
            flag = line.split()[0].rstrip(",")
            blocks[flag] = line
        elif line.startswith("   ") and flag is not None:
            blocks[flag] += " " + line
        else:
            flag = None  # a blank line or a group title ends the option
    return {flag: " ".join(text.split()) for flag, text in blocks.items()}


def test_help_states_each_default_once_and_never_none(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in " ".join(text.split())
    by_option = _help_by_option(text)
    stated = {flag for flag, help_line in by_option.items() if "default" in help_line}
    assert {"--model", "--device", "--precision", "--out", "--epochs", "--max-steps", "--batch-size", "--lr"} <= stated
    assert {"--seq-len", "--seed"} <= stated
    for flag in stated:
        assert by_option[flag].count("default") == 1, by_option[flag]
    assert "(default: 3, or 1 with --quick)" in by_option["--epochs"]
    assert "(default: 0.001)" in by_option["--lr"]


def test_user_model_from_file(tmp_path, capsys):
    model_file = tmp_path / "my_model.py"
    model_file.write_text(USER_MODEL)
    out = tmp_path / "report"
    code = cli.main(
        [
            "--model",
            f"{model_file}:build",
            "--max-steps",
            "4",
            "--epochs",
            "1",
            "--no-benchmark",
            "--no-tiers",
            "--no-progress",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--precision",
            "fp32",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"].startswith("build from")
    assert results["fine_tuning"]["optimizer_steps"] == 4
    assert results["fine_tuning"]["precision"] == "fp32"
    assert results["fine_tuning"]["checkpoint_path"] is None


def test_user_model_class_gets_config_from_output_width(tmp_path):
    model_file = tmp_path / "m.py"
    model_file.write_text(USER_MODEL)
    model, config, label = cli.load_model(f"{model_file}:BagOfTokens", seq_len=16)
    assert config.vocab_size == 256 and config.max_seq_len == 16
    assert label == f"BagOfTokens from {model_file}"


BAD_MODELS = """
import torch.nn as nn

NOT_A_CLASS = 3


class NeedsWidth(nn.Module):
    def __init__(self, width):
        super().__init__()


def not_a_model():
    return 5


def no_max_seq_len():
    return nn.Linear(4, 4), {"vocab_size": 4}
"""

HAS_PROC = Path("/proc/self").is_dir()  # mkdir under /proc fails even for root: an unwritable place on any Linux


def _unless(condition: bool, reason: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(condition, reason=reason)


def _bad(argv: list[str], flag: str, fix: str, marks: Any = ()) -> Any:
    """One bad-argument case, named by its command line."""
    return pytest.param(argv, flag, fix, marks=marks, id=" ".join(arg or "''" for arg in argv))


# (argv, the flag the usage error must name, the words that say what is wrong and what to do)
BAD_ARGUMENTS = [
    _bad(["--epochs", "0"], "--epochs", "must be a positive integer"),
    _bad(["--epochs", "-1"], "--epochs", "must be a positive integer"),
    _bad(["--epochs", "two"], "--epochs", "invalid int value"),
    _bad(["--max-steps", "0"], "--max-steps", "must be a positive integer"),
    _bad(["--max-steps", "-5"], "--max-steps", "must be a positive integer"),
    _bad(["--batch-size", "0"], "--batch-size", "must be a positive integer"),
    _bad(["--batch-size", "1.5"], "--batch-size", "invalid int value"),
    _bad(["--lr", "0"], "--lr", "must be a positive finite number"),
    _bad(["--lr", "-1"], "--lr", "must be a positive finite number"),
    _bad(["--lr", "nan"], "--lr", "must be a positive finite number"),
    _bad(["--lr", "inf"], "--lr", "must be a positive finite number"),
    _bad(["--lr", "fast"], "--lr", "invalid float value"),
    _bad(["--seq-len", "0"], "--seq-len", "must be a positive integer"),
    _bad(["--seq-len", "1"], "--seq-len", "must be at least 2"),
    _bad(["--seq-len", "4096"], "--seq-len", "exceeds the model's max_seq_len 128; pass --seq-len 128 or less"),
    _bad(["--seed", "x"], "--seed", "invalid int value"),
    _bad(["--seed", "1.5"], "--seed", "invalid int value"),
    _bad(["--seed", str(2**64)], "--seed", "must be between"),
    _bad(["--device", "bogus"], "--device", "is not a device name"),
    _bad(["--device", ""], "--device", "is not a device name"),
    _bad(["--device", "meta"], "--device", "runs on cpu, cuda, mps; use 'auto', 'cpu' or 'cuda'"),
    _bad(["--device", "cuda"], "--device", "CUDA is not available", marks=_unless(HAS_CUDA, "has CUDA")),
    _bad(["--device", "cuda:7"], "--device", "cuda:7", marks=_unless(GPU_COUNT > 7, "has 8 GPUs")),
    _bad(["--precision", "fp8"], "--precision", "invalid choice"),
    _bad(["--model", "bad_models.py"], "--model", "must look like path/to/file.py:ClassName"),
    _bad(["--model", ""], "--model", "must look like path/to/file.py:ClassName"),
    _bad(["--model", ":Net"], "--model", "must look like path/to/file.py:ClassName"),
    _bad(["--model", "nofile.py:Net"], "--model", "no file at nofile.py"),
    _bad(["--model", "bad_models.py:Missing"], "--model", "defines no 'Missing'"),
    _bad(["--model", "bad_models.py:NOT_A_CLASS"], "--model", "not a class or function; name your model class"),
    _bad(["--model", "bad_models.py:not_a_model"], "--model", "not a torch.nn.Module; return the model"),
    _bad(["--model", "bad_models.py:NeedsWidth"], "--model", "missing 1 required positional argument: 'width'"),
    _bad(["--model", "bad_models.py:no_max_seq_len"], "--model", "no max_seq_len (or an alias of it); pass --seq-len"),
    _bad(["--model", "syntax_error.py:Net"], "--model", "SyntaxError"),
    _bad(["--model", "import_error.py:Net"], "--model", "No module named 'no_such_package_for_utils_tests'"),
    _bad(["--out", "afile"], "--out", "is a file; pass a folder path"),
    _bad(["--out", "afile/run"], "--out", "is a file, so the folder cannot be made there"),
    _bad(["--out", ""], "--out", "must be a file or folder path"),
    _bad(["--out", "mine"], "--out", "already holds files; choose a new folder or pass --overwrite"),
    _bad(["--out", "mine", "--overwrite"], "--out", "only replaces a report folder, so choose a new folder"),
    _bad(["--out", "/proc/utils-report"], "--out", "cannot write in", marks=_unless(not HAS_PROC, "no /proc")),
    _bad(["--checkpoint-dir", "afile"], "--checkpoint-dir", "is a file; pass a folder"),
    _bad(["--checkpoint-dir", "afile/ckpt"], "--checkpoint-dir", "is a file, so the folder cannot be made there"),
    _bad(["--checkpoint-dir", ""], "--checkpoint-dir", "must be a file or folder path"),
    _bad(["--checkpoint-dir", "rep/ckpt"], "--checkpoint-dir", "is inside --out rep"),
    _bad(
        ["--checkpoint-dir", "/proc/utils-ckpt"],
        "--checkpoint-dir",
        "cannot write in",
        marks=_unless(not HAS_PROC, "no /proc"),
    ),
    _bad(["--resume", "no/such/last.pt"], "--resume", "no checkpoint at no/such/last.pt"),
    _bad(["--resume", "mine"], "--resume", "no checkpoint at mine/last.pt"),
    _bad(["--resume", ""], "--resume", "must be a file or folder path"),
    _bad(["--resume", "afile"], "--resume", "truncated or corrupted"),
]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder, holding the files the bad arguments point at."""
    (tmp_path / "afile").write_text("")
    (tmp_path / "bad_models.py").write_text(BAD_MODELS)
    (tmp_path / "syntax_error.py").write_text("def broken(:\n")
    (tmp_path / "import_error.py").write_text("import no_such_package_for_utils_tests\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a report")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _tree(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its size; Python's bytecode cache of an imported model file aside."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if "__pycache__" not in p.parts}


def _no_work(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the job started despite a bad argument")


def _assert_usage_error(argv: list[str], flag: str, fix: str, root: Path, monkeypatch, capsys) -> None:
    """``argv`` ends with argparse's usage error (exit 2) naming ``flag`` and ``fix``; nothing ran or was written."""
    monkeypatch.setattr(cli, "_run_all", _no_work)
    before = _tree(root)
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    message = err.strip().splitlines()[-1]
    assert message.startswith("python -m utils: error:"), err
    assert flag in message and fix in message, message
    assert _tree(root) == before


@pytest.mark.parametrize(("argv", "flag", "fix"), BAD_ARGUMENTS)
def test_bad_arguments_fail_early_naming_the_flag_and_writing_nothing(argv, flag, fix, workspace, monkeypatch, capsys):
    out = [] if "--out" in argv else ["--out", "rep"]
    _assert_usage_error([*argv, *out], flag, fix, workspace, monkeypatch, capsys)


def test_a_gpu_index_the_machine_lacks_is_refused(workspace, monkeypatch, capsys):
    # The hardware check is patched, so this runs on CPU: a one-GPU machine asked for cuda:3.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    fix = "this machine has 1 GPU(s), cuda:0 to cuda:0; use one of those or 'auto'"
    _assert_usage_error(["--device", "cuda:3", "--out", "rep"], "--device", fix, workspace, monkeypatch, capsys)


def _user_model_run(root: Path, max_steps: int = 2) -> list[str]:
    """A short CPU run of USER_MODEL, with only the fine-tuning section."""
    model = ["--model", f"{root / 'user_model.py'}:build", "--device", "cpu", "--precision", "fp32"]
    return [*model, "--max-steps", str(max_steps), "--batch-size", "2", "--no-benchmark", "--no-tiers"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a one-epoch run of USER_MODEL: its checkpoint has no epoch left at --epochs 1."""
    root = tmp_path_factory.mktemp("finished")
    (root / "user_model.py").write_text(USER_MODEL)
    ckpt, out = str(root / "ckpt"), str(root / "first")
    assert (
        cli.main([*_user_model_run(root), "--epochs", "1", "--checkpoint-dir", ckpt, "--out", out, "--no-progress"])
        == 0
    )
    return root


def test_resume_with_no_epoch_left_fails_before_any_work(finished_run, monkeypatch, capsys):
    argv = [*_user_model_run(finished_run), "--epochs", "1", "--resume", str(finished_run / "ckpt")]
    fix = "finished epoch 1 of its run; --epochs counts from that run's start, so pass --epochs > 1 to train on"
    _assert_usage_error(
        [*argv, "--out", str(finished_run / "never")], "--resume", fix, finished_run, monkeypatch, capsys
    )


def test_resume_into_another_model_fails_before_any_work(finished_run, monkeypatch, capsys):
    argv = ["--resume", str(finished_run / "ckpt"), "--epochs", "2", "--out", str(finished_run / "never")]
    fix = "the checkpoint does not fit this model"
    _assert_usage_error(argv, "--resume", fix, finished_run, monkeypatch, capsys)  # the built-in GPT, not USER_MODEL


def test_resume_trains_the_epochs_left(finished_run):
    out = finished_run / "resumed"
    argv = [*_user_model_run(finished_run, max_steps=4), "--epochs", "2", "--resume", str(finished_run / "ckpt")]
    assert cli.main([*argv, "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text())["fine_tuning"]["optimizer_steps"] == 4


def test_unknown_name_in_model_file_lists_what_is_there(tmp_path, capsys):
    model_file = tmp_path / "m.py"
    model_file.write_text(USER_MODEL)
    with pytest.raises(SystemExit):
        cli.main(["--model", f"{model_file}:Missing", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert "defines no 'Missing'" in err and "BagOfTokens" in err
