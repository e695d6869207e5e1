"""The main job, `python -m utils`, and its subcommands (train, search, compare, wizard): end to end, and their
argument errors in-process."""

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

import pandas as pd
import pytest
import torch
from tiny_models import TERMINAL_GIVE_UP_S, read_terminal

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
    assert {"comparison.csv", "comparison.png"} <= names
    results = json.loads((out / "results.json").read_text())
    comparison = results["comparison"]
    assert comparison["status"] == "ok" and comparison["settings"]["train_steps"] == cli.QUICK.compare_steps
    assert f"| comparison | verdict | {comparison['verdict']} |" in proc.stdout
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
    assert "DDP fine-tuning only" in proc.stdout and "the baseline comparison" in proc.stdout


def test_help_lists_the_documented_flags():
    proc = subprocess.run([sys.executable, "-m", "utils", "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--model", "--device", "--precision", "--out", "--quick", "--compile", "--export", "--no-compare"):
        assert flag in proc.stdout
    assert "python -m utils SUBCOMMAND --help" in proc.stdout  # the subcommands are findable from the main help
    for subcommand in cli.SUBCOMMANDS:
        assert f"\n  {subcommand} " in proc.stdout


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
            "--no-compare",
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
    assert "comparison" not in results and not (out / "comparison.csv").exists()  # --no-compare


def test_user_model_class_gets_config_from_output_width(tmp_path):
    model_file = tmp_path / "m.py"
    model_file.write_text(USER_MODEL)
    model, config, label = cli.load_model(f"{model_file}:BagOfTokens", seq_len=16)
    assert config.vocab_size == 256 and config.max_seq_len == 16
    assert label == f"BagOfTokens from {model_file}"


def test_seed_sets_the_initial_weights():
    def weights(seed: str) -> dict[str, torch.Tensor]:
        return cli.check_args(cli.build_parser().parse_args(["--seed", seed, "--out", "never"])).model.state_dict()

    torch.testing.assert_close(weights("3"), weights("3"), rtol=0, atol=0)
    assert not torch.equal(weights("3")["tok_emb.weight"], weights("4")["tok_emb.weight"])


def test_main_job_report_holds_the_baseline_comparison(tmp_path):
    (tmp_path / "user_model.py").write_text(USER_MODEL)
    argv = [*_user_model_run(tmp_path), "--epochs", "1", "--no-progress"]
    argv.remove("--no-compare")
    code, stdout = _main_with_output([*argv, "--out", str(tmp_path / "report")])
    assert code == 0
    out = tmp_path / "report"
    assert {"comparison.csv", "comparison.png"} <= {p.name for p in out.iterdir()}
    results = json.loads((out / "results.json").read_text())
    comparison = results["comparison"]
    assert comparison["status"] == "ok" and comparison["baseline_description"]["name"] == "tiny_gpt"
    assert comparison["settings"]["train_steps"] == cli.FULL.compare_steps  # the profile's short budget
    assert (comparison["settings"]["batch_size"], comparison["settings"]["precision"]) == (2, "fp32")  # as fine-tuned
    table = pd.read_csv(out / "comparison.csv").set_index("metric")
    assert table.at["parameters", "yours"] == 8448  # BagOfTokens: 256 x 16 embedding, 16 -> 256 head
    assert f"| comparison | verdict | {comparison['verdict']} |" in (out / "summary.md").read_text()
    assert f"| comparison | verdict | {comparison['verdict']} |" in stdout
    # The comparison trains a copy first; the fine-tuning after it is the same as without it.
    code, _ = _main_with_output([*argv, "--no-compare", "--out", str(tmp_path / "without")])
    alone = json.loads((tmp_path / "without" / "results.json").read_text())["fine_tuning"]
    assert alone["loss_history"] == results["fine_tuning"]["loss_history"]


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


def small_vocab():
    return nn.Linear(4, 16), {"vocab_size": 16, "max_seq_len": 8}
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
    _bad(["--model", "bad_models.py:small_vocab"], "--model", "its vocabulary has 16 ids, but the jobs here train on"),
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
    (tmp_path / "user_model.py").write_text(USER_MODEL)
    (tmp_path / "notes.db").write_text("not a database")
    _write_wizard_configs(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write_wizard_configs(folder: Path) -> None:
    """Settings files for `train --config`: a good one and some that are wrong in one way each."""
    from utils.ui.setup_wizard import FORMAT_VERSION, WizardConfig

    WizardConfig(seq_len=32, max_steps=2, device="cpu").save(folder / "good.json")
    WizardConfig(seq_len=4096).save(folder / "long.json")
    (folder / "bad_lr.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "learning_rate": -1.0}))
    (folder / "typo.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "lr": 0.1}))


def _tree(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its size; Python's bytecode cache of an imported model file aside."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if "__pycache__" not in p.parts}


def _no_work(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the job started despite a bad argument")


def _assert_usage_error(argv: list[str], flag: str, fix: str, root: Path, monkeypatch, capsys) -> None:
    """``argv`` ends with argparse's usage error (exit 2) naming ``flag`` and ``fix``; nothing ran or was written."""
    for runner in (
        "main_job._run_all",
        "train._run_train",
        "search._run_search",
        "compare._run_compare",
        "wizard._run_wizard",
    ):
        monkeypatch.setattr(f"utils.cli.{runner}", _no_work)
    before = _tree(root)
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv] if argv[:1] == ["wizard"] else [*argv, "--no-progress"])  # the wizard shows no progress
    err = capsys.readouterr().err
    assert exc.value.code == 2
    message = err.strip().splitlines()[-1]
    prog = f"python -m utils {argv[0]}" if argv[:1] and argv[0] in cli.SUBCOMMANDS else "python -m utils"
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
    return [*model, "--max-steps", str(max_steps), "--batch-size", "2", "--no-benchmark", "--no-compare", "--no-tiers"]


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
    # The run stopped at --max-steps 2 inside its first epoch: that epoch is not done, the step cap is the limit.
    fix = "the run already took 2 optimizer steps, all that --epochs=1 and --max-steps=2 allow; raise them to train on"
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
    assert record["files"] == ["README.md", "config.json", "metadata.json", "model.safetensors", "tokenizer.json"]
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
    exported = {"README.md", "config.json", "metadata.json", "model.safetensors", "tokenizer.json"}
    assert {p.name for p in export.iterdir()} == exported
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
    # The first run stopped at --max-steps 3 inside epoch 0; the resume trains on inside it (steps 4-6), so the
    # one row is the whole of epoch 0 so far, not a cut epoch 0 and a new epoch 1.
    assert epochs == ["0"]
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["settings"]["n_epochs"] == 2 and saved["lifecycle"]["early_stopping_patience"] == 2


def test_train_resume_may_change_the_device_and_progress_as_the_library_allows(tmp_path):
    (tmp_path / "user_model.py").write_text(USER_MODEL)
    model = ["--model", f"{tmp_path / 'user_model.py'}:build", "--precision", "fp32", "--batch-size", "2"]
    first = ["train", *model, "--output-dir", str(tmp_path / "training_output"), "--run-name", "other"]
    code, _ = _main_with_output([*first, "--quick", "--max-steps", "2"])  # --device auto, with progress bars
    assert code == 0
    run_dir = tmp_path / "training_output" / "other"
    saved = json.loads((run_dir / "config.json").read_text())["settings"]
    assert saved["device"] == "auto" and saved["progress"] is True

    resume = ["--resume", "--device", "cpu", "--no-progress", "--epochs", "2", "--max-steps", "4"]
    code, stdout = _main_with_output([*first, *resume])
    assert code == 0 and "resuming" in stdout
    assert json.loads((run_dir / "results.json").read_text())["optimizer_steps"] == 4
    saved = json.loads((run_dir / "config.json").read_text())["settings"]
    assert saved["device"] == "cpu" and saved["progress"] is False  # passed on to resume_training


def test_train_resume_of_an_edited_config_json_fails_before_any_work(trained_run, tmp_path, monkeypatch, capsys):
    root, _ = trained_run
    shutil.copytree(root / "training_output", tmp_path / "training_output")  # the fixture's run stays as it was
    (tmp_path / "user_model.py").write_text(USER_MODEL)
    config_json = tmp_path / "training_output" / "first" / "config.json"
    saved = json.loads(config_json.read_text())
    saved["settings"]["batch_size"] = 8
    config_json.write_text(json.dumps(saved))
    model = ["--model", f"{tmp_path / 'user_model.py'}:build", "--device", "cpu", "--precision", "fp32"]
    run = ["--output-dir", str(tmp_path / "training_output"), "--run-name", "first", "--resume"]
    argv = ["train", *model, *run, "--epochs", "2", "--max-steps", "6"]  # no --batch-size: the file's 8 is kept
    fix = "no longer matches the run's checkpoints/last.pt (batch_size: 8 in config.json, 2 in last.pt)"
    _assert_usage_error(argv, "--resume", fix, tmp_path, monkeypatch, capsys)


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
    _bad(["--config", "nofile.json"], "--config", "no file there; write one with python -m utils wizard --config-out"),
    _bad(["--config", ""], "--config", "must be a file or folder path"),
    _bad(["--config", "afile"], "--config afile", "is not a JSON wizard config"),
    _bad(["--config", "typo.json"], "--config typo.json", "unknown key(s) ['lr'] (did you mean 'learning_rate'"),
    _bad(["--config", "bad_lr.json"], "--config bad_lr.json", "learning_rate: must be a positive finite number"),
    _bad(["--config", "long.json"], "--config long.json", "does not fit the model (built-in tiny GPT): seq_len: 4096"),
    _bad(["--config", "good.json", "--lr", "0"], "--lr", "must be a positive finite number"),
    _bad(["--config", "good.json", "--device", "bogus"], "--device", "is not a device name"),
    _bad(["--config", "good.json", "--quick"], "--quick", "and --config sets its own; drop one of them"),
    _bad(["--config", "good.json", "--resume", "--run-name", "done"], "--resume", "drop --config to resume"),
    _bad(["--config", "good.json", "--run-name", "done"], "--run-name", "already exists"),
]


@pytest.mark.parametrize(("argv", "flag", "fix"), TRAIN_BAD_ARGUMENTS)
def test_train_bad_arguments_fail_early_naming_the_flag(argv, flag, fix, workspace, monkeypatch, capsys):
    _assert_usage_error(["train", *argv], flag, fix, workspace, monkeypatch, capsys)


def test_train_refuses_torchrun(workspace, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it for each process
    _assert_usage_error(["train"], "train", "runs on one process", workspace, monkeypatch, capsys)


# (extra argv after `train --run-name first --resume`, the flag, the fix): resuming the fixture's 3-step run.
RESUME_BAD_ARGUMENTS = [
    # The run stopped at --max-steps 3 inside its first epoch, so the cap (not the epochs) is what runs out.
    _bad([], "--max-steps", "already took 3 optimizer steps, its cap of 3; pass --max-steps > 3"),
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


# -- python -m utils search -----------------------------------------------------

SEARCH_BAD_ARGUMENTS = [
    _bad(["--trials", "0"], "--trials", "must be a positive integer"),
    _bad(["--trials", "-3"], "--trials", "must be a positive integer"),
    _bad(["--trials", "many"], "--trials", "invalid int value"),
    _bad(["--epochs", "0"], "--epochs", "must be a positive integer"),
    _bad(["--max-steps-per-trial", "0"], "--max-steps-per-trial", "must be a positive integer"),
    _bad(["--timeout", "0"], "--timeout", "must be a positive"),
    _bad(["--timeout", "nan"], "--timeout", "must be a positive"),
    _bad(["--pruner", "hyperband"], "--pruner", "invalid choice"),
    _bad(["--storage", "sqlite:///s.db"], "--storage", "needs --study-name NAME too"),
    _bad(["--study-name", "lr"], "--study-name", "pass --storage sqlite:///search.db too, or drop --study-name"),
    _bad(["--storage", " ", "--study-name", "lr"], "--storage", "must be a database URL such as sqlite:///search.db"),
    _bad(["--storage", "sqlite:///s.db", "--study-name", ""], "--study-name", "must not be empty"),
    _bad(["--storage", "sqlite:///no/such/s.db", "--study-name", "lr"], "--storage", "cannot be opened"),
    _bad(["--storage", "sqlite:///notes.db", "--study-name", "lr"], "--storage", "file is not a database"),
    _bad(["--storage", "nosuchdb://x", "--study-name", "lr"], "--storage", "whose folder exists"),
    _bad(["--storage", "postgresql://u:secret@localhost/db", "--study-name", "lr"], "--storage", "postgresql://u:***@"),
    _bad(["--seq-len", "1"], "--seq-len", "must be at least 2"),
    _bad(["--seed", str(2**64)], "--seed", "must be between"),
    _bad(["--device", "bogus"], "--device", "is not a device name"),
    _bad(["--model", "bad_models.py:Missing"], "--model", "defines no 'Missing'"),
    _bad(["--model", "bad_models.py:small_vocab"], "--model", "its vocabulary has 16 ids"),
    _bad(["--out", "afile"], "--out", "is a file; pass a folder path"),
    _bad(["--out", "mine"], "--out", "already holds files; choose a new folder or pass --overwrite"),
    _bad(["--out", ""], "--out", "must be a file or folder path"),
]


@pytest.mark.parametrize(("argv", "flag", "fix"), SEARCH_BAD_ARGUMENTS)
def test_search_bad_arguments_fail_before_any_trial(argv, flag, fix, workspace, monkeypatch, capsys):
    _assert_usage_error(["search", *argv], flag, fix, workspace, monkeypatch, capsys)
    assert "secret" not in capsys.readouterr().err  # a storage password is never printed


def test_search_refuses_a_stored_study_that_maximises(workspace, monkeypatch, capsys):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage="sqlite:///kept.db", study_name="up", direction="maximize")
    argv = ["search", "--storage", "sqlite:///kept.db", "--study-name", "up"]
    _assert_usage_error(argv, "--study-name 'up'", "maximises its objective", workspace, monkeypatch, capsys)


def _search_argv(root: Path, *more: str) -> list[str]:
    """`search` of USER_MODEL on the CPU: a few steps per trial."""
    model = ["--model", f"{root / 'user_model.py'}:build", "--device", "cpu", "--precision", "fp32"]
    return ["search", *model, "--epochs", "2", "--max-steps-per-trial", "4", "--no-progress", *more]


def test_search_runs_real_trials_and_resumes_its_sqlite_study(tmp_path):
    import optuna

    (tmp_path / "user_model.py").write_text(USER_MODEL)
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    argv = _search_argv(tmp_path, "--storage", storage, "--study-name", "bag")
    code, stdout = _main_with_output([*argv, "--trials", "3", "--out", str(tmp_path / "report")])
    assert code == 0
    out = tmp_path / "report"
    assert {p.name for p in out.iterdir()} == {"trials.csv", "search.png", "results.json", "summary.md"}
    trials = pd.read_csv(out / "trials.csv")
    search = json.loads((out / "results.json").read_text())["search"]
    completed = trials[trials["state"] == "COMPLETE"]
    assert len(trials) == search["n_trials"] == 3
    assert search["best_value"] == pytest.approx(completed["value"].min(), rel=1e-9)
    assert (search["n_pruned"], search["n_failed"]) == ((trials["state"] == "PRUNED").sum(), 0)
    counts = f"{len(completed)} completed, {search['n_pruned']} pruned, 0 failed"
    assert f"| trials | 3: {counts} |" in stdout
    assert f"| best val/loss | {search['best_value']:.4f} (trial {search['best_trial']}) |" in stdout
    assert set(search["best_params"]) == {
        "learning_rate",
        "weight_decay",
        "warmup_steps",
        "batch_size",
        "grad_clip",
        "gradient_accumulation_steps",
    }
    assert all(f"| best {name} | " in stdout for name in search["best_params"])
    # The same command with more trials resumes the kept study: one new trial, numbered after the others.
    code, stdout = _main_with_output([*argv, "--trials", "4"])
    assert code == 0
    assert "3 finished trial(s) kept, 1 to run" in stdout
    study = optuna.load_study(study_name="bag", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]


NAN_MODEL = (
    USER_MODEL
    + '''

class NaNBag(BagOfTokens):
    """Logits that are all NaN: every trial's loss is NaN, so every trial fails."""

    def forward(self, *, input_ids):
        logits, _ = super().forward(input_ids=input_ids)
        return logits * float("nan"), None


def build_nan():
    return NaNBag(), {"vocab_size": 256, "max_seq_len": 32}
'''
)


@pytest.mark.filterwarnings("ignore:no trial of")
@pytest.mark.filterwarnings("ignore:the model returned NaN or Inf logits")
def test_search_exits_1_when_no_trial_completes(tmp_path, capsys):
    (tmp_path / "user_model.py").write_text(NAN_MODEL)
    argv = _search_argv(tmp_path, "--trials", "2")
    argv[argv.index("--model") + 1] = f"{tmp_path / 'user_model.py'}:build_nan"
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert "| trials | 2: 0 completed, 0 pruned, 2 failed |" in captured.out
    assert "| best val/loss | none completed |" in captured.out
    assert "error: no trial completed, so there are no best settings; failure reasons: NonFiniteLossError: " in (
        captured.err
    )


# -- python -m utils compare ------------------------------------------------------

COMPARE_BAD_ARGUMENTS = [
    _bad(["--steps", "0"], "--steps", "must be a positive integer"),
    _bad(["--steps", "ten"], "--steps", "invalid int value"),
    _bad(["--batch-size", "0"], "--batch-size", "must be a positive integer"),
    _bad(["--lr", "-1"], "--lr", "must be a positive finite number"),
    _bad(["--seq-len", "4096"], "--seq-len", "exceeds the model's max_seq_len 128"),
    _bad(["--precision", "fp8"], "--precision", "invalid choice"),
    _bad(["--model", "bad_models.py:small_vocab"], "--model", "build the model with vocab_size=256 or more"),
    _bad(["--out", "mine"], "--out", "already holds files"),
    _bad(["--epochs", "2"], "--epochs", "unrecognized arguments"),  # the step count is --steps
]


@pytest.mark.parametrize(("argv", "flag", "fix"), COMPARE_BAD_ARGUMENTS)
def test_compare_bad_arguments_fail_before_any_training(argv, flag, fix, workspace, monkeypatch, capsys):
    _assert_usage_error(["compare", *argv], flag, fix, workspace, monkeypatch, capsys)


def test_compare_prints_the_table_and_the_verdict_and_writes_the_report(tmp_path):
    (tmp_path / "user_model.py").write_text(USER_MODEL)
    model = ["--model", f"{tmp_path / 'user_model.py'}:build", "--device", "cpu", "--precision", "fp32"]
    out = tmp_path / "report"
    argv = ["compare", *model, "--steps", "4", "--batch-size", "2", "--no-progress", "--out", str(out)]
    code, stdout = _main_with_output(argv)
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"comparison.csv", "comparison.png", "results.json", "summary.md"}
    comparison = json.loads((out / "results.json").read_text())["comparison"]
    assert [line for line in stdout.splitlines() if line.startswith("verdict: ")] == [
        f"verdict: {comparison['verdict']}"
    ]
    assert "| metric | yours | baseline | ratio | note |" in stdout
    table = pd.read_csv(out / "comparison.csv").set_index("metric")
    assert table.at["parameters", "yours"] == 8448
    assert (comparison["settings"]["train_steps"], comparison["settings"]["batch_size"]) == (4, 2)
    assert f"| verdict | {comparison['verdict']} |" in (out / "summary.md").read_text()


# -- python -m utils wizard, and train --config ---------------------------------------

WIZARD_BAD_ARGUMENTS = [
    _bad(["--preset", "huge"], "--preset", "invalid choice"),
    _bad(["--set", "n_epochs"], "--set", "must be FIELD=VALUE with FIELD one of: data_source"),
    _bad(["--set", "epochs=2"], "--set", "must be FIELD=VALUE"),
    _bad(["--set", "n_epochs=two"], "--set", "n_epochs: 'two' is not a whole number"),
    _bad(["--set", "learning_rate=-1"], "--preset tiny with --set", "learning_rate: must be a positive finite number"),
    _bad(["--model", "user_model.py:build"], "--preset tiny", "seq_len: 64 exceeds the model's max_seq_len=32"),
    _bad(["--seq-len", "1"], "--seq-len", "must be at least 2"),
    _bad(["--model", "bad_models.py:Missing"], "--model", "defines no 'Missing'"),
    _bad(["--config-out", "mine"], "--config-out", "is a folder; pass a file path such as mine/wizard_config.json"),
    _bad(["--config-out", "afile"], "--config-out", "already exists; pass --overwrite to replace it"),
    _bad(["--config-out", ""], "--config-out", "must be a file or folder path"),
    _bad(["--config-out", "afile/settings.json"], "--config-out", "is a file, so the folder cannot be made there"),
]


@pytest.mark.parametrize(("argv", "flag", "fix"), WIZARD_BAD_ARGUMENTS)
def test_wizard_bad_arguments_fail_before_any_work(argv, flag, fix, workspace, monkeypatch, capsys):
    _assert_usage_error(["wizard", *argv], flag, fix, workspace, monkeypatch, capsys)


GIVE_UP_S = TERMINAL_GIVE_UP_S
SMALL_WIZARD_RUN = ["--seq-len", "32", "--set", "max_steps=2", "--set", "warmup_steps=none", "--set", "device=cpu"]


def _run_piped(root: Path, argv: list[str], stdin_text: str) -> subprocess.CompletedProcess:
    """`python -m utils ARGV` in ``root`` with ``stdin_text`` piped in: a stdin that is not a terminal."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "utils", *argv],
        cwd=root,
        env=env,
        input=stdin_text,
        capture_output=True,
        text=True,
        timeout=GIVE_UP_S,
    )


@pytest.fixture(scope="module")
def wizard_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The wizard on USER_MODEL with stdin piped (answers nobody asked for) and --config-out: the file it wrote."""
    root = tmp_path_factory.mktemp("wizard")
    (root / "user_model.py").write_text(USER_MODEL)
    argv = ["wizard", "--model", f"{root / 'user_model.py'}:build", *SMALL_WIZARD_RUN, "--config-out", "wiz.json"]
    proc = _run_piped(root, argv, "y\ny\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "wiz.json", proc


def test_wizard_without_a_terminal_asks_nothing_and_writes_only_the_named_file(wizard_file):
    path, proc = wizard_file
    assert "setup wizard [5/5] summary: ready" in proc.stdout
    assert "[y/N]" not in proc.stdout and "settings file [" not in proc.stdout  # no question was asked
    assert "Settings written to wiz.json; to train with them: python -m utils train --config wiz.json" in proc.stdout
    assert sorted(_tree(path.parent)) == ["user_model.py", "wiz.json"]  # and no training ran
    saved = json.loads(path.read_text())
    assert (saved["preset"], saved["seq_len"], saved["max_steps"], saved["warmup_steps"]) == ("tiny", 32, 2, None)


def test_wizard_without_a_terminal_or_config_out_writes_nothing(tmp_path):
    (tmp_path / "user_model.py").write_text(USER_MODEL)
    argv = ["wizard", "--model", f"{tmp_path / 'user_model.py'}:build", *SMALL_WIZARD_RUN]
    proc = _run_piped(tmp_path, argv, "y\n\ny\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "No settings file written (no terminal to ask in; pass --config-out FILE to write one)." in proc.stdout
    assert "[y/N]" not in proc.stdout
    assert list(_tree(tmp_path)) == ["user_model.py"]


def test_train_with_the_file_the_wizard_wrote(wizard_file, tmp_path):
    path, _ = wizard_file
    model = ["--model", f"{path.parent / 'user_model.py'}:build"]
    argv = ["train", "--config", str(path), *model, "--output-dir", str(tmp_path), "--run-name", "wiz"]
    code, stdout = _main_with_output([*argv, "--lr", "0.002", "--no-progress"])  # a typed flag overrides the file
    assert code == 0
    assert f"settings from {path}" in stdout
    settings = json.loads((tmp_path / "wiz" / "config.json").read_text())["settings"]
    assert (settings["seq_len"], settings["max_steps"], settings["warmup_steps"]) == (32, 2, None)  # the file's
    assert (settings["batch_size"], settings["max_corpus_bytes"]) == (8, 50_000)  # the tiny preset's, kept
    assert settings["learning_rate"] == 0.002 and settings["device"] == "cpu"
    assert json.loads((tmp_path / "wiz" / "results.json").read_text())["optimizer_steps"] == 2


def test_questions_stop_at_the_end_of_input(monkeypatch):
    def closed(prompt: str) -> str:
        raise EOFError  # Ctrl-D, or a closed stdin

    monkeypatch.setattr("builtins.input", closed)
    assert cli._ask_config_path() is None  # no file
    assert cli._ask_yes_no("start training now? [y/N]: ") is False  # no training


def _converse(root: Path, argv: list[str], answers: dict[str, str]) -> tuple[str, int]:
    """Run `python -m utils ARGV` under a pseudo-terminal and answer each question by what it asks (Enter when
    ``answers`` has nothing for it); a question is a last line ``<what> [<default>]...: `` still waiting."""
    leader, follower = os.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "utils", *argv], stdin=follower, stdout=follower, stderr=follower, cwd=root, env=env
    )
    os.close(follower)
    transcript, answered_upto = "", 0
    try:
        while (chunk := read_terminal(leader, child)) is not None:
            transcript += chunk
            question = re.search(r"(?:^|\n)([^\n\[]+?) \[[^\n]*\][^\n]*: $", transcript[answered_upto:])
            if question:
                os.write(leader, (answers.get(question.group(1), "") + "\n").encode())
                answered_upto = len(transcript)
        return transcript.replace("\r\n", "\n"), child.wait(timeout=GIVE_UP_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(leader)


@pytest.mark.slow
def test_wizard_in_a_terminal_asks_writes_the_file_and_starts_training(tmp_path):
    (tmp_path / "user_model.py").write_text(USER_MODEL)
    answers = {
        "max_steps": "2",
        "warmup_steps": "none",
        "device": "cpu",
        "run_name": "from-pty",
        "settings file": "",  # Enter: the default file
        "start training now?": "y",
    }
    argv = ["wizard", "--model", f"{tmp_path / 'user_model.py'}:build", "--seq-len", "32"]
    transcript, code = _converse(tmp_path, argv, answers)
    assert code == 0, transcript
    assert "max_steps [none] (or none): " in transcript and "Checked: no problems." in transcript
    assert "settings file [wizard_config.json] ('none': no file): " in transcript
    assert "Settings written to wizard_config.json; to train with them: " in transcript
    saved = json.loads((tmp_path / "wizard_config.json").read_text())
    assert (saved["max_steps"], saved["run_name"], saved["device"]) == (2, "from-pty", "cpu")
    run_dir = tmp_path / "training_output" / "from-pty"  # the training it started, with the file's settings
    assert json.loads((run_dir / "results.json").read_text())["optimizer_steps"] == 2
    assert "| run folder | training_output/from-pty |" in transcript


@pytest.mark.parametrize("subcommand", ["search", "compare", "wizard"])
def test_subcommand_help_states_each_default_once(subcommand, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([subcommand, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in " ".join(text.split())
    by_option = _help_by_option(text)
    assert {"--model", "--seq-len"} <= set(by_option)
    for help_line in by_option.values():
        assert help_line.count("default") <= 1, help_line
