"""One flat metrics dict per step or epoch, feeding a DataFrame, a CSV and W&B.

Example:
    >>> tracker = MetricsTracker()
    >>> tracker.log_epoch(0, {"train/loss": 2.3}, {"val/loss": 2.1})
    >>> tracker.get_summary()   # a pandas DataFrame, one row per epoch
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from utils.training.data import IGNORE_INDEX


class MetricsTracker:
    """Collects metric rows and sends each to W&B as it arrives (when ``use_wandb``).

    Args:
        use_wandb: log every row to the active W&B run.
        wandb_prefix: put before every W&B key (e.g. 'fp32/'), so two runs of
            a comparison can share one W&B run without colliding.
    """

    def __init__(self, use_wandb: bool = False, wandb_prefix: str = "") -> None:
        self.use_wandb = use_wandb
        self.wandb_prefix = wandb_prefix
        self.epoch_rows: list[dict[str, Any]] = []
        self.step_rows: list[dict[str, Any]] = []
        self.scalars: list[dict[str, Any]] = []

    @staticmethod
    def compute_perplexity(loss: float) -> float:
        """exp(loss), or inf when that overflows."""
        try:
            return math.exp(loss)
        except OverflowError:
            return math.inf

    @staticmethod
    def compute_accuracy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> float:
        """Share of positions where argmax(logits) equals the label, skipping ``ignore_index``.

        ``logits`` is (..., V) and ``labels`` (...), already aligned (shift
        them first for next-token accuracy). Returns nan when nothing counts.
        This reads the result on the host: keep it out of per-step loops.
        """
        keep = labels != ignore_index
        correct = (logits.argmax(dim=-1) == labels) & keep
        n = int(keep.sum())
        return int(correct.sum()) / n if n else math.nan

    def log_epoch(
        self,
        epoch: int,
        train_metrics: dict[str, Any],
        val_metrics: dict[str, Any] | None = None,
        learning_rate: float | None = None,
        gradient_norm: float | None = None,
        epoch_duration_s: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Record one epoch as a flat row, log it, and return it."""
        row: dict[str, Any] = {"epoch": epoch, **train_metrics, **(val_metrics or {})}
        optional = {"lr": learning_rate, "train/grad_norm": gradient_norm, "epoch_time_s": epoch_duration_s}
        row.update({k: v for k, v in optional.items() if v is not None})
        row.update(extra)
        if "val/loss" in row and "val/perplexity" not in row:
            row["val/perplexity"] = self.compute_perplexity(row["val/loss"])
        self.epoch_rows.append(row)
        self._send(row)
        return row

    def log_step(self, row: dict[str, Any]) -> None:
        """Record one logging-step row (``train/step``, ``train/loss``, ``lr`` ...)."""
        self.step_rows.append(dict(row))
        self._send(row)

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        """Record a single named value, e.g. a benchmark figure."""
        self.scalars.append({"name": name, "value": value, "step": step})
        self._send({name: value} if step is None else {name: value, "train/step": step})

    def get_summary(self):
        """Per-epoch rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.epoch_rows)

    def get_step_history(self):
        """Per-logging-step rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.step_rows)

    def get_best_epoch(self, metric: str = "val/loss", mode: str = "min") -> int | None:
        """The epoch with the best ``metric``, or None when no epoch has it."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        rows = [r for r in self.epoch_rows if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]
        if not rows:
            return None
        pick = min if mode == "min" else max
        return pick(rows, key=lambda r: r[metric])["epoch"]

    def to_csv(self, path: str | Path, steps: bool = False) -> Path:
        """Write the epoch rows (or the step rows) to a CSV file and return its path."""
        path = Path(path)
        (self.get_step_history() if steps else self.get_summary()).to_csv(path, index=False)
        return path

    def _send(self, row: dict[str, Any]) -> None:
        if not self.use_wandb:
            return
        import wandb

        if wandb.run is None:
            raise RuntimeError("MetricsTracker(use_wandb=True) needs an active W&B run; call wandb.init() first")
        wandb.run.log({f"{self.wandb_prefix}{k}": v for k, v in row.items() if v is not None})
