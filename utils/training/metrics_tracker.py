"""One flat metrics dict per step or epoch, feeding a DataFrame and W&B.

W&B's x-axis is the optimizer step: step rows go to W&B at ``step=row['train/step']``
and epoch rows at the ``step`` the training loop passes (the optimizer step at
the epoch's end). A tracker with a ``wandb_prefix`` shares its run with another
one (the AMP benchmark's 'fp32/' and 'bf16/' arms, each counting from step 1),
so it charts its keys against its own '<prefix>train/step' key instead.

Example:
    >>> tracker = MetricsTracker()
    >>> tracker.log_step({"train/step": 10, "train/loss": 2.4})
    >>> tracker.log_epoch(0, {"train/loss": 2.3}, {"val/loss": 2.1}, learning_rate=3e-4, step=20)
    >>> tracker.get_summary()   # a pandas DataFrame, one row per epoch
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from utils.checks import (
    check_bool,
    check_choice,
    check_non_negative_int,
    check_non_negative_number,
    check_str,
    is_int,
)
from utils.training.data import IGNORE_INDEX
from utils.training.wandb_run import active_run

STEP_KEY = "train/step"
# An epoch row shares its W&B step with the last step row; these of its keys go to W&B under their own
# names, so the epoch means never overwrite that step's window means (and the step rows carry 'lr').
EPOCH_WANDB_KEYS = {"train/loss": "train/epoch_loss", "train/accuracy": "train/epoch_accuracy", "lr": None}
# exp(100) = 2.7e43 already says "diverged"; the seed API clips the loss there rather than return inf.
PERPLEXITY_MAX_LOSS = 100.0


class MetricsTracker:
    """Collects metric rows and sends each to W&B as it arrives (when ``use_wandb``).

    Args:
        use_wandb: log every row to the active W&B run. With no active run, the
            tracker warns once and keeps the rows locally (as the seed API did).
        wandb_prefix: put before every W&B key (e.g. 'fp32/'), so two runs of
            a comparison can share one W&B run without colliding.

    Raises:
        ValueError: if ``use_wandb`` is not a bool or ``wandb_prefix`` is not a string.
    """

    def __init__(self, use_wandb: bool = False, wandb_prefix: str = "") -> None:
        check_bool(use_wandb, "use_wandb")
        if wandb_prefix != "":
            check_str(wandb_prefix, "wandb_prefix")
        self.use_wandb = use_wandb
        self.wandb_prefix = wandb_prefix
        self.epoch_rows: list[dict[str, Any]] = []
        self.step_rows: list[dict[str, Any]] = []
        self.scalars: list[dict[str, Any]] = []
        self._step_metric_run_id: str | None = None  # the run in which the prefixed step metric is defined
        self._warned_no_run = False

    @property
    def metrics_history(self) -> list[dict[str, Any]]:
        """The epoch rows (the seed API's name for ``epoch_rows``)."""
        return self.epoch_rows

    @staticmethod
    def compute_perplexity(loss: float) -> float:
        """exp(loss), with the loss clipped at 100 (``PERPLEXITY_MAX_LOSS``) so that it never overflows.

        A loss of 100 nats is a diverged run whatever its exact value; the clip keeps the
        figure finite (2.7e43), as the seed API does. NaN stays NaN.
        """
        return math.exp(min(loss, PERPLEXITY_MAX_LOSS))

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
        train_metrics: Mapping[str, Any],
        val_metrics: Mapping[str, Any] | None = None,
        learning_rate: float | None = None,
        gradient_norm: float | None = None,
        epoch_duration: float | None = None,
        step: int | None = None,
    ) -> dict[str, Any]:
        """Record one epoch as a flat row, log it, and return it.

        Both the engine's prefixed keys and the seed API's plain ones are taken:
        ``{"loss": 2.5, "accuracy": 0.7}`` as ``train_metrics`` becomes 'train/loss'
        and 'train/accuracy' (and ``val_metrics`` 'val/...'), and such a seed-style
        row also gets 'train/perplexity' and the seed's 'learning_rate' column.

        Args:
            epoch: the epoch number (from 0).
            train_metrics: e.g. ``{"train/loss": 2.3}`` or ``{"loss": 2.3, "accuracy": 0.4}``.
            val_metrics: e.g. ``{"val/loss": 2.1, "val/accuracy": 0.4}``; 'val/perplexity'
                is added from 'val/loss' unless given.
            learning_rate: stored as 'lr' when given.
            gradient_norm: stored as 'gradient_norm' when given.
            epoch_duration: seconds, stored as 'epoch_duration' when given.
            step: the optimizer step at the epoch's end, stored as 'train/step' and
                used as the W&B step; None logs at W&B's own step counter.

        Returns:
            The row: epoch, the metrics, and lr, train/step and the perplexities where they apply.

        Raises:
            ValueError: on a bad argument, naming it.
        """
        check_non_negative_int(epoch, "epoch")
        _check_metrics(train_metrics, "train_metrics")
        _check_metrics(val_metrics, "val_metrics", allow_none=True)
        for value, name in ((learning_rate, "learning_rate"), (gradient_norm, "gradient_norm")):
            check_non_negative_number(value, name, allow_none=True)
        check_non_negative_number(epoch_duration, "epoch_duration", allow_none=True)
        check_non_negative_int(step, "step", allow_none=True)
        seed_style = any("/" not in key for key in train_metrics)
        train, val = _prefixed(train_metrics, "train/"), _prefixed(val_metrics or {}, "val/")
        row: dict[str, Any] = {"epoch": epoch, **train, **val}
        optional = {"lr": learning_rate, "gradient_norm": gradient_norm, "epoch_duration": epoch_duration}
        row.update({key: value for key, value in {**optional, STEP_KEY: step}.items() if value is not None})
        if seed_style:
            row.update({"learning_rate": learning_rate} if learning_rate is not None else {})
            self._add_perplexity(row, "train/")
        self._add_perplexity(row, "val/")
        self.epoch_rows.append(row)
        # The epoch row closes its step: commit it, so the W&B summary shows it now rather than at the next step.
        renamed = {EPOCH_WANDB_KEYS.get(key, key): value for key, value in row.items()}
        self._send({key: value for key, value in renamed.items() if key is not None}, commit=True)
        return row

    def _add_perplexity(self, row: dict[str, Any], prefix: str) -> None:
        loss = row.get(f"{prefix}loss")
        if isinstance(loss, (int, float)) and f"{prefix}perplexity" not in row:
            row[f"{prefix}perplexity"] = self.compute_perplexity(loss)

    def log_step(self, row: Mapping[str, Any]) -> None:
        """Record one logging-step row (``train/step``, ``train/loss``, ``lr`` ...) and log it at ``train/step``.

        Raises:
            ValueError: if ``row`` is not a dict.
        """
        _check_metrics(row, "row")
        self.step_rows.append(dict(row))
        self._send(row)

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        """Record a single named value, e.g. a benchmark figure, at ``step`` if given."""
        check_str(name, "name")
        check_non_negative_int(step, "step", allow_none=True)
        self.scalars.append({"name": name, "value": value, "step": step})
        self._send({name: value} if step is None else {name: value, STEP_KEY: step})

    def get_summary(self):
        """Per-epoch rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.epoch_rows)

    def get_step_history(self):
        """Per-logging-step rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.step_rows)

    def get_best_epoch(self, metric: str = "val/loss", mode: str = "min") -> int | None:
        """The epoch with the best ``metric`` ('min' or 'max' ``mode``), or None when no epoch has it."""
        check_str(metric, "metric")
        check_choice(mode, "mode", ("min", "max"))
        rows = [r for r in self.epoch_rows if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]
        if not rows:
            return None
        pick = min if mode == "min" else max
        return pick(rows, key=lambda r: r[metric])["epoch"]

    def _send(self, row: Mapping[str, Any], *, commit: bool | None = None) -> None:
        """Log ``row`` (None values left out, keys prefixed) to the active W&B run; without one, warn once."""
        if not self.use_wandb:
            return
        run = active_run()
        if run is None:
            self._warn_no_run()
            return
        values = {f"{self.wandb_prefix}{key}": value for key, value in row.items() if value is not None}
        if self.wandb_prefix:
            self._define_prefixed_step_metric(run)
            run.log(values)
        else:
            run.log(values, step=_wandb_step(run, row), commit=commit)

    def _warn_no_run(self) -> None:
        if not self._warned_no_run:
            self._warned_no_run = True
            warnings.warn(
                "MetricsTracker(use_wandb=True) found no active W&B run, so rows are kept here and not sent to W&B; "
                "start one with utils.training.wandb_run.initialize_wandb_run() or wandb.init() first",
                stacklevel=3,
            )

    def _define_prefixed_step_metric(self, run: Any) -> None:
        # Each arm of the AMP benchmark counts from step 1 in the same run, so step= would go backwards
        # and wandb would drop the second arm; each prefix gets its own x-axis key instead.
        if self._step_metric_run_id == run.id:
            return
        run.define_metric(f"{self.wandb_prefix}*", step_metric=f"{self.wandb_prefix}{STEP_KEY}")
        self._step_metric_run_id = run.id


def _wandb_step(run: Any, row: Mapping[str, Any]) -> int | None:
    """The row's optimizer step as the W&B step, or None (W&B's own counter) where that cannot be used."""
    step = row.get(STEP_KEY)
    if not is_int(step):
        return None
    # wandb drops a row whose step is behind its counter. Another logger (AmpWandbCallback logs without
    # step=) may have closed this step already; then the row goes to the current step rather than nowhere.
    return int(step) if step >= run.step else None


def _prefixed(metrics: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The seed API's plain keys ('loss') under ``prefix`` ('train/loss'); prefixed keys as they are."""
    return {key if "/" in key else f"{prefix}{key}": value for key, value in metrics.items()}


def _check_metrics(value: Any, name: str, *, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if not isinstance(value, Mapping):
        or_none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a dict of metric name -> value{or_none}, got {type(value).__name__}")
