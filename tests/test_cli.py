"""The main job, `python -m utils`, and `python -m utils train`: end to end, and their argument errors in-process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
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
    for flag in ("--model", "--device", "--precision", "--out", "--quick", "--compile", "--export"):
        assert flag in proc.stdout
    assert "python -m utils train --help" in proc.stdout  # the subcommand is findable from the main help


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
    assert "export" not in results["fine_tuning"]  # no --export, no export
    assert "export" not in (out / "summary.md").read_text()


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
    _bad(["--export", "afile"], "--export", "is a file; pass a folder path"),
    _bad(["--export", ""], "--export", "must be a file or folder path"),
    _bad(["--export", "mine"], "--export", "already holds files; choose a new folder or pass --overwrite"),
    _bad(["--export", "mine", "--overwrite"], "--export", "holds files but no earlier export"),
    _bad(["--export", "rep"], "--export", "--export rep and --out rep overlap"),
    _bad(["--export", "rep/model"], "--export", "keep them side by side, e.g. --export rep-export"),
    _bad(["--export", "ck", "--checkpoint-dir", "ck/last"], "--export", "and --checkpoint-dir ck/last overlap"),
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
    (tmp_path / "training_output" / "done").mkdir(parents=True)  # a run folder, without config.json
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
    monkeypatch.setattr(cli, "_run_train", _no_work)
    before = _tree(root)
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    message = err.strip().splitlines()[-1]
    prog = "python -m utils train" if argv[:1] == ["train"] else "python -m utils"
    assert message.startswith(f"{prog}: error:"), err
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


# -- python -m utils --export ---------------------------------------------------


def test_main_job_exports_the_model_and_links_the_export_in_the_report(tmp_path):
    (tmp_path / "user_model.py").write_text(USER_MODEL)
    out, export = tmp_path / "report", tmp_path / "export"
    argv = [*_user_model_run(tmp_path), "--epochs", "1", "--out", str(out), "--export", str(export), "--no-progress"]
    assert cli.main(argv) == 0
    record = json.loads((out / "results.json").read_text())["fine_tuning"]["export"]
    assert record["export_dir"] == str(export.resolve())
    assert record["files"] == ["README.md", "config.json", "metadata.json", "model.safetensors"]
    assert record["parity"]["status"] == "ok" and record["parity"]["max_abs_diff"] == 0
    summary = (out / "summary.md").read_text()
    assert f"| fine_tuning | export | {export.resolve()} |" in summary
    assert "| fine_tuning | export parity | ok (max abs diff 0) |" in summary
    assert json.loads((export / "metadata.json").read_text())["metrics"]["optimizer_steps"] == 2


# -- python -m utils train ------------------------------------------------------


def _train_argv(root: Path, *more: str) -> list[str]:
    """`train` of USER_MODEL on the CPU, in ``root/training_output``."""
    model = ["--model", f"{root / 'user_model.py'}:build", "--device", "cpu", "--precision", "fp32"]
    return ["train", *model, "--batch-size", "2", "--output-dir", str(root / "training_output"), *more]


def _main_with_output(argv: list[str]) -> tuple[int, str]:
    """``cli.main(argv)``'s exit status and what it printed (capsys is not there for module fixtures)."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(argv)
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 3-step `train` run named 'first' with early stopping and an export, and what it printed."""
    root = tmp_path_factory.mktemp("train")
    (root / "user_model.py").write_text(USER_MODEL)
    argv = _train_argv(root, "--quick", "--max-steps", "3", "--run-name", "first", "--early-stopping", "2")
    code, stdout = _main_with_output([*argv, "--export", str(root / "export"), "--no-progress"])
    assert code == 0
    return root, stdout


def test_train_writes_a_run_folder_and_prints_its_summary(trained_run):
    root, stdout = trained_run
    run_dir = root / "training_output" / "first"
    names = {p.name for p in run_dir.iterdir()}
    assert {"checkpoints", "config.json", "metrics.csv", "steps.csv", "results.json", "training_curves.png"} <= names
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["lifecycle"]["early_stopping_patience"] == 2
    assert saved["settings"]["max_steps"] == 3 and saved["settings"]["batch_size"] == 2
    assert saved["settings"]["learning_rate"] == cli.QUICK.learning_rate  # the --quick profile, as in the main job
    assert json.loads((run_dir / "results.json").read_text())["optimizer_steps"] == 3
    assert f"| run folder | {run_dir} |" in stdout
    assert re.search(r"\| best val/loss \| \d+\.\d{4} at epoch 1 \|", stdout), stdout
    assert "| stopped early | no |" in stdout


def test_train_exports_the_best_weights_and_they_reload(trained_run):
    from utils.training.export import load_exported_weights

    root, stdout = trained_run
    export = root / "export"
    assert {p.name for p in export.iterdir()} == {"README.md", "config.json", "metadata.json", "model.safetensors"}
    assert json.loads((export / "metadata.json").read_text())["parity"]["status"] == "ok"
    assert f"| export | {export.resolve()} |" in stdout
    assert "| export parity | ok (max abs diff 0) |" in stdout
    fresh, _, _ = cli.load_model(f"{root / 'user_model.py'}:build")
    load_exported_weights(fresh, export)
    best = torch.load(root / "training_output" / "first" / "checkpoints" / "best.pt", weights_only=True)["model"]
    torch.testing.assert_close(fresh.state_dict(), best, rtol=0, atol=0)  # the export holds best.pt's weights


def test_train_resume_continues_the_named_run(trained_run, tmp_path):
    root, _ = trained_run
    shutil.copytree(root / "training_output", tmp_path / "training_output")  # the fixture's run stays as it was
    (tmp_path / "user_model.py").write_text(USER_MODEL)
    argv = _train_argv(tmp_path, "--run-name", "first", "--resume", "--epochs", "2", "--max-steps", "6")
    code, stdout = _main_with_output([*argv, "--no-progress"])
    assert code == 0
    run_dir = tmp_path / "training_output" / "first"
    assert "resuming" in stdout and f"| run folder | {run_dir} |" in stdout
    assert json.loads((run_dir / "results.json").read_text())["optimizer_steps"] == 6
    epochs = [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["0", "1"]  # epoch 0 from the first run, epoch 1 from the resumed one
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["settings"]["n_epochs"] == 2 and saved["lifecycle"]["early_stopping_patience"] == 2


NOISY_MODEL = (
    USER_MODEL
    + '''

class NoisyBag(BagOfTokens):
    """Random logits on every call: no reload can reproduce them, so the export's parity check fails."""

    def forward(self, *, input_ids):
        logits, _ = super().forward(input_ids=input_ids)
        return logits + torch.randn_like(logits), None


