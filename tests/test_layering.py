"""Layers point down only, over the whole of ``utils/``, and no file outgrows one concern.

The import graph is computed from the code: every module under ``utils/`` is
found on disk and every import statement in it (function-level ones too) is
read with ``ast``. Each module is placed in a layer by ``LAYERS``, a declared
order of module-name prefixes (the longest matching prefix wins), so a new
module lands in its folder's layer without anyone editing a list; a module
that matches no prefix fails the test. No import may point to a higher layer,
and the graph may hold no cycle at all, within a layer either.
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

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "utils"
MAX_PRODUCT_FILE_LINES = 450

# The declared order, bottom first: module-name prefixes per layer (see README, "Layout").
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "base",
        (
            "utils._version",
            "utils.checks",
            "utils.optional",
            "utils.folders",
            "utils.progress",
            "utils.device",
            "utils.records",
        ),
    ),
    ("models", ("utils.model_helpers", "utils.model_family", "utils.models", "utils.causality", "utils.model_copy")),
    ("engine", ("utils.training",)),
    (
        "features",
        (
            "utils.training.training_core",
            "utils.training.run_folder",
            "utils.training.export",
            "utils.training.model_card",
            "utils.training.publish",
            "utils.training.amp_benchmark",
            "utils.diagnostics",
            "utils.compare",
            "utils.search",
            "utils.ui",
        ),
    ),
    (
        "facades",
        (
            "utils.test_functions",
            "utils.tier3_training_utilities",
            "utils.tier3_benchmark_comparison",
            "utils.tier3_hyperparameter_search",
            "utils.tier1_critical_validation",
            "utils.tier2_advanced_analysis",
            "utils.wandb_helpers",
            "utils.training.amp_utils",
        ),
    ),
    ("front ends", ("utils", "utils.report", "utils.cli", "utils.ui.form", "utils.ui.terminal", "utils.__main__")),
)
LAYER_NAMES = [name for name, _ in LAYERS]
# Seed-API paths that only re-export names defined lower down (one docstring line, then imports).
SHIMS = (
    "utils.training.amp_utils",
    "utils.wandb_helpers",
    "utils.tier1_critical_validation",
    "utils.tier2_advanced_analysis",
)


def module_files() -> dict[str, Path]:
    """Every module of the package, by dotted name, found on disk."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that ``name`` (a module, or a module attribute) refers to."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the modules of ours that its import statements name, at any depth of the file."""
    graph = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(_owner(alias.name, modules) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from utils import report` names the module utils.report; `from utils import x` the package.
                targets.update(_owner(f"{node.module}.{alias.name}", modules) for alias in node.names)
        graph[module] = {target for target in targets if target and target != module}
    return graph


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest declared prefix that ``module`` falls under."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    if best is None:
        raise LookupError(f"{module} is in no declared layer: add its prefix to LAYERS")
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} ({LAYER_NAMES[layer_of(module)]}) imports {target} ({LAYER_NAMES[layer_of(target)]})"
        for module, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(module)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


MODULES = module_files()
GRAPH = import_graph(MODULES)


def test_every_module_is_in_a_declared_layer():
    assert len(MODULES) > 40  # the walk does see the package
    unplaced = []
    for module in MODULES:
        try:
            layer_of(module)
        except LookupError as err:
            unplaced.append(str(err))
    assert not unplaced, unplaced


def test_no_import_points_up_the_declared_order():
    assert not upward_imports(GRAPH)


def test_the_import_graph_has_no_cycle():
    assert not cycles(GRAPH)


def test_the_checks_can_fail():
    """Controls: the graph sees real imports, and an upward edge and a cycle are both caught."""
    assert "utils.training.loop" in GRAPH["utils.tier3_training_utilities"]
    assert "utils.report" in GRAPH["utils.cli.main_job"]  # `from utils import report` is the module
    assert upward_imports({"utils.training.loop": {"utils.cli"}, "utils.cli": set()})
    assert cycles({"utils.checks": {"utils.folders"}, "utils.folders": {"utils.checks"}}) == [
        ["utils.checks", "utils.folders"]
    ]
    assert layer_of("utils.training.new_engine_part") == LAYER_NAMES.index("engine")
    assert layer_of("utils.ui.form") == LAYER_NAMES.index("front ends")
    with pytest.raises(LookupError, match="no declared layer"):
        layer_of("elsewhere.module")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_product_file_outgrows_one_concern(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_PRODUCT_FILE_LINES, f"{MODULES[module]} has {lines} lines: split it by concern"


@pytest.mark.parametrize("module", SHIMS)
def test_seed_paths_that_moved_are_pure_re_exports(module):
    tree = ast.parse(MODULES[module].read_text())
    docstring, *rest = tree.body
    assert isinstance(docstring, ast.Expr) and ast.get_docstring(tree).startswith("Re-exports only")
    assert rest and all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in rest)


@pytest.mark.parametrize("layer", LAYER_NAMES[:-1])
def test_importing_a_layer_loads_nothing_above_it(layer):
    """At run time too: a fresh interpreter imports every module up to ``layer`` and no module above it."""
    ceiling = LAYER_NAMES.index(layer)
    wanted = [m for m in sorted(MODULES) if layer_of(m) <= ceiling and m != "utils"]
    code = (
        "import importlib, json, sys\n"
        "import utils\n"
        "ours = lambda: sorted(m for m in sys.modules if m.startswith('utils.'))\n"
        "by_package_init = ours()\n"
        f"for name in {wanted!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps([by_package_init, ours()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    by_package_init, loaded = json.loads(out.stdout)
    assert set(wanted) <= set(loaded)
    assert set(by_package_init) <= {"utils._version", "utils.models", "utils.checks"}  # the package init is light
    # Python runs the package init before any submodule; what it loads is exempt, everything else is checked.
    above = [m for m in loaded if m not in by_package_init and layer_of(m) > ceiling]
    assert not above, above


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
