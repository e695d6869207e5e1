"""Tests for utils.training.amp_benchmark: FP32 against bf16 on CPU, with tiny runs.

Nothing here asserts a speedup: step times on a shared CPU say nothing. The
tests check that both arms ran fairly (same weights, same data) and that the
report is consistent with what the arms measured.
"""

from __future__ import annotations

import inspect
import math
import statistics

import pandas as pd
import pytest
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from utils.training import amp_benchmark, loop

ARM = dict(
    n_epochs=1,
    learning_rate=1e-3,
    batch_size=2,
    max_steps=4,
    timing_warmup_steps=1,
    progress=False,
    seq_len=16,
    max_corpus_bytes=20_000,
    max_val_batches=2,
)


def _weights(model):
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest


@pytest.fixture
def arms(monkeypatch):
    """Record every engine run the benchmark makes: its precision, entry weights, settings and results."""
    calls = []
    real = loop.train

    def spy(model, config, settings, *args, **kwargs):
        call = {"precision": settings.precision, "weights": _weights(model), "settings": settings}
        calls.append(call)
        call["results"] = real(model, config, settings, *args, **kwargs)
        return call["results"]

    monkeypatch.setattr(loop, "train", spy)
    return calls


@pytest.fixture
def no_arm_may_run(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("an arm was trained")

    monkeypatch.setattr(loop, "train", fail)


def test_signature_keeps_documented_positional_order():
    params = inspect.signature(amp_benchmark.test_amp_speedup_benchmark).parameters
    positional = [
        ("model", inspect.Parameter.empty),
        ("config", inspect.Parameter.empty),
        ("train_data", None),
        ("n_epochs", 3),
        ("learning_rate", 5e-5),
        ("batch_size", 4),
        ("use_wandb", False),
    ]
    assert [(n, p.default) for n, p in list(params.items())[:7]] == positional
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in list(params.values())[:7])
    assert params["precision"].kind is inspect.Parameter.KEYWORD_ONLY


def test_cpu_benchmark_runs_both_arms_fairly_and_reports(tiny_gpt, cpu_bf16, arms):
    cpu_bf16(True)
    model, config = tiny_gpt
    before = _weights(model)
    tf32_before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    report = amp_benchmark.test_amp_speedup_benchmark(model, config, **ARM)

    # Two arms, FP32 first, each from the same initial weights, seed and data.
    assert [c["precision"] for c in arms] == ["fp32", "bf16"]
    for call in arms:
        _assert_same_weights(call["weights"], before)
        assert call["settings"].seed == 0 and call["settings"].max_steps == 4
        assert call["settings"].wandb_prefix == f"{call['precision']}/"
    fp32, bf16 = arms[0]["results"], arms[1]["results"]
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    # The first step's loss comes from the same weights and batch; bf16 rounds it a little.
    torch.testing.assert_close(bf16["loss_history"][0], fp32["loss_history"][0], rtol=2e-2, atol=2e-2)
    _assert_same_weights(_weights(model), before)  # restored afterwards
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == tf32_before

    assert report["status"] == "ok"
    assert report["amp_precision"] == "bf16" and report["device"] == "cpu"
    # Times are the arms' step times after the warm-up step, medians for the speedup.
    timed_fp32, timed_bf16 = fp32["step_times_s"][1:], bf16["step_times_s"][1:]
    assert report["timed_steps"] == 3
    assert report["fp32_time_s"] == pytest.approx(sum(timed_fp32))
    assert report["amp_time_s"] == pytest.approx(sum(timed_bf16))
    assert report["fp32_step_time_ms"] == pytest.approx(1000 * statistics.median(timed_fp32))
    assert report["speedup"] == pytest.approx(report["fp32_step_time_ms"] / report["amp_step_time_ms"])
    assert report["fp32_time_s"] > 0 and report["amp_time_s"] > 0
    # No CUDA allocator on CPU: memory is not measured.
    assert report["fp32_memory_mb"] is None and report["amp_memory_mb"] is None
    assert report["memory_reduction_pct"] is None
    assert report["fp32_accuracy"] == fp32["val_accuracy"] and report["amp_accuracy"] == bf16["val_accuracy"]
    assert report["accuracy_diff"] == pytest.approx(abs(fp32["val_accuracy"] - bf16["val_accuracy"]))
    assert report["loss_diff"] == pytest.approx(bf16["val_loss"] - fp32["val_loss"])
    assert math.isfinite(report["loss_diff"])

    met = report["requirements_met"]
    assert set(met) == {"speedup", "memory", "accuracy", "all"}
    assert met["memory"] is None and met["all"] is False  # unmeasured memory never passes
    # Four steps teach the FP32 arm nothing measurable, so accuracy "parity" would be vacuous: not judged.
    assert met["accuracy"] is None and any("did not learn" in note for note in report["notes"])
    assert any("CPU" in note for note in report["notes"])

    summary = report["summary"]
    assert isinstance(summary, pd.DataFrame)
    assert list(summary.columns) == ["metric", "fp32", "bf16", "comparison"]
    assert len(summary) == 4
    assert isinstance(report["figure"], Figure) and len(report["figure"].axes) == 4
    assert report["settings"]["amp_dtype"] == "bf16" and report["settings"]["timing_warmup_steps"] == 1
    assert report["settings"]["compile"] is False
    # Each arm's steady-state throughput; no MFU on a CPU.
    assert report["fp32_tokens_per_second"] == fp32["throughput"]["tokens_per_second"] > 0
    assert report["amp_tokens_per_second"] == bf16["throughput"]["tokens_per_second"] > 0
    assert report["fp32_mfu"] is None and report["amp_mfu"] is None


