"""The benchmark scripts: each runs end to end on CPU at a tiny size and writes the JSON it promises.

``benchmarks/`` holds scripts, not tests, so nothing here is timed: the smoke
tests run each script as a subprocess (2 layers, 32 wide, sequences of 32, a
few steps, one thread) and check its printed table and its JSON. The fast
tests check the shared pieces in ``benchmarks/common.py``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.model_helpers import count_parameters
from utils.models import tiny_gpt
from utils.training.data import make_loader, prepare_lm_data

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_SIZES = dict(n_layers=2, d_model=32, n_heads=2, seq_len=32)
TINY_ARGS = ["--device", "cpu", "--threads", "1", "--batch-size", "4", "--n-layers", "2", "--d-model", "32",
             "--n-heads", "2", "--seq-len", "32"]  # fmt: skip
ENVIRONMENT_KEYS = {
    "date_utc", "device", "device_name", "torch", "cuda", "cpu_threads", "tf32", "git_commit", "command",
}  # fmt: skip


def load_common():
    """benchmarks/common.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("benchmarks_common", REPO_ROOT / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


common = load_common()


def run_script(name: str, out: Path, *extra: str) -> tuple[dict, str]:
    """Run ``benchmarks/<name>.py`` on CPU at the tiny size; return its JSON and its stdout."""
    env = {**os.environ, "MPLBACKEND": "Agg", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{name}.py", *TINY_ARGS, "--out", str(out), *extra],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"{name}.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text()), proc.stdout


def assert_positive(value, what: str) -> None:
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{what} = {value!r}"


def assert_cpu_environment(record: dict) -> None:
    env = record["environment"]
    assert ENVIRONMENT_KEYS <= set(env), f"missing {ENVIRONMENT_KEYS - set(env)}"
    assert env["device"] == "cpu" and env["device_name"] == "cpu"
    assert env["torch"] == torch.__version__
    assert env["cpu_threads"] == 1  # --threads 1 took effect
    assert set(env["tf32"]) == {"matmul_allow_tf32", "cudnn_allow_tf32", "float32_matmul_precision"}


def assert_shape_is_tiny(shape: dict) -> None:
    assert {k: shape[k] for k in TINY_SIZES} == TINY_SIZES
    assert shape["name"] == "tiny-custom"


# -- the scripts, end to end ------------------------------------------------------


@pytest.mark.slow
def test_loop_overhead_times_both_loops_and_judges_the_target(tmp_path):
    record, stdout = run_script("loop_overhead", tmp_path / "out" / "loop.json",
                                "--steps", "8", "--warmup", "2", "--rounds", "2")  # fmt: skip

    assert record["benchmark"] == "loop_overhead"
    assert_cpu_environment(record)
    assert_shape_is_tiny(record["settings"]["shape"])
    result = record["result"]
    assert [r["first"] for r in result["rounds"]] == ["bare", "loop"]  # the order alternates
    for r in result["rounds"]:
        assert_positive(r["bare_step_ms"], "bare_step_ms")
        assert_positive(r["loop_step_ms"], "loop_step_ms")
        assert r["overhead_pct"] == pytest.approx(100 * (r["loop_step_ms"] / r["bare_step_ms"] - 1))
    assert result["overhead_pct"] == pytest.approx(statistics.median(r["overhead_pct"] for r in result["rounds"]))
    (verdict,) = record["targets"]
    assert verdict["threshold"] == 3.0
    assert verdict["met"] is (result["overhead_pct"] <= 3.0)
    assert "| bare loop (ms/step) |" in stdout and "targets:" in stdout


@pytest.mark.slow
def test_amp_sweep_writes_one_full_report_per_shape(tmp_path):
    record, stdout = run_script("amp_sweep", tmp_path / "amp.json", "--steps", "6", "--warmup", "2",
                                "--val-batches", "2")  # fmt: skip

    assert record["benchmark"] == "amp_sweep"
    assert_cpu_environment(record)
    assert record["settings"]["amp_precision"] == "bf16"  # CPU: FP32 against bf16 autocast
    assert record["settings"]["fp32_tf32"] is False
    (entry,) = record["results"]  # CPU default: the tiny shape only
    assert_shape_is_tiny(entry["shape"])
    torch.manual_seed(0)
    model, _ = tiny_gpt(d_model=32, n_layers=2, n_heads=2, max_seq_len=32)
    assert entry["parameters"] == count_parameters(model)["total"]
    report = entry["report"]
    assert report["status"] == "ok" and report["amp_precision"] == "bf16"
    for key in ("fp32_step_time_ms", "amp_step_time_ms", "speedup", "fp32_tokens_per_second", "amp_tokens_per_second"):
        assert_positive(report[key], key)
    assert report["speedup"] == pytest.approx(report["fp32_step_time_ms"] / report["amp_step_time_ms"])
    assert report["timed_steps"] == 6 - 2
    assert 0.0 <= report["accuracy_diff"] <= 1.0
    # No CUDA allocator and no datasheet peak on CPU: left empty, never zero.
    assert report["fp32_memory_mb"] is None and report["memory_reduction_pct"] is None
    assert report["fp32_mfu"] is None and report["amp_mfu"] is None
    assert "figure" not in report
    assert [row["metric"] for row in report["summary"]][0] == "median step time (ms)"  # DataFrame -> records
    speedup, memory, accuracy = record["targets"]
    assert speedup["met"] is None and memory["met"] is None  # GPU goals, not judged on CPU
    assert accuracy["met"] is (report["accuracy_diff"] < 0.01)
    assert "| tiny-custom |" in stdout


@pytest.mark.slow
def test_mfu_runs_eager_and_compiled_from_the_same_weights(tmp_path):
    # The 'eager' dynamo backend traces without code generation: the compile path in seconds, not minutes.
    record, stdout = run_script("mfu", tmp_path / "mfu.json", "--steps", "6", "--compile", "both",
                                "--compile-backend", "eager")  # fmt: skip

    assert record["benchmark"] == "mfu"
    assert_cpu_environment(record)
    assert_shape_is_tiny(record["settings"]["shape"])
    eager, compiled = record["runs"]
    assert (eager["mode"], compiled["mode"]) == ("eager", "compiled")
    assert eager["compile_options"] is None and compiled["compile_options"] == {"backend": "eager"}
    for run in (eager, compiled):
        for key in ("step_time_ms_median", "first_step_ms", "tokens_per_second", "achieved_tflops_per_device",
                    "flops_per_token"):  # fmt: skip
            assert_positive(run[key], f"{run['mode']} {key}")
        assert run["optimizer_steps"] == 6 and run["timed_steps"] == 6 - run["warmup_steps_excluded"]
        assert run["achieved_tflops_per_device"] == pytest.approx(
            run["tokens_per_second"] * run["flops_per_token"] / 1e12)  # fmt: skip
        assert run["mfu"] is None and run["peak_tflops_per_device"] is None and run["peak_memory_mb"] is None
        assert "cpu" in run["peak_note"]
    # Same weights, data and ops (the eager backend runs the traced graph as is): the same validation loss.
    torch.testing.assert_close(compiled["val_loss"], eager["val_loss"], rtol=1e-5, atol=1e-6)
    (verdict,) = record["targets"]
    assert verdict["met"] is None and verdict["value"] is None  # no MFU on CPU
    assert "| compiled (eager) |" in stdout


@pytest.mark.slow
def test_a_script_refuses_a_bad_option_with_a_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/amp_sweep.py", *TINY_ARGS, "--steps", "2", "--warmup", "5",
         "--out", str(tmp_path / "x.json")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "--steps must be at least 6" in proc.stderr
    assert not (tmp_path / "x.json").exists()


# -- benchmarks/common.py ----------------------------------------------------------


def test_gpt2_small_shape_has_gpt2_small_parameter_count():
    with torch.device("meta"):  # sizes only: no 500 MB of weights to initialise
        model, config = common.build_model(common.SHAPES["gpt2-small"])
    assert (config.n_layers, config.d_model, config.n_heads, config.max_seq_len) == (12, 768, 12, 1024)
    # Counted by hand: embeddings 50304*768 + 1024*768, 12 blocks of 7,087,872, final norm 1536
    # (the LM head is tied to the token embedding): GPT-2 small with nanoGPT's padded vocabulary.
    assert count_parameters(model)["total"] == 124_475_904


def shape_args(**given):
    """The parsed shape options, as ``add_common_options`` leaves them, with ``given`` set."""
    defaults = {"shape": None, "shapes": None, **dict.fromkeys(common.SHAPE_OVERRIDES)}
    return common.argparse.Namespace(**{**defaults, **given})


def test_default_shapes_depend_on_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # only compared, never used
    assert common.chosen_shape(shape_args(), cpu) == common.SHAPES["tiny"]
    assert common.chosen_shape(shape_args(), cuda) == common.SHAPES["gpt2-small"]
    assert common.chosen_shapes(shape_args(), cpu) == [common.SHAPES["tiny"]]
    assert common.chosen_shapes(shape_args(), cuda) == list(common.SHAPES.values())
    assert common.chosen_shapes(shape_args(shapes=["medium"]), cuda) == [common.SHAPES["medium"]]


def test_shape_overrides_replace_sizes_and_rename_the_shape():
    shape = common.chosen_shape(shape_args(shape="small", n_layers=2, d_model=32), torch.device("cpu"))
    assert (shape.name, shape.n_layers, shape.d_model) == ("small-custom", 2, 32)
    assert shape.n_heads == common.SHAPES["small"].n_heads
    assert not common.is_preset(shape, "small")


def test_corpus_bytes_cover_the_steps_in_one_epoch_of_full_batches():
    steps, batch_size, seq_len = 7, 3, 16
    corpus_bytes = common.corpus_bytes_for(steps, batch_size, seq_len)
    data = prepare_lm_data(None, None, vocab_size=256, seq_len=seq_len, max_corpus_bytes=corpus_bytes)
    loader = make_loader(data.train, batch_size, shuffle=True, seed=0, pad_token_id=0)
    assert len(data.train) >= (steps + 1) * batch_size  # every timed batch is full
    assert len(loader) > steps


def test_target_verdicts():
    target = common.Target("overhead", "<=", 3.0, "%", "everywhere")
    assert target.judge(3.0, applies=True)["met"] is True
    assert target.judge(3.1, applies=True)["met"] is False
    assert target.judge(None, applies=True)["met"] is None
    skipped = target.judge(1.0, applies=False, why_not="needs a GPU")
    assert skipped["met"] is None and skipped["note"] == "needs a GPU"
    assert "3.1% -> NOT met" in common.format_verdicts([target.judge(3.1, applies=True)])


def test_table_cells():
    assert common.format_number(None) == "-"
    assert common.format_number(float("nan")) == "-"
    assert common.format_number(1.234, ".1f", "x") == "1.2x"
    assert common.format_percent(0.4215) == "42.1%"
    assert common.format_percent(None) == "-"
