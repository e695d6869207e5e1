"""Callbacks on the engine's hooks: early stopping and the AMP-to-W&B logger.

A callback is any object with some of ``on_train_begin(state)``,
``on_log(state, row)``, ``on_epoch_end(state, row)`` and
``on_train_end(state, results)``. One with ``state_dict()`` and
``load_state_dict(state)`` has its state saved in ``last.pt`` and restored on
resume, so that (for example) early-stopping patience survives a restart.

Example:
    >>> stop = EarlyStopping(patience=3)
    >>> test_fine_tuning(model, config, n_epochs=20, callbacks=[stop], checkpoint_dir="ckpt")
    >>> stop.stopped_epoch
"""

from __future__ import annotations

import math
from typing import Any

from utils.checks import check_bool, check_choice, check_non_negative_number, check_positive_int, check_str
from utils.training.wandb_run import active_run, require_active_run

MODES = ("min", "max")
# Lightning's names for fp16 mixed precision, the one that has a GradScaler.
FP16_PRECISIONS = ("16", "16-mixed", "16_true", "16-true")


def is_improvement(value: Any, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """True when ``value`` beats ``best`` by more than ``min_delta`` ('min': lower is better). NaN never does."""
    if not isinstance(value, (int, float)) or math.isnan(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class EarlyStopping:
    """Stop training when the monitored epoch metric stops improving.

    **Patience counts epochs**: after ``patience`` epochs in a row without an
    improvement of more than ``min_delta``, it sets ``state.stop_training``, and
    training ends after that epoch (its checkpoint is still written). Its state
    (best value, epochs waited) is saved in ``last.pt`` and restored on resume.

    Args:
        patience: epochs without improvement before stopping (at least 1).
        min_delta: how much better than the best a value must be to count.
        monitor: a key of the epoch row ('val/loss', 'val/accuracy', 'train/loss', ...).
        mode: 'min' (lower is better) or 'max'.

    Raises:
        ValueError: on a bad argument; at the first epoch end, when the row has no ``monitor`` key.
    """

    def __init__(self, patience: int, min_delta: float = 0.0, monitor: str = "val/loss", mode: str = "min") -> None:
        check_positive_int(patience, "patience")
        check_non_negative_number(min_delta, "min_delta")
        check_str(monitor, "monitor")
        check_choice(mode, "mode", MODES)
        self.patience, self.min_delta, self.monitor, self.mode = patience, float(min_delta), monitor, mode
        self.best: float | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, state: Any, row: dict[str, Any]) -> None:
        if self.monitor not in row:
            raise ValueError(
                f"EarlyStopping(monitor={self.monitor!r}): the epoch row has no such key; use one of {sorted(row)}"
            )
        value = row[self.monitor]
        if is_improvement(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = float(value), 0
        else:
            self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = state.epoch
            state.stop_training = True

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers only: it goes into ``last.pt``, which is read with ``weights_only=True``."""
        return {"best": self.best, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait, self.stopped_epoch = state["best"], state["wait"], state["stopped_epoch"]

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta}, monitor={self.monitor!r}, "
            f"mode={self.mode!r})"
        )


class AmpWandbCallback:
    """Logs ``amp/enabled``, ``amp/precision`` and ``amp/loss_scale`` to W&B.

    Use it in ``test_fine_tuning(..., callbacks=[AmpWandbCallback()])``, or,
    with Lightning installed, ``Trainer(callbacks=[AmpWandbCallback.for_lightning()])``.
    Errors are never swallowed: no active W&B run raises at train start, and a
    failing ``wandb.log`` propagates.

    The seed API's form, ``AmpWandbCallback(enabled=True, precision='16')``, is a
    Lightning callback that logs once per epoch (``on_train_epoch_end``), reading
    the scaler from ``trainer.strategy.precision_plugin.scaler``; like the seed's,
    it logs nothing (and raises nothing) while no W&B run is active.

    Args:
        enabled: the seed API's "is AMP on" flag; giving it (or ``precision``)
            selects the once-per-epoch form.
        precision: the seed API's Lightning precision string ('16', '16-mixed', 'bf16', '32' ...).
        log_every: log at every ``log_every``-th optimizer step (or Lightning batch).

    Raises:
        ValueError: if ``log_every`` is not a positive integer, ``enabled`` not a bool
            or ``precision`` not a string.
    """

    def __init__(self, enabled: bool | None = None, precision: str | None = None, log_every: int = 1) -> None:
        check_positive_int(log_every, "log_every")
        if enabled is not None:
            check_bool(enabled, "enabled")
        if precision is not None:
            check_str(precision, "precision")
        self.log_every = log_every
        self.enabled = enabled
        self.precision = precision
        self.per_epoch = enabled is not None or precision is not None

    # -- test_fine_tuning hooks ------------------------------------------------
    def on_train_begin(self, state: Any) -> None:
        require_active_run("AmpWandbCallback")

    def on_log(self, state: Any, row: dict[str, Any]) -> None:
        """Called by the training loop at each ``log_every`` boundary with the metrics row."""
        if state.optimizer_step % self.log_every:
            return
        self._log(
            {
                "amp/enabled": state.plan.amp_enabled,
                "amp/precision": state.plan.name,
                "amp/loss_scale": row.get("amp/loss_scale"),
            }
        )

    # -- Lightning hooks -------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not self.per_epoch:
            require_active_run("AmpWandbCallback")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.per_epoch or batch_idx % self.log_every:
            return
        precision = str(getattr(trainer, "precision", "32"))
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        self._log(
            {
                "amp/enabled": not precision.startswith("32"),
                "amp/precision": precision,
                # get_scale() syncs; it runs only every log_every batches.
                "amp/loss_scale": scaler.get_scale() if scaler is not None else None,
            }
        )

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """The seed form's one row per epoch; the scale only for fp16 (bf16 and fp32 have none)."""
        if not self.per_epoch or active_run() is None:
            return
        fp16 = bool(self.enabled) and str(self.precision) in FP16_PRECISIONS
        self._log(
            {
                "amp/enabled": int(bool(self.enabled)),
                "amp/precision": self.precision,
                "amp/loss_scale": self._get_loss_scale(trainer) if fp16 else None,
                "epoch": getattr(trainer, "current_epoch", None),
            }
        )

    @staticmethod
    def _get_loss_scale(trainer: Any) -> float | None:
        """The GradScaler's scale (a sync: once per epoch), or None when the trainer has no scaler."""
        strategy_plugin = getattr(getattr(trainer, "strategy", None), "precision_plugin", None)
        plugin = strategy_plugin or getattr(trainer, "precision_plugin", None)
        scaler = getattr(plugin, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and hasattr(scaler, "get_scale") else None

    @classmethod
    def for_lightning(cls, log_every: int = 1) -> AmpWandbCallback:
        """An instance that is also a Lightning ``Callback`` (needs lightning installed)."""
        try:
            from lightning.pytorch import Callback
        except ImportError:
            try:
                from pytorch_lightning import Callback
            except ImportError as err:
                raise ImportError("AmpWandbCallback.for_lightning needs Lightning: pip install lightning") from err
        lightning_cls = type("LightningAmpWandbCallback", (cls, Callback), {})
        return lightning_cls(log_every=log_every)

    @staticmethod
    def _log(values: dict[str, Any]) -> None:
        require_active_run("AmpWandbCallback").log({k: v for k, v in values.items() if v is not None})
