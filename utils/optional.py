"""The one seam for optional dependencies: import a package where it is used, or say how to install it.

wandb, optuna, safetensors, huggingface_hub, ipywidgets and Lightning are
optional: ``import utils`` never loads them, and every feature that needs one
imports it through ``import_optional``, so a missing package always gives the
same kind of message, naming the package and what needed it.

Example:
    >>> optuna = import_optional("optuna", "test_hyperparameter_search")
"""

from __future__ import annotations

import importlib
import types


def import_optional(
    module: str, purpose: str, *, package: str | None = None, alternative: str = ""
) -> types.ModuleType:
    """Import ``module``, or raise an ImportError naming the package to install and what needed it.

    Args:
        module: the module to import, e.g. 'optuna' or 'safetensors.torch'.
        purpose: what needs it, for the message ('W&B logging', 'test_hyperparameter_search').
        package: the pip package name, when it differs from the module's top-level name.
        alternative: what to do instead, appended to the message ('or pass dry_run=True').

    Raises:
        ImportError: the module is not installed (or is blocked, e.g. ``sys.modules[name] = None``).
    """
    package = package or module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        tail = f", {alternative}" if alternative else ""
        raise ImportError(
            f"{purpose} needs the '{package}' package; install it with `pip install {package}`{tail}"
        ) from err
