"""Re-exports only (a seed API path): the Tier 1 checks, now one per module in ``utils.diagnostics``."""

from utils.diagnostics.common import check_positive_ints, default_amp_precisions  # noqa: F401
from utils.diagnostics.gradients import layer_label, test_gradient_flow  # noqa: F401
from utils.diagnostics.initialization import test_parameter_initialization  # noqa: F401
from utils.diagnostics.memory import (  # noqa: F401
    OPTIMIZER_STATE_SLOTS,
    cuda_peak_bytes,
    measure_training_memory,
    test_memory_footprint,
)
from utils.diagnostics.shapes import test_shape_robustness  # noqa: F401
from utils.diagnostics.speed import latency_stats, test_inference_speed  # noqa: F401
from utils.diagnostics.stability import test_output_stability  # noqa: F401
from utils.diagnostics.tiers import TIER1_TESTS  # noqa: F401
