"""Training checkpoints: written atomically at each epoch end, read back safely to resume exactly.

A checkpoint holds the model, optimizer, LR schedule and GradScaler states,
the counters and histories, and every RNG state. Because each epoch's data
order depends only on the seed and the epoch number, resuming from the end
of epoch k with the same settings continues exactly as if nothing had stopped.

A checkpoint is data, never code: it holds only tensors, numbers, strings,
lists, tuples and dicts, and is read with ``torch.load(weights_only=True)``,
which refuses any object that could run code when unpickled. It is checked
against the model (every key and shape) before a single weight is copied.

Example:
    >>> test_fine_tuning(model, config, n_epochs=2, checkpoint_dir="ckpt")
    >>> test_fine_tuning(model, config, n_epochs=4, resume_from="ckpt/last.pt")
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

CHECKPOINT_FILE = "last.pt"
BEST_FILE = "best.pt"  # the best weights so far by the monitored metric, beside last.pt
# 2: RNG states stored as tensors and lists (format 1 held numpy arrays, which only a full unpickler reads).
FORMAT_VERSION = 2
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "optimizer_step", "history", "rng")
_SHOWN_KEYS = 5  # how many mismatched keys an error lists


def checkpoint_path(checkpoint_dir: str | os.PathLike) -> Path:
    """Where ``test_fine_tuning(checkpoint_dir=...)`` writes its checkpoint."""
    return Path(checkpoint_dir) / CHECKPOINT_FILE


def best_checkpoint_path(checkpoint_dir: str | os.PathLike) -> Path:
    """Where the best weights so far are kept, beside ``last.pt``."""
    return Path(checkpoint_dir) / BEST_FILE


def save_best(
    path: Path, weights: dict[str, torch.Tensor], *, epoch: int, monitor: str, mode: str, value: float
) -> Path:
    """Write the best weights so far, with the epoch and the monitored value, atomically."""
    return save_checkpoint(
        path, {"kind": "best", "model": weights, "epoch": epoch, "monitor": monitor, "mode": mode, "value": value}
    )


def load_best(path: str | os.PathLike, name: str = "best checkpoint") -> dict[str, Any]:
    """Read a ``best.pt`` as plain data (``weights_only=True``), or explain what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no best checkpoint at {path}")
    best = _read_data_only(path, name)
    if not isinstance(best, dict) or best.get("kind") != "best" or not isinstance(best.get("model"), dict):
        raise ValueError(f"{name}={str(path)!r} is not a best.pt written by this library")
    return best


