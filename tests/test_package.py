"""Package-level checks: a light import, lazy attributes, and no collectable library functions."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import utils

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("pandas", "matplotlib", "wandb", "optuna", "transformers")


# test_functions imports Tier 3 eagerly (no lazy loader), so it must stay as light as the package.
@pytest.mark.parametrize("module", ["utils", "utils.test_functions"])
def test_import_loads_no_heavy_dependencies(module):
    loaded_heavy = f"[m for m in {list(HEAVY_MODULES)!r} if m in sys.modules]"
    code = f"import json, sys; import {module}; print(json.dumps({loaded_heavy}))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"`import {module}` loaded {loaded}; import them where they are used"


def test_version_is_a_dotted_string():
    assert isinstance(utils.__version__, str)
    assert all(part.isdigit() for part in utils.__version__.split("."))


def test_eager_exports():
    from utils import models

    assert utils.tiny_gpt is models.tiny_gpt
    assert utils.tiny_encoder is models.tiny_encoder
    assert utils.ModelConfig is models.ModelConfig


@pytest.mark.parametrize("name", sorted(utils._LAZY))
def test_lazy_attributes_resolve_to_their_module(name):
    assert getattr(utils, name) is getattr(importlib.import_module(utils._LAZY[name]), name)


def test_every_lazy_name_is_in_all():
    assert set(utils._LAZY) <= set(utils.__all__)


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = utils.no_such_thing
    assert not hasattr(utils, "no_such_thing")


def _library_modules() -> list:
    """Import every module under utils/ that exists now. A failing import is a real failure."""
    names = sorted(
        info.name
        for info in pkgutil.walk_packages(utils.__path__, prefix="utils.", onerror=lambda name: None)
        if info.name != "utils.__main__"  # importing it runs the main job
    )
    return [importlib.import_module(name) for name in names]


def test_walk_finds_known_modules():
    names = {module.__name__ for module in _library_modules()}
    assert {"utils.models", "utils.model_helpers", "utils.training", "utils.training.amp_utils"} <= names


def test_library_functions_named_test_are_not_collected_by_pytest():
    offenders = []
    for module in _library_modules():
        for name, obj in vars(module).items():
            if not name.startswith("test_") or not callable(obj):
                continue
            if inspect.getmodule(obj) is not module:
                continue  # re-exported; checked where it is defined
            if getattr(obj, "__test__", True) is not False:
                offenders.append(f"{module.__name__}.{name}")
    assert offenders == [], f"set __test__ = False on {offenders} so pytest never collects them"