def build_noisy():
    return NoisyBag(), {"vocab_size": 256, "max_seq_len": 32}
'''
)


@pytest.mark.filterwarnings("ignore:the model is not causal")  # its noise ties every position to every other
def test_train_exits_1_when_the_export_does_not_reload(tmp_path, capsys):
    (tmp_path / "user_model.py").write_text(NOISY_MODEL)
    argv = _train_argv(tmp_path, "--quick", "--max-steps", "2", "--export", str(tmp_path / "export"), "--no-progress")
    argv[argv.index("--model") + 1] = f"{tmp_path / 'user_model.py'}:build_noisy"
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert "| export parity | FAIL: " in captured.out
    assert "does not reload to the same model" in captured.err
    assert json.loads((tmp_path / "export" / "metadata.json").read_text())["parity"]["status"] == "fail"


@pytest.mark.slow
def test_train_end_to_end_with_the_built_in_gpt(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    argv = "train --quick --max-steps 6 --early-stopping 1 --run-name e2e --export exp --no-progress".split()
    proc = subprocess.run(
        [sys.executable, "-m", "utils", *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "training_output" / "e2e" / "checkpoints" / "best.pt").is_file()
    parity = json.loads((tmp_path / "exp" / "metadata.json").read_text())["parity"]
    assert parity["status"] == "ok" and parity["built_from"] == "config"  # reloaded into a new TinyTransformer
    assert "| export parity | ok" in proc.stdout


def test_train_help_states_each_default_once(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--help"])
    assert exc.value.code == 0
    by_option = _help_by_option(capsys.readouterr().out)
    assert {"--run-name", "--resume", "--early-stopping", "--export", "--output-dir", "--epochs"} <= set(by_option)
    assert "--out" not in by_option and "--checkpoint-dir" not in by_option  # the main job's, not train's
    for help_line in by_option.values():
        assert help_line.count("default") <= 1, help_line
    assert "(default: training_output)" in by_option["--output-dir"]


TRAIN_BAD_ARGUMENTS = [
    _bad(["--early-stopping", "0"], "--early-stopping", "must be a positive integer, got 0"),
    _bad(["--early-stopping", "-2"], "--early-stopping", "must be a positive integer"),
    _bad(["--early-stopping", "two"], "--early-stopping", "invalid int value"),
    _bad(["--run-name", "a/b"], "--run-name", "must be a folder name of letters, digits, '.', '_' and '-'"),
    _bad(["--run-name", ".."], "--run-name", "must be a folder name"),
    _bad(["--run-name", ""], "--run-name", "must be a folder name"),
    _bad(["--run-name", "run\n"], "--run-name", "must be a folder name"),
    _bad(["--run-name", "done"], "--run-name", "already exists; pass --resume to continue it, --overwrite to replace"),
    _bad(["--resume"], "--resume", "needs --run-name NAME"),
    _bad(["--resume", "--run-name", "nope"], "--resume", "there is no run 'nope' in --output-dir training_output"),
    _bad(["--resume", "--run-name", "done"], "--resume", "is not a run folder: it has no config.json"),
    _bad(["--export", "afile"], "--export", "is a file; pass a folder path"),
    _bad(["--export", ""], "--export", "must be a file or folder path"),
    _bad(["--export", "mine"], "--export", "already holds files; choose a new folder or pass --overwrite"),
    _bad(["--run-name", "new", "--export", "training_output/new"], "--export", "is, or holds, the run folder"),
    _bad(["--output-dir", "runs/a", "--export", "runs"], "--export", "e.g. --export runs/a/export"),
    _bad(["--output-dir", "afile"], "--output-dir", "is a file"),
    _bad(["--output-dir", "afile/runs"], "--output-dir", "is a file, so the folder cannot be made there"),
    _bad(["--output-dir", ""], "--output-dir", "must be a file or folder path"),
    _bad(["--epochs", "0"], "--epochs", "must be a positive integer"),
    _bad(["--lr", "nan"], "--lr", "must be a positive finite number"),
    _bad(["--seq-len", "1"], "--seq-len", "must be at least 2"),
    _bad(["--seq-len", "4096"], "--seq-len", "exceeds the model's max_seq_len 128"),
    _bad(["--device", "bogus"], "--device", "is not a device name"),
    _bad(["--precision", "fp8"], "--precision", "invalid choice"),
    _bad(["--model", "bad_models.py:Missing"], "--model", "defines no 'Missing'"),
]


@pytest.mark.parametrize(("argv", "flag", "fix"), TRAIN_BAD_ARGUMENTS)
def test_train_bad_arguments_fail_early_naming_the_flag(argv, flag, fix, workspace, monkeypatch, capsys):
    _assert_usage_error(["train", *argv], flag, fix, workspace, monkeypatch, capsys)


def test_train_refuses_torchrun(workspace, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it for each process
    _assert_usage_error(["train"], "train", "runs on one process", workspace, monkeypatch, capsys)


# (extra argv after `train --run-name first --resume`, the flag, the fix): resuming the fixture's 3-step run.
RESUME_BAD_ARGUMENTS = [
    _bad([], "--resume", "finished epoch 1 of its run; --epochs counts from that run's start, so pass --epochs > 1"),
    _bad(["--epochs", "2"], "--max-steps", "already took 3 optimizer steps, its cap of 3; pass --max-steps > 3"),
    _bad(["--epochs", "2", "--max-steps", "3"], "--max-steps", "pass --max-steps > 3"),
    _bad(["--epochs", "2", "--max-steps", "6", "--lr", "0.1"], "--lr", "trained with learning_rate=0.001"),
    _bad(["--epochs", "2", "--max-steps", "6", "--seed", "0", "--batch-size", "4"], "--batch-size", "batch_size=2"),
    _bad(["--epochs", "2", "--max-steps", "6", "--early-stopping", "5"], "--early-stopping", "drop the flag"),
    _bad(["--epochs", "2", "--max-steps", "6", "--quick"], "--quick", "drop --quick"),
]


@pytest.mark.parametrize(("extra", "flag", "fix"), RESUME_BAD_ARGUMENTS)
def test_train_resume_checks_the_run_before_any_work(extra, flag, fix, trained_run, monkeypatch, capsys):
    root, _ = trained_run
    argv = _train_argv(root, "--run-name", "first", "--resume", *extra)
    _assert_usage_error(argv, flag, fix, root, monkeypatch, capsys)


def test_train_resume_into_another_model_fails_before_any_work(trained_run, monkeypatch, capsys):
    root, _ = trained_run
    argv = ["train", "--output-dir", str(root / "training_output"), "--run-name", "first", "--resume"]
    fix = "the checkpoint does not fit this model"  # the built-in GPT, not USER_MODEL
    _assert_usage_error([*argv, "--epochs", "2", "--max-steps", "6"], "--resume", fix, root, monkeypatch, capsys)


def test_train_resume_of_a_run_without_a_checkpoint_says_so(trained_run, tmp_path, monkeypatch, capsys):
    root, _ = trained_run
    run_dir = tmp_path / "training_output" / "first"
    run_dir.mkdir(parents=True)
    shutil.copy(root / "training_output" / "first" / "config.json", run_dir)  # a run killed in its first epoch
    (tmp_path / "user_model.py").write_text(USER_MODEL)
    argv = _train_argv(tmp_path, "--run-name", "first", "--resume", "--epochs", "2")
    _assert_usage_error(argv, "--resume", "has no checkpoint", tmp_path, monkeypatch, capsys)
