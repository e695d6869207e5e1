"""template.ipynb runs top to bottom on a real Jupyter kernel, as a user would run it."""

from __future__ import annotations

import json
import re
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
    # "Real text": a BPE of the model's size, bits per byte, the samples and utils.generate's text.
    assert "TextTokenizer('bpe-1024', vocab_size=1024): val bits per byte " in text
    assert "--- sample at step 0 (before training) ---" in text and "sample: def " in text
    # "Train, keep the best, export": the run, its export, and the export's parity check.
    run_dir = tmp_path / "training_output" / "notebook-tiny-gpt"
    assert f"run folder {run_dir}: best val/loss" in text
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert {p.name for p in (run_dir / "export").iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    assert "parity: ok: " in text
    assert "the reloaded model's logits match the trained model's" in text
    # Every figure shows as an image, the new sections' too (the library's Figures need %matplotlib inline).
    images = {
        marker: any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))
        for cell in notebook.cells
        for marker in ("test_fine_tuning(", "test_hyperparameter_search(", "test_benchmark_comparison(")
        if marker in cell.source
    }
    assert images == dict.fromkeys(images, True) and len(images) == 3, images
    # The wizard's settings fed a run, and were saved for `python -m utils train --config`.
    settings_file = tmp_path / "training_output" / "wizard_config.json"
    assert f"wizard settings in {settings_file}: from a terminal, python -m utils train --config" in text
    assert re.search(r"wizard run: 20 steps, best val/loss \d+\.\d{3}", text), text
    assert json.loads(settings_file.read_text())["max_steps"] == 20
    assert (tmp_path / "training_output" / "notebook-wizard" / "checkpoints" / "best.pt").is_file()
    # A short search, in memory, and the comparison with its verdict.
    assert re.search(r"search: best val/loss \d+\.\d{3} with learning_rate=\S+, batch_size=[48]\n", text), text
    assert re.search(r"search: 4 trials, \d pruned, 0 failed", text), text
    assert re.search(r"comparison verdict: your model reaches val loss \d+\.\d\d vs the baseline's", text), text
