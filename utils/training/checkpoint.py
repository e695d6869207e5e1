"""Training checkpoints: written atomically at each epoch end, read back to resume exactly.

A checkpoint holds the model, optimizer, LR schedule and GradScaler states,
the counters and histories, and every RNG state. Because each epoch's data
order depends only on the seed and the epoch number, resuming from the end
of epoch k with the same settings continues exactly as if nothing had stopped.

Example:
    >>> test_fine_tuning(model, config, n_epochs=2, checkpoint_dir="ckpt")
    >>> test_fine_tuning(model, config, n_epochs=4, resume_from="ckpt/last.pt")
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "last.pt"
FORMAT_VERSION = 1


def checkpoint_path(checkpoint_dir: str | os.PathLike) -> Path:
    """Where ``test_fine_tuning(checkpoint_dir=...)`` writes its checkpoint."""
    return Path(checkpoint_dir) / CHECKPOINT_FILE


def check_checkpoint_dir(checkpoint_dir: Any) -> Path | None:
    """Validate ``checkpoint_dir`` before any work: None, or a folder path (made at the first save)."""
    if checkpoint_dir is None:
        return None
    if not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(f"checkpoint_dir must be a folder path or None, got {type(checkpoint_dir).__name__}")
    path = Path(checkpoint_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"checkpoint_dir={str(path)!r} is a file; pass a folder (it is created if missing)")
    return path


def load_checkpoint(resume_from: Any) -> dict[str, Any]:
    """Read a checkpoint onto the CPU, or explain what is wrong with ``resume_from``."""
    if not isinstance(resume_from, (str, os.PathLike)):
        raise TypeError(f"resume_from must be a checkpoint file path, got {type(resume_from).__name__}")
    path = Path(resume_from)
    if path.is_dir():
        path = checkpoint_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume_from={str(resume_from)!r}: no checkpoint at {path}")
    # Our own files, with plain Python containers and numpy RNG state inside: not weights-only.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or checkpoint.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"resume_from={str(path)!r} is not a test_fine_tuning checkpoint (format {FORMAT_VERSION})")
    return checkpoint


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically: a crash mid-write never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save({"format_version": FORMAT_VERSION, **checkpoint}, partial)
    os.replace(partial, path)
    return path


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states (all CUDA devices too), for an exact resume."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
