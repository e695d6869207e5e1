"""The facade: re-exports, the summary runners and their error handling."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from utils import models
from utils import test_functions as tf
from utils import tier1_critical_validation as t1
from utils import tier2_advanced_analysis as t2
from utils import tier3_training_utilities as t3
from utils.training import amp_benchmark

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
    assert "optimizer must be one of" in summary.loc["test_memory_footprint", "key_figure"]
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


def test_tier3_is_re_exported():
    assert tf.test_fine_tuning is t3.test_fine_tuning
    assert tf.test_amp_speedup_benchmark is amp_benchmark.test_amp_speedup_benchmark
    assert {"test_fine_tuning", "test_amp_speedup_benchmark"} <= set(tf.__all__)
    assert all(hasattr(tf, name) for name in tf.__all__)
    with pytest.raises(AttributeError, match="no attribute 'test_nothing'"):
        _ = tf.test_nothing


RUNNERS = [tf.run_all_tier1_tests, tf.run_all_tier2_tests, tf.run_all_tests]

# Found by calling the runners as a new user might: (options, error type, message).
# The options name test_robustness, so they go to the two runners that include it; all three share run_checks.
BAD_OPTIONS = {
    "text": ("fast", ValueError, "options must be a dict of test name -> keyword arguments"),
    "list": (["test_robustness"], ValueError, "options must be a dict"),
    "int": (5, ValueError, "options must be a dict"),
    "unknown-test": ({"test_speed": {}}, ValueError, r"unknown test name\(s\) \['test_speed'\]"),
    "tuple-key": ({("test_robustness",): {}}, ValueError, "unknown test name"),
    "value-int": ({"test_robustness": 5}, TypeError, "must be a dict of keyword arguments"),
    "value-text": ({"test_robustness": "seed=1"}, TypeError, "must be a dict of keyword arguments"),
    "unknown-keyword": (
        {"test_robustness": {"n_sample": 2}},
        ValueError,
        r"options\['test_robustness'\] has unknown keyword\(s\) \['n_sample'\]; test_robustness takes \[.*'n_samples'",
    ),
    "model-keyword": ({"test_robustness": {"model": None}}, ValueError, "passed by the runner"),
    "int-keyword": ({"test_robustness": {1: 2}}, ValueError, "unknown keyword"),
}


@pytest.mark.parametrize(("options", "error", "message"), BAD_OPTIONS.values(), ids=BAD_OPTIONS)
@pytest.mark.parametrize("runner", [tf.run_all_tier2_tests, tf.run_all_tests], ids=lambda f: f.__name__)
def test_bad_options_fail_before_any_check(watched_gpt, runner, options, error, message):
    model, config, calls = watched_gpt
    with pytest.raises(error, match=message):
        runner(model, config, options=options)
    assert calls == [], "nothing may run before the options are checked"


@pytest.mark.parametrize("progress", ["yes", 1, None], ids=["text", "int", "none"])
@pytest.mark.parametrize("runner", RUNNERS, ids=lambda f: f.__name__)
def test_bad_progress_fails_before_any_check(watched_gpt, runner, progress):
    model, config, calls = watched_gpt
    with pytest.raises(ValueError, match="progress must be True or False"):
        runner(model, config, progress=progress)
    assert calls == []


@pytest.mark.parametrize("bad_model", [models.TinyTransformer, "model", None], ids=["class", "text", "none"])
@pytest.mark.parametrize("runner", RUNNERS, ids=lambda f: f.__name__)
def test_runners_name_a_model_that_is_not_one(tiny_gpt, runner, bad_model):
    model, config = tiny_gpt
    with pytest.raises(TypeError, match="pass the model instance"):
        runner(bad_model, config)
    with pytest.raises(TypeError, match="pass the model instance"):
        runner((model, config), config)


@pytest.mark.parametrize(
    "checks",
    [t1.test_gradient_flow, "test_gradient_flow", ("test_gradient_flow",), (), None, {"a": t1.test_gradient_flow}],
    ids=["function", "text", "names", "empty", "none", "dict"],
)
def test_run_checks_needs_a_tuple_of_checks(tiny_gpt, checks):
    model, config = tiny_gpt
    with pytest.raises(ValueError, match="checks must be a non-empty tuple of check functions"):
        tf.run_checks(model, config, checks, progress=False)


@pytest.mark.parametrize("desc", [5, "", None], ids=["int", "empty", "none"])
def test_run_checks_needs_a_text_label(tiny_gpt, desc):
    model, config = tiny_gpt
    with pytest.raises(ValueError, match="desc must be a non-empty string"):
        tf.run_checks(model, config, (t1.test_parameter_initialization,), progress=False, desc=desc)


def test_runner_progress_in_a_log_is_a_few_plain_lines(tiny_gpt, capsys):
    model, config = tiny_gpt
    summary = tf.run_checks(model, config, (t1.test_parameter_initialization,), desc="Tier 1")
    assert summary["status"].tolist() == ["pass"]
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" in ")[0] for line in lines] == ["Tier 1: 0/1 checks", "Tier 1: 1/1 checks"]