def test_accuracy_parity_is_judged_only_when_the_fp32_arm_learned(tiny_gpt, cpu_bf16):
    cpu_bf16(True)
    model, config = tiny_gpt
    options = {**ARM, "max_steps": 24, "learning_rate": 3e-3, "batch_size": 4, "log_every": 4}
    report = amp_benchmark.test_amp_speedup_benchmark(model, config, **options)
    met = report["requirements_met"]
    # Measured on CPU: FP32 train loss about 5.3 in steps 1-4, validation loss about 3.9 after 24 steps.
    assert met["accuracy"] == (report["accuracy_diff"] < amp_benchmark.TARGET_MAX_ACCURACY_DIFF)
    assert not any("did not learn" in note for note in report["notes"])

    tiny_lr = amp_benchmark.test_amp_speedup_benchmark(model, config, **{**options, "learning_rate": 1e-9})
    assert tiny_lr["accuracy_diff"] < amp_benchmark.TARGET_MAX_ACCURACY_DIFF  # both arms sit at chance: "parity"
    assert tiny_lr["requirements_met"]["accuracy"] is None  # ... which is not reported as met
    assert tiny_lr["requirements_met"]["all"] is not True
    assert any("did not learn" in note for note in tiny_lr["notes"])


@pytest.mark.parametrize(
    "options, match",
    [
        ({"max_steps": "5"}, "max_steps must be a positive integer"),
        ({"learning_rate": True}, "learning_rate must be a positive finite number"),
        ({"grad_clip": "1.0"}, "grad_clip must be a positive finite number or None"),
        ({"weight_decay": float("inf")}, "weight_decay must be a non-negative finite number"),
        ({"allow_tf32": "no"}, "allow_tf32 must be True or False"),
        ({"timing_warmup_steps": 1.5}, "timing_warmup_steps must be a non-negative integer"),
        ({"n_epochs": 0}, "n_epochs must be a positive integer"),
        ({"seq_len": "16"}, "seq_len must be a positive integer or None"),
        ({"device": "tpu"}, "device='tpu'"),
    ],
)
def test_bad_arguments_are_named_before_any_arm_runs(tiny_gpt, no_arm_may_run, options, match):
    model, config = tiny_gpt
    with pytest.raises(ValueError, match=match):
        amp_benchmark.test_amp_speedup_benchmark(model, config, **{**ARM, **options})


def test_unknown_option_is_named(tiny_gpt, no_arm_may_run):
    model, config = tiny_gpt
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['lerning_rate'\]"):
        amp_benchmark.test_amp_speedup_benchmark(model, config, lerning_rate=1e-3, **ARM)


