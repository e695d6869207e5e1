"""Re-exports only (a seed API path): see ``training.precision``, ``utils.device`` and ``training.callbacks``."""

from utils.device import (  # noqa: F401
    MIN_BF16_COMPUTE_CAPABILITY,
    cpu_supports_bf16,
    cuda_supports_bf16,
    tf32_allowed,
    tf32_enabled,
    tf32_settings,
)
from utils.training.callbacks import AmpWandbCallback  # noqa: F401
from utils.training.precision import (  # noqa: F401
    AMP_PRECISIONS,
    PRECISION_NAMES,
    PRECISION_TABLE,
    PRECISIONS,
    MixedPrecisionStep,
    PrecisionPlan,
    compute_effective_precision,
    resolve_precision,
    scaler_scale_tensor,
    validate_precision_args,
)
