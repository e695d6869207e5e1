"""diagnostics.tiers and the seed paths: which checks make each tier, and the old imports still work."""

from __future__ import annotations

import importlib

import pytest

from utils import test_functions as tf
from utils import tier1_critical_validation as t1
from utils import tier2_advanced_analysis as t2
from utils.diagnostics import memory, runner, speed, tiers

TIER1_MODULES = ("shapes", "gradients", "stability", "initialization", "memory", "speed")
TIER2_MODULES = ("attention", "attribution", "robustness")


def test_each_check_lives_in_its_own_module_in_run_order():
    assert [c.__module__ for c in tiers.TIER1_TESTS] == [f"utils.diagnostics.{m}" for m in TIER1_MODULES]
    assert [c.__module__ for c in tiers.TIER2_TESTS] == [f"utils.diagnostics.{m}" for m in TIER2_MODULES]
    assert all(check.__test__ is False for check in tiers.TIER1_TESTS + tiers.TIER2_TESTS)


def test_the_facade_and_the_shims_hand_out_the_same_objects():
    assert tf.TIER1_TESTS is t1.TIER1_TESTS is tiers.TIER1_TESTS
    assert tf.TIER2_TESTS is t2.TIER2_TESTS is tiers.TIER2_TESTS
    assert tf.run_checks is runner.run_checks and tf.SUMMARY_COLUMNS is runner.SUMMARY_COLUMNS
    assert [getattr(t1, c.__name__) for c in tiers.TIER1_TESTS] == list(tiers.TIER1_TESTS)
    assert [getattr(t2, c.__name__) for c in tiers.TIER2_TESTS] == list(tiers.TIER2_TESTS)


def test_the_tier1_path_re_exports_the_public_memory_and_speed_helpers():
    # The comparison now calls these public names; the private aliases it once read are gone.
    assert t1.cuda_peak_bytes is memory.cuda_peak_bytes
    assert t1.latency_stats is speed.latency_stats
    assert t1.measure_training_memory is memory.measure_training_memory
    assert not hasattr(t1, "_cuda_peak_bytes") and not hasattr(t1, "_latency_stats")


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (
            "utils.tier1_critical_validation",
            [
                "OPTIMIZER_STATE_SLOTS",
                "check_positive_ints",
                "default_amp_precisions",
                "layer_label",
                "test_gradient_flow",
                "test_inference_speed",
                "test_memory_footprint",
                "test_output_stability",
                "test_parameter_initialization",
                "test_shape_robustness",
            ],
        ),
        (
            "utils.tier2_advanced_analysis",
            ["capture_attentions", "test_attention_patterns", "test_attribution_analysis", "test_robustness"],
        ),
    ],
)
def test_every_name_the_seed_modules_made_public_is_still_there(module, names):
    """The seed modules' ``__all__``, as it was before the split."""
    shim = importlib.import_module(module)
    assert all(hasattr(shim, name) for name in names), [n for n in names if not hasattr(shim, n)]