def test_without_reduced_precision_it_skips_and_runs_nothing(tiny_gpt, cpu_bf16, no_arm_may_run):
    cpu_bf16(False)
    model, config = tiny_gpt
    before = _weights(model)
    with pytest.warns(UserWarning, match="No reduced precision is available"):
        report = amp_benchmark.test_amp_speedup_benchmark(model, config, precision="auto", **ARM)
    assert report["status"] == "skipped" and report["amp_precision"] is None
    assert "no native bf16" in report["notes"][0] and "nothing was run" in report["notes"][0]
    assert not any(key.endswith(("_time_s", "_loss", "_accuracy")) for key in report)
    _assert_same_weights(_weights(model), before)


@pytest.mark.parametrize("max_steps, warmup", [(3, 3), (2, 3)])
def test_max_steps_must_exceed_timing_warmup(tiny_gpt, no_arm_may_run, max_steps, warmup):
    model, config = tiny_gpt
    options = {**ARM, "max_steps": max_steps, "timing_warmup_steps": warmup}
    with pytest.raises(ValueError, match=rf"max_steps={max_steps} leaves no timed steps"):
        amp_benchmark.test_amp_speedup_benchmark(model, config, **options)


def test_negative_timing_warmup_is_rejected(tiny_gpt, no_arm_may_run):
    model, config = tiny_gpt
    with pytest.raises(ValueError, match="timing_warmup_steps"):
        amp_benchmark.test_amp_speedup_benchmark(model, config, **{**ARM, "timing_warmup_steps": -1})


@pytest.mark.parametrize("precision", ["fp32", "fp8"])
def test_mixed_precision_arm_must_be_reduced(tiny_gpt, no_arm_may_run, precision):
    model, config = tiny_gpt
    with pytest.raises(ValueError, match=rf"precision='{precision}'"):
        amp_benchmark.test_amp_speedup_benchmark(model, config, precision=precision, **ARM)


@pytest.mark.parametrize(
    "option", [{"use_amp": True}, {"val_data": torch.zeros(2, 8, dtype=torch.long)}, {"callbacks": []}]
)
def test_options_the_benchmark_sets_itself_are_rejected(tiny_gpt, no_arm_may_run, option):
    # precision is the benchmark's own keyword (the mixed-precision arm), so it never lands here.
    model, config = tiny_gpt
    name = next(iter(option))
    with pytest.raises(TypeError, match=rf"does not take {name}="):
        amp_benchmark.test_amp_speedup_benchmark(model, config, **ARM, **option)


def test_model_must_be_a_module(no_arm_may_run):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        amp_benchmark.test_amp_speedup_benchmark(nn.Linear, {"vocab_size": 256}, **ARM)


def test_wandb_logs_both_arms_prefixed_in_one_offline_run(tiny_gpt, cpu_bf16, offline_wandb_log):
    wandb = pytest.importorskip("wandb")
    cpu_bf16(True)
    assert wandb.run is None
    model, config = tiny_gpt
    report = amp_benchmark.test_amp_speedup_benchmark(model, config, use_wandb=True, **ARM)
    assert report["status"] == "ok"
    assert wandb.run is None  # the benchmark's own run was finished
    keys = (b"fp32/train/loss", b"bf16/train/loss", b"fp32/val/loss", b"bf16/val/loss")
    written = offline_wandb_log(*keys)  # asserts one run for both arms
    for key in keys:
        assert key in written, key


def test_the_arms_train_a_private_copy_so_the_model_keeps_its_mode_and_gradients(tiny_gpt, cpu_bf16, arms):
    cpu_bf16(True)
    model, config = tiny_gpt
    model.eval()
    model.tok_emb.weight.grad = torch.ones_like(model.tok_emb.weight)
    before = _weights(model)
    amp_benchmark.test_amp_speedup_benchmark(model, config, **ARM)
    assert all(call["results"]["optimizer_steps"] == 4 for call in arms)
    _assert_same_weights(_weights(model), before)
    assert not any(m.training for m in model.modules())  # the engine leaves its trainee in train mode; not yours
    torch.testing.assert_close(model.tok_emb.weight.grad, torch.ones_like(model.tok_emb.weight))
