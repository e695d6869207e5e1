"""Re-exports only (a seed API path): see ``training.wandb_run``, ``wandb_config`` and ``callbacks``."""

from utils.model_family import detect_model_type  # noqa: F401
from utils.training.callbacks import AmpWandbCallback  # noqa: F401
from utils.training.precision import PRECISION_NAMES  # noqa: F401
from utils.training.wandb_config import build_wandb_config  # noqa: F401
from utils.training.wandb_run import (  # noqa: F401
    DEFAULT_WANDB_HOST,
    WANDB_MODES,
    active_run,
    describe_wandb_run,
    finish_wandb_run,
    has_wandb_api_key,
    import_wandb,
    initialize_wandb_run,
    print_wandb_summary,
    require_active_run,
    start_run_unless_active,
)
