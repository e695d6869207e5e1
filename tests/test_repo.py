"""The repository keeps its promises: CI runs the README's test command, the notebook is clean."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_quick_start_has_exactly_two_commands():
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert commands[0].endswith("python -m utils")
    assert commands[1].endswith("python -m pytest")


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert _quick_start_commands()[1] in ci_lines


def test_template_notebook_is_stored_without_outputs():
    notebook = json.loads((REPO / "template.ipynb").read_text())
    code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code_cells
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code_cells)


def test_runtime_requirements_cover_the_core_packages():
    names = {
        re.split(r"[<>=\[ ]", line.strip(), maxsplit=1)[0].lower()
        for line in (REPO / "requirements-colab-v3.3.0.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"torch", "numpy", "pandas", "matplotlib", "wandb", "tqdm"} <= names
