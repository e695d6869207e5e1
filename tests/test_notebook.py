"""template.ipynb runs top to bottom on a real Jupyter kernel, as a user would run it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    """A kernelspec for this very interpreter, so the notebook sees the same environment."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "utils-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "utils test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("UTILS_OUTPUT_DIR", str(tmp_path / "training_output"))  # runs go here, not into the repo
    return "utils-test"


@pytest.mark.slow
def test_template_notebook_executes_without_errors(kernel_name, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(REPO / "template.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, kernel_name=kernel_name, timeout=600, resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [
        out.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    ]
    text = "".join(outputs)
    assert "utils 3.3.0" in text
    assert "val accuracy" in text
    # "Train, keep the best, export": the run, its export, and the export's parity check.
    run_dir = tmp_path / "training_output" / "notebook-tiny-gpt"
    assert f"run folder {run_dir}: best val/loss" in text
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert {p.name for p in (run_dir / "export").iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    assert "parity: ok: " in text
    assert "the reloaded model's logits match the trained model's" in text
