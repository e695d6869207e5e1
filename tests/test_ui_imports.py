"""The wizard's modules (utils/ui/) import in one declared order, computed from the code: no cycle can hide.

Every import statement counts, function-level ones included. ``utils/ui/__init__.py``
loads its four names lazily and imports no wizard module itself.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
UI_DIR = REPO_ROOT / "utils" / "ui"
# Bottom first: a module may import only the ones before it.
UI_ORDER = (
    "preset_table",  # data only
    "data_source",
    "estimate",  # memory and step timing
    "inspect",  # every problem at once (reads estimate for the memory check)
    "config",  # WizardConfig (its validate is inspect's)
    "run_estimate",  # the whole run's time (reads inspect and estimate)
    "presets",
    "setup_wizard",
    "terminal",  # the front ends
    "form",
)


def _ui_imports(path: Path) -> set[str]:
    """The utils.ui modules that any import statement in ``path`` names, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # from utils.ui import terminal
    return {name.split(".")[2] for name in names if name.startswith("utils.ui.") and name.split(".")[2] in UI_ORDER}


def test_the_order_names_every_module_of_the_package():
    modules = {p.stem for p in UI_DIR.glob("*.py")} - {"__init__"}
    assert modules == set(UI_ORDER)


@pytest.mark.parametrize("name", UI_ORDER)
def test_each_module_imports_only_the_modules_below_it(name):
    below = set(UI_ORDER[: UI_ORDER.index(name)])
    upward = sorted(_ui_imports(UI_DIR / f"{name}.py") - below)
    assert not upward, f"utils/ui/{name}.py imports {upward}, which are not below it in {UI_ORDER}"


def test_the_package_init_imports_no_wizard_module():
    assert _ui_imports(UI_DIR / "__init__.py") == set()


def test_the_static_check_sees_function_level_imports(tmp_path):
    """The control: an import inside a function is found, as the old presets <-> setup_wizard cycle was."""
    path = tmp_path / "sample.py"
    path.write_text("def run():\n    from utils.ui.presets import ConfigPresets\n    from utils.ui import terminal\n")
    assert _ui_imports(path) == {"presets", "terminal"}
    assert "inspect" in _ui_imports(UI_DIR / "config.py")


def test_the_presets_load_without_the_wizard():
    code = (
        "import json, sys\n"
        "import utils.ui.presets\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('utils.ui'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert "utils.ui.config" in loaded
    assert not {"utils.ui.setup_wizard", "utils.ui.terminal", "utils.ui.form"} & set(loaded), loaded
