"""Figures of a training run, built from its results dict. Library code never calls ``plt.show()``."""

from __future__ import annotations

from typing import Any


def create_training_figure(results: dict[str, Any]) -> Any:
    """Loss, gradient norm, learning rate and loss scale (or accuracy), as one Figure, from the results."""
    from matplotlib.figure import Figure

    epochs, steps = results["metrics_summary"], results["step_history"]
    history = {key: results[f"{key}_history"] for key in ("loss", "grad_norm", "lr", "loss_scale")}

    fig = Figure(figsize=(11, 7), layout="constrained")
    ax_loss, ax_norm, ax_lr, ax_last = fig.subplots(2, 2).flat
    step_axis = range(1, len(history["loss"]) + 1)
    ax_loss.plot(step_axis, history["loss"], lw=0.8, alpha=0.6, label="train (per step)")
    if len(steps):
        ax_loss.plot(steps["train/step"], steps["train/loss"], lw=1.5, label="train (window mean)")
    if len(epochs) and "val/loss" in epochs and len(steps):
        epoch_ends = steps.groupby("epoch")["train/step"].max().reindex(epochs["epoch"]).to_numpy()
        ax_loss.plot(epoch_ends, epochs["val/loss"], "o-", label="validation")
    ax_loss.set(title="Loss", xlabel="optimizer step", ylabel="cross-entropy")
    ax_loss.legend()
    ax_norm.plot(step_axis, history["grad_norm"], lw=0.8)
    ax_norm.set(title="Gradient norm (before clipping)", xlabel="optimizer step", yscale="log")
    ax_lr.plot(step_axis, history["lr"], lw=1.2)
    ax_lr.set(title="Learning rate", xlabel="optimizer step")
    if history["loss_scale"]:
        ax_last.plot(step_axis, history["loss_scale"], lw=1.2)
        ax_last.set(title="fp16 loss scale", xlabel="optimizer step", yscale="log")
    elif len(epochs) and "val/accuracy" in epochs:
        ax_last.plot(epochs["epoch"], epochs["val/accuracy"], "o-", label="validation")
        ax_last.plot(epochs["epoch"], epochs["train/accuracy"], "o-", label="train")
        ax_last.set(title="Next-token accuracy", xlabel="epoch")
        ax_last.legend()
    fig.suptitle(f"test_fine_tuning — precision {results['precision']}")
    return fig
