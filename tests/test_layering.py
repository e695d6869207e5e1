"""Layers point down only: the engine (utils/training/) never imports the modules above it.

``utils/training/`` is the engine and its parts; the tier modules, the
``test_functions`` facade, the CLI and the report sit above it. Checked twice:
statically, on every import statement (function-level ones included), and
at run time, in a fresh interpreter that imports every engine module.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import utils
import utils.training

REPO_ROOT = Path(__file__).resolve().parents[1]
UPPER_MODULES = (
    "utils.tier1_critical_validation",
    "utils.tier2_advanced_analysis",
    "utils.tier3_training_utilities",
    "utils.test_functions",
    "utils.cli",
    "utils.report",
    "utils.__main__",
)
ENGINE_FILES = sorted((REPO_ROOT / "utils" / "training").glob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # from utils import tier3_...
    return names


@pytest.mark.parametrize("path", ENGINE_FILES, ids=[p.name for p in ENGINE_FILES])
def test_engine_modules_import_nothing_above_them(path):
    upward = sorted(name for name in _imported_modules(path) if name.startswith(UPPER_MODULES))
    assert not upward, f"{path.name} imports {upward}: layers point down only"


def test_the_static_check_can_fail():
    """The control: a tier module does import the engine, and the parser sees it."""
    tier3 = REPO_ROOT / "utils" / "tier3_training_utilities.py"
    assert "utils.training.loop" in _imported_modules(tier3)


def test_importing_every_engine_module_loads_no_upper_module():
    modules = [f"utils.training.{m.name}" for m in pkgutil.iter_modules(utils.training.__path__)]
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('utils'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert "utils.training.loop" in loaded
    assert not [name for name in loaded if name.startswith(UPPER_MODULES)], loaded


def _public_functions():
    for info in pkgutil.walk_packages(utils.__path__, prefix="utils."):
        if info.name == "utils.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                yield f"{info.name}.{name}", obj
            elif inspect.isclass(obj):
                for method_name, method in vars(obj).items():
                    if inspect.isfunction(method) and (not method_name.startswith("_") or method_name == "__init__"):
                        yield f"{info.name}.{name}.{method_name}", method


def test_no_public_signature_carries_a_private_keyword():
    found = list(_public_functions())
    assert any(name.endswith("tier3_training_utilities.test_fine_tuning") for name, _ in found)
    private = [
        f"{name}({param})"
        for name, function in found
        for param in inspect.signature(function).parameters
        if param.startswith("_")
    ]
    assert not private, private
