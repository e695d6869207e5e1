"""The checks that make up Tier 1 and Tier 2, in the order the runners run them."""

from __future__ import annotations

from collections.abc import Callable

from utils.diagnostics.attention import test_attention_patterns
from utils.diagnostics.attribution import test_attribution_analysis
from utils.diagnostics.gradients import test_gradient_flow
from utils.diagnostics.initialization import test_parameter_initialization
from utils.diagnostics.memory import test_memory_footprint
from utils.diagnostics.robustness import test_robustness
from utils.diagnostics.shapes import test_shape_robustness
from utils.diagnostics.speed import test_inference_speed
from utils.diagnostics.stability import test_output_stability

TIER1_TESTS: tuple[Callable[..., dict], ...] = (
    test_shape_robustness,
    test_gradient_flow,
    test_output_stability,
    test_parameter_initialization,
    test_memory_footprint,
    test_inference_speed,
)
TIER2_TESTS: tuple[Callable[..., dict], ...] = (test_attention_patterns, test_attribution_analysis, test_robustness)
