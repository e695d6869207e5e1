"""The setup wizard and the training presets: from a goal to checked training settings.

``import utils.ui`` stays as light as ``import utils``; the wizard and the
presets load on first use.

Example:
    >>> from utils.ui import ConfigPresets, quick_setup
    >>> settings = quick_setup(model, config, preset="tiny")
"""

from __future__ import annotations

import importlib

# Public name -> module that defines it, imported on first use.
_LAZY = {
    "WizardConfig": "utils.ui.config",
    "SetupWizard": "utils.ui.setup_wizard",
    "quick_setup": "utils.ui.setup_wizard",
    "ConfigPresets": "utils.ui.presets",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'utils.ui' has no attribute {name!r}")
