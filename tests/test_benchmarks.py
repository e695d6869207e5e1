"""The benchmark scripts: each runs end to end on CPU at a tiny size and writes the JSON it promises.

``benchmarks/`` holds scripts, not tests, so nothing here is timed: the smoke
tests run each script as ``python -m benchmarks.NAME`` in a subprocess from
the repository root (2 layers, 32 wide, sequences of 32, a few steps, one
thread) and check its printed table and its JSON. The fast tests check the
shared pieces in ``benchmarks.common``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import common
from utils.model_helpers import count_parameters
from utils.models import tiny_gpt
from utils.records import environment_record
from utils.training.data import make_loader, prepare_lm_data
from utils.training.loop import TrainingSettings
from utils.training.precision import AMP_PRECISIONS, PRECISIONS

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_SIZES = {"n_layers": 2, "d_model": 32, "n_heads": 2, "seq_len": 32}
TINY_ARGS = ["--device", "cpu", "--threads", "1", "--batch-size", "4"]
TINY_ARGS += [f"--{name.replace('_', '-')}={size}" for name, size in TINY_SIZES.items()]
# The library's environment record, plus what only a benchmark run has.
BENCHMARK_ONLY_KEYS = {"date_utc", "steady_malloc", "git_commit", "command"}


def run_module(name: str, *args: str, timeout_s: float) -> subprocess.CompletedProcess:
    """``python -m benchmarks.<name> ARGS`` from the repository root, W&B offline and no display."""
    env = {**os.environ, "MPLBACKEND": "Agg", "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", f"benchmarks.{name}", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)


def run_script(name: str, out: Path, *extra: str) -> tuple[dict, str]:
    """Run ``benchmarks.<name>`` on CPU at the tiny size; return its JSON and its stdout."""
    proc = run_module(name, *TINY_ARGS, "--out", str(out), *extra, timeout_s=300)
    assert proc.returncode == 0, f"benchmarks.{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text()), proc.stdout


def assert_positive(value, what: str) -> None:
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{what} = {value!r}"


def assert_cpu_environment(record: dict, module: str) -> None:
    env = record["environment"]
    assert set(env) == set(environment_record("cpu")) | BENCHMARK_ONLY_KEYS
    assert env["device"] == "cpu" and env["device_name"] == "cpu"
    assert env["torch_version"] == torch.__version__
    assert env["cpu_threads"] == 1  # --threads 1 took effect
    assert env["command"][:2] == ["-m", f"benchmarks.{module}"] and "--threads" in env["command"]


def assert_shape_is_tiny(shape: dict) -> None:
    assert {k: shape[k] for k in TINY_SIZES} == TINY_SIZES
    assert shape["name"] == "tiny-custom"


# -- the scripts, end to end ------------------------------------------------------


@pytest.mark.slow
def test_loop_overhead_times_both_loops_and_judges_the_target(tmp_path):
    out = tmp_path / "out" / "loop.json"
    record, stdout = run_script("loop_overhead", out, "--steps", "8", "--warmup", "2", "--rounds", "2")

    assert record["benchmark"] == "loop_overhead"
    assert_cpu_environment(record, "loop_overhead")
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
    extra = ["--steps", "6", "--warmup", "2", "--val-batches", "2"]
    record, stdout = run_script("amp_sweep", tmp_path / "amp.json", *extra)

    assert record["benchmark"] == "amp_sweep"
    assert_cpu_environment(record, "amp_sweep")
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
    extra = ["--steps", "6", "--compile", "both", "--compile-backend", "eager"]
    record, stdout = run_script("mfu", tmp_path / "mfu.json", *extra)

    assert record["benchmark"] == "mfu"
    assert_cpu_environment(record, "mfu")
    assert_shape_is_tiny(record["settings"]["shape"])
    eager, compiled = record["runs"]
    assert (eager["mode"], compiled["mode"]) == ("eager", "compiled")
    assert eager["compile_options"] is None and compiled["compile_options"] == {"backend": "eager"}
    positive_keys = (
        "step_time_ms_median",
        "first_step_ms",
        "tokens_per_second",
        "achieved_tflops_per_device",
        "flops_per_token",
    )
    for run in (eager, compiled):
        for key in positive_keys:
            assert_positive(run[key], f"{run['mode']} {key}")
        assert run["optimizer_steps"] == 6 and run["timed_steps"] == 6 - run["warmup_steps_excluded"]
        expected_tflops = run["tokens_per_second"] * run["flops_per_token"] / 1e12
        assert run["achieved_tflops_per_device"] == pytest.approx(expected_tflops)
        assert run["mfu"] is None and run["peak_tflops_per_device"] is None and run["peak_memory_mb"] is None
        assert "cpu" in run["peak_note"]
    # Same weights, data and ops (the eager backend runs the traced graph as is): the same validation loss.
    torch.testing.assert_close(compiled["val_loss"], eager["val_loss"], rtol=1e-5, atol=1e-6)
    (verdict,) = record["targets"]
    assert verdict["met"] is None and verdict["value"] is None  # no MFU on CPU
    assert "| compiled (eager) |" in stdout


@pytest.mark.slow
def test_a_script_refuses_a_bad_option_with_a_message(tmp_path):
    out = tmp_path / "x.json"
    proc = run_module("amp_sweep", *TINY_ARGS, "--steps", "2", "--warmup", "5", "--out", str(out), timeout_s=120)
    assert proc.returncode != 0
    assert "--steps must be at least 6" in proc.stderr
    assert not out.exists()


# -- benchmarks.common -------------------------------------------------------------


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
    return argparse.Namespace(**{**defaults, **given})


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


def workload(**changes) -> common.Workload:
    """A tiny CPU workload, as ``make_workload`` builds it from the command line."""
    fields = {
        "shape": common.SHAPES["tiny"],
        "batch_size": 4,
        "steps": 5,
        "learning_rate": 1e-3,
        "seed": 3,
        "device": torch.device("cpu"),
        "corpus_bytes": 50_000,
        **changes,
    }
    return common.Workload(**fields)


def test_workload_settings_are_one_epoch_of_its_steps_for_the_engine():
    settings = workload().settings(precision="bf16", max_val_batches=1)
    assert isinstance(settings, TrainingSettings)
    assert (settings.n_epochs, settings.max_steps, settings.batch_size, settings.seq_len) == (1, 5, 4, 128)
    assert (settings.learning_rate, settings.seed, settings.max_corpus_bytes) == (1e-3, 3, 50_000)
    assert (settings.precision, settings.max_val_batches, settings.progress) == ("bf16", 1, False)


def test_workload_settings_are_validated_by_the_engine():
    with pytest.raises(ValueError, match="precision"):
        workload().settings(precision="fp8")


def test_environment_record_is_the_librarys_plus_the_run():
    record = common.environment_record(torch.device("cpu"))
    library = environment_record("cpu")
    assert set(record) == set(library) | BENCHMARK_ONLY_KEYS
    for key in ("device", "torch_version", "python_version", "tf32_matmul", "float32_matmul_precision"):
        assert record[key] == library[key], key
    assert isinstance(record["command"], list)


def test_precision_options_come_from_the_precision_table():
    from benchmarks import amp_sweep, loop_overhead

    for name in PRECISIONS:
        assert loop_overhead.parse_args(["--precision", name]).precision == name
    for name in ("auto", *AMP_PRECISIONS):
        assert amp_sweep.parse_args(["--precision", name]).precision == name
    for parse_args, refused in ((loop_overhead.parse_args, "fp8"), (amp_sweep.parse_args, "fp32")):
        with pytest.raises(SystemExit):  # argparse names the choices on stderr
            parse_args(["--precision", refused])


def test_steady_malloc_is_on_by_default_and_recorded():
    parser = argparse.ArgumentParser()
    common.add_common_options(parser, default_out="x.json", default_steps=1, several_shapes=False)
    assert parser.parse_args([]).malloc == "steady"
    assert parser.parse_args(["--malloc", "default"]).malloc == "default"
    assert common.steady_malloc() is True  # glibc here: the settings took
    assert "steady_malloc" in common.environment_record(torch.device("cpu"))
