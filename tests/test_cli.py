"""The main job, `python -m utils`: end to end in a subprocess, and its argument errors in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils import cli

REPO = Path(__file__).resolve().parents[1]

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
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out,) = (tmp_path / "reports").iterdir()
    assert out.name.startswith("run-")
    names = {p.name for p in out.iterdir()}
    assert {"training_curves.png", "amp_benchmark.png", "metrics.csv", "steps.csv", "results.json", "summary.md"} <= names
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
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "utils",
         "--max-steps", "6", "--epochs", "1", "--batch-size", "4", "--no-progress", "--device", "cpu",
         "--precision", "fp32", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
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


def test_user_model_from_file(tmp_path, capsys):
    model_file = tmp_path / "my_model.py"
    model_file.write_text(USER_MODEL)
    out = tmp_path / "report"
    code = cli.main([
        "--model", f"{model_file}:build", "--max-steps", "4", "--epochs", "1", "--no-benchmark", "--no-tiers",
        "--no-progress", "--out", str(out), "--device", "cpu", "--precision", "fp32",
    ])  # fmt: skip
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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "nofile.py:Net"], "--model: no file at nofile.py"),
        (["--model", "just_a_name"], "must look like path/to/file.py:ClassName"),
        (["--device", "cuda:7"], None),
        (["--epochs", "0"], "--epochs must be positive"),
        (["--precision", "fp8"], "invalid choice"),
        (["--resume", "no/such/last.pt"], "--resume no/such/last.pt: no such checkpoint"),
        (["--checkpoint-dir", __file__], "is a file; pass a folder"),
    ],
)
def test_bad_arguments_fail_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "never"
    if argv[0] == "--device":
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        message = "CUDA is not available"
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--out", str(out), "--no-progress"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_existing_out_folder_is_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        cli.main(["--out", str(out), "--quick"])
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_unknown_name_in_model_file_lists_what_is_there(tmp_path, capsys):
    model_file = tmp_path / "m.py"
    model_file.write_text(USER_MODEL)
    with pytest.raises(SystemExit):
        cli.main(["--model", f"{model_file}:Missing", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert "defines no 'Missing'" in err and "BagOfTokens" in err
