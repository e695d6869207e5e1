"""The facade: re-exports, the summary runners and their error handling."""

from __future__ import annotations

import sys
import types

import pandas as pd
import pytest
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from utils import test_functions as tf
from utils import tier1_critical_validation as t1
from utils import tier2_advanced_analysis as t2

# Small sweeps so the whole suite stays quick on a 2-core CPU.
FAST = {
    "test_shape_robustness": {"batch_sizes": (1, 2), "seq_lengths": (1, 8)},
    "test_output_stability": {"n_batches": 3, "batch_size": 2, "seq_len": 8},
    "test_memory_footprint": {"batch_sizes": (1, 2), "seq_len": 8},
    "test_inference_speed": {"batch_size": 1, "seq_len": 8, "n_warmup": 1, "n_iters": 3},
    "test_attention_patterns": {"batch_size": 2, "seq_len": 8},
    "test_attribution_analysis": {"seq_len": 6, "n_steps": 16},
    "test_robustness": {"noise_levels": (0.0, 0.01), "n_samples": 2, "seq_len": 8, "n_trials": 1},
}


def test_every_tier_function_is_re_exported():
    for module in (t1, t2):
        for name in (n for n in dir(module) if n.startswith("test_")):
            assert getattr(tf, name) is getattr(module, name)


def test_run_all_tests_returns_a_summary_with_details(tiny_gpt):
    model, config = tiny_gpt
    summary = tf.run_all_tests(model, config, options=FAST, progress=False)
    assert list(summary.columns) == ["test", "status", "key_figure", "time_s"]
    names = [check.__name__ for check in tf.TIER1_TESTS + tf.TIER2_TESTS]
    assert summary["test"].tolist() == names
    assert summary.set_index("test")["status"].to_dict() == dict.fromkeys(names, "pass")
    assert (summary["time_s"] >= 0).all() and summary["key_figure"].str.len().gt(0).all()
    details = summary.attrs["results"]
    assert list(details) == names
    assert isinstance(details["test_gradient_flow"]["figure"], Figure)
    assert isinstance(details["test_gradient_flow"]["table"], pd.DataFrame)
    # pandas copies attrs on every operation; the details are shared, not deep-copied.
    assert summary[summary["status"] == "pass"].attrs["results"] is details


def test_tier_runners_split_the_checks(tiny_encoder):
    model, config = tiny_encoder
    tier2 = tf.run_all_tier2_tests(
        model,
        config,
        options={k: v for k, v in FAST.items() if k.startswith("test_a") or k == "test_robustness"},
        progress=True,
    )
    assert tier2["test"].tolist() == ["test_attention_patterns", "test_attribution_analysis", "test_robustness"]
    assert set(tier2["status"]) <= {"pass", "warn"}


def test_failed_checks_are_never_reported_as_passing(tiny_gpt):
    model, config = tiny_gpt
    with torch.no_grad():
        model.blocks[0].mlp[0].weight[0, 0] = float("nan")
    tier1_options = {k: v for k, v in FAST.items() if hasattr(t1, k)}
    status = tf.run_all_tier1_tests(model, config, options=tier1_options, progress=False).set_index("test")["status"]
    assert status["test_gradient_flow"] == "fail"
    assert status["test_parameter_initialization"] == "fail"
    assert status["test_output_stability"] == "fail"


def test_an_exception_in_one_check_becomes_an_error_row(tiny_gpt):
    model, config = tiny_gpt

    def test_that_breaks(model, config):
        raise RuntimeError("boom")

    def test_that_returns_nonsense(model, config):
        return {"status": "great", "summary": "trust me"}

    checks = (test_that_breaks, t1.test_parameter_initialization, test_that_returns_nonsense)
    summary = tf.run_checks(model, config, checks, progress=False)
    rows = summary.set_index("test")
    assert rows.loc["test_that_breaks", "status"] == "error"
    assert rows.loc["test_that_breaks", "key_figure"] == "RuntimeError: boom"
    assert "Traceback" in summary.attrs["results"]["test_that_breaks"]["traceback"]
    assert rows.loc["test_parameter_initialization", "status"] == "pass"
    assert rows.loc["test_that_returns_nonsense", "status"] == "error"


def test_a_check_error_does_not_stop_the_tier(tiny_gpt):
    model, config = tiny_gpt
    options = {**{k: v for k, v in FAST.items() if hasattr(t1, k)}, "test_memory_footprint": {"optimizer": "lion"}}
    summary = tf.run_all_tier1_tests(model, config, options=options, progress=False).set_index("test")
    assert summary.loc["test_memory_footprint", "status"] == "error"
    assert "optimizer='lion'" in summary.loc["test_memory_footprint", "key_figure"]
    assert summary.loc["test_inference_speed", "status"] == "pass"


def test_bad_input_is_rejected_before_any_check(tiny_gpt):
    model, config = tiny_gpt
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        tf.run_all_tier1_tests(config, model)
    with pytest.raises(ValueError, match="max_seq_len"):
        tf.run_all_tier2_tests(model, {"vocab_size": 256})
    with pytest.raises(ValueError, match="unknown test name"):
        tf.run_all_tests(model, config, options={"test_speed": {}})

    class ReturnsNone(nn.Module):
        def forward(self, input_ids):
            return None

    with pytest.raises(TypeError, match="output is unusable"):
        tf.run_all_tests(ReturnsNone(), config)


def test_tier3_is_re_exported_lazily(monkeypatch):
    fake = types.ModuleType("utils.training.amp_benchmark")
    fake.test_amp_speedup_benchmark = lambda *args, **kwargs: "ran"
    monkeypatch.setitem(sys.modules, "utils.training.amp_benchmark", fake)
    assert tf.test_amp_speedup_benchmark() == "ran"
    assert {"test_fine_tuning", "test_amp_speedup_benchmark"} <= set(dir(tf))
    with pytest.raises(AttributeError, match="no attribute 'test_nothing'"):
        _ = tf.test_nothing
