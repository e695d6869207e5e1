"""Re-exports only (a seed API path): the Tier 2 checks, now one per module in ``utils.diagnostics``."""

from utils.diagnostics.attention import capture_attentions, test_attention_patterns  # noqa: F401
from utils.diagnostics.attribution import test_attribution_analysis  # noqa: F401
from utils.diagnostics.robustness import test_robustness  # noqa: F401
from utils.diagnostics.tiers import TIER2_TESTS  # noqa: F401