def check_checkpoint_dir(checkpoint_dir: Any, name: str = "checkpoint_dir") -> Path | None:
    """Validate ``checkpoint_dir`` before any work: None, or a folder that can be created and written to.

    Nothing is created here; the folder is made at the first save.

    Raises:
        TypeError: not a path.
        ValueError: the path, or a folder above it, is a file, or the place is not writable.
    """
    if checkpoint_dir is None:
        return None
    if not isinstance(checkpoint_dir, (str, os.PathLike)) or isinstance(checkpoint_dir, bool):
        raise TypeError(f"{name} must be a folder path or None, got {type(checkpoint_dir).__name__}")
    path = Path(checkpoint_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}={str(path)!r} is a file; pass a folder (it is created if missing)")
    existing = next((p for p in (path.absolute(), *path.absolute().parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise ValueError(f"{name}={str(path)!r}: {existing} is a file, so the folder cannot be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{name}={str(path)!r}: {existing} is not writable; pass a folder you can write to")
    return path


def load_checkpoint(resume_from: Any, name: str = "resume_from") -> dict[str, Any]:
    """Read a checkpoint onto the CPU as plain data, or explain what is wrong with it.

    Raises:
        TypeError: ``resume_from`` is not a path.
        FileNotFoundError: no file there.
        ValueError: the file holds objects that could run code, is truncated or
            corrupted, or is not a checkpoint of this library.
    """
    if not isinstance(resume_from, (str, os.PathLike)):
        raise TypeError(f"{name} must be a checkpoint file path, got {type(resume_from).__name__}")
    path = Path(resume_from)
    if path.is_dir():
        path = checkpoint_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}={str(resume_from)!r}: no checkpoint at {path}")
    checkpoint = _read_data_only(path, name)
    _check_structure(checkpoint, path, name)
    return checkpoint


def _read_data_only(path: Path, name: str) -> Any:
    """``torch.load(weights_only=True)`` onto the CPU, with errors that name ``name`` and the path."""
    try:
        # weights_only=True: the unpickler builds tensors and plain containers only, and refuses
        # any other global (os.system, a class with __reduce__ ...) before it can run.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refused(path, name, err) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise _damaged(path, name, err) from err


def _refused(path: Path, name: str, err: pickle.UnpicklingError) -> ValueError:
    """The safe loader stopped: at an object that could run code, or at bytes that are no plain data."""
    refused = re.search(r"Unsupported global: GLOBAL [\w.]+", str(err))
    if refused is not None:
        return ValueError(
            f"{name}={str(path)!r} was refused: it holds objects that could run code when loaded "
            f"({refused.group(0)}). Checkpoints are data only; resume from a last.pt written by test_fine_tuning"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(err))
    return ValueError(
        f"{name}={str(path)!r} was refused: it is not a plain-data checkpoint (the safe loader stopped at: "
        f"{detail.group(1) if detail else type(err).__name__}); it is corrupted, or a file that could run code. "
        "Resume from an intact last.pt written by test_fine_tuning"
    )


def _damaged(path: Path, name: str, err: Exception) -> ValueError:
    reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return ValueError(
        f"{name}={str(path)!r} is truncated or corrupted and cannot be read ({type(err).__name__}: {reason}); "
        "resume from an intact last.pt"
    )


def _check_structure(checkpoint: Any, path: Path, name: str) -> None:
    if not isinstance(checkpoint, dict) or checkpoint.get("format_version") != FORMAT_VERSION:
        found = checkpoint.get("format_version") if isinstance(checkpoint, dict) else None
        hint = " (written by an older version of this library; it cannot be read safely)" if found == 1 else ""
        raise ValueError(f"{name}={str(path)!r} is not a test_fine_tuning checkpoint (format {FORMAT_VERSION}){hint}")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing or not isinstance(checkpoint["model"], dict):
        raise ValueError(f"{name}={str(path)!r} is an incomplete checkpoint: it lacks {missing or ['model weights']}")


def load_for_resume(
    resume_from: Any,
    model: nn.Module,
    n_epochs: int,
    *,
    max_steps: int | None = None,
    name: str = "resume_from",
    epochs_name: str = "n_epochs",
    steps_name: str = "max_steps",
) -> dict[str, Any]:
    """Read a checkpoint to resume ``model`` from, before any work: safely, fitting the model, with an epoch left.

    ``n_epochs`` counts from the start of the checkpoint's run, so it must exceed the epochs already done
    (an epoch cut short by ``max_steps`` is not done), and ``max_steps``, when given, the steps taken.

    Raises:
        TypeError, FileNotFoundError, ValueError: as ``load_checkpoint`` and ``check_matches_model``, and
            when the checkpoint has already trained ``n_epochs`` epochs.
    """
    checkpoint = load_checkpoint(resume_from, name=name)
    # An epoch cut short by max_steps is not done: the resume trains the rest of it.
    done = int(checkpoint["epoch"]) + (1 if checkpoint.get("epoch_progress", {"complete": True})["complete"] else 0)
    if done >= n_epochs:
        raise ValueError(
            f"{name}={str(resume_from)!r} finished epoch {done} of its run; {epochs_name} counts from that run's "
            f"start, so pass {epochs_name} > {done} to train on"
        )
    steps = int(checkpoint["optimizer_step"])
    if max_steps is not None and steps >= max_steps:
        raise ValueError(
            f"{name}={str(resume_from)!r}: the run already took {steps} optimizer steps, all that "
            f"{epochs_name}={n_epochs} and {steps_name}={max_steps} allow; raise them to train on"
        )
    check_matches_model(checkpoint, model, name=name)
    return checkpoint


def check_matches_model(checkpoint: dict[str, Any], model: nn.Module, name: str = "resume_from") -> None:
    """Raise before loading unless the checkpoint's weights fit ``model`` key for key and shape for shape.

    ``load_state_dict`` copies tensor by tensor and fails part-way, after
    overwriting the user's weights; this check runs first and touches nothing.
    """
    saved, expected = checkpoint["model"], model.state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in saved and tuple(getattr(saved[k], "shape", ())) != tuple(expected[k].shape)
    ]
    problems = [
        f"{label} {items[:_SHOWN_KEYS]}{' ...' if len(items) > _SHOWN_KEYS else ''}"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if items
    ]
    if problems:
        raise ValueError(
            f"{name}: the checkpoint does not fit this model ({'; '.join(problems)}). Nothing was loaded: "
            "resume with the same architecture and config the checkpoint was trained with"
        )


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically: a crash mid-write never leaves a torn file.

    A failed write (a full disk, above all) removes its ``.partial`` file and leaves the
    previous checkpoint at ``path`` as it was.

    Raises:
        OSError: ENOSPC when the disk filled up, naming the file and the free space left.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        torch.save({"format_version": FORMAT_VERSION, **checkpoint}, partial)
        os.replace(partial, path)
    except (OSError, RuntimeError) as err:
        partial.unlink(missing_ok=True)
        if _disk_is_full(err, path.parent):
            kept = "the previous one is kept" if path.exists() else "no earlier checkpoint existed"
            raise OSError(
                errno.ENOSPC,
                f"the disk is full: could not write the checkpoint {path} ({kept}; "
                f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free there). "
                "Free some space or pass another checkpoint_dir",
            ) from err
        raise
    return path


def _disk_is_full(err: BaseException, folder: Path) -> bool:
    """ENOSPC, or torch's zip writer failing (it reports a short write as 'unexpected pos') with ~no space left."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "unexpected pos" in str(err) or shutil.disk_usage(folder).free < 2**20


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states (all CUDA devices too), as tensors and lists ``weights_only`` accepts."""
    version, mt_state, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": [version, list(mt_state), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what ``capture_rng_state`` recorded."""
    version, mt_state, gauss_next = state["python"]
    random.setstate((version, tuple(mt_state), gauss_next))
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
