"""utils: test and train custom transformer models from a notebook.

``import utils`` loads only torch and numpy. The tiers load pandas,
matplotlib, wandb and friends when you call them.

Example:
    >>> import utils
    >>> model, config = utils.tiny_gpt()
    >>> results = utils.test_fine_tuning(model, config, use_amp=True, max_steps=50)
    >>> print(utils.generate(model, "def ", tokenizer=results["tokenizer"], max_new_tokens=40))
"""

from __future__ import annotations

import importlib

from utils._version import __version__
from utils.models import ModelConfig, tiny_encoder, tiny_gpt

# Public name -> module that defines it, imported on first use to keep `import utils` light.
_LAZY = {
    "test_fine_tuning": "utils.tier3_training_utilities",
    "test_amp_speedup_benchmark": "utils.training.amp_benchmark",
    "MetricsTracker": "utils.training.metrics_tracker",
    "resolve_precision": "utils.training.precision",
    "compute_effective_precision": "utils.training.precision",
    "AmpWandbCallback": "utils.training.callbacks",
    "test_hyperparameter_search": "utils.tier3_hyperparameter_search",
    "test_benchmark_comparison": "utils.tier3_benchmark_comparison",
    "TrainingCoordinator": "utils.training.training_core",
    "train_model": "utils.training.training_core",
    "EarlyStopping": "utils.training.callbacks",
    "export_state_dict": "utils.training.export",
    "load_exported_weights": "utils.training.export",
    "publish_to_hub": "utils.training.publish",
    "SetupWizard": "utils.ui.setup_wizard",
    "WizardConfig": "utils.ui.setup_wizard",
    "quick_setup": "utils.ui.setup_wizard",
    "ConfigPresets": "utils.ui.presets",
    "generate": "utils.training.generation",
}

__all__ = ["ModelConfig", "tiny_encoder", "tiny_gpt", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'utils' has no attribute {name!r}")
