"""The figure of a hyperparameter search: history, per-epoch curves and parameter importances.

Example:
    >>> fig = create_search_figure(study.trials, importances, title="my search")
    >>> fig.savefig("search.png")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # matplotlib loads when a figure is drawn, never on import
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def create_search_figure(
    trials: Sequence[Any], importances: dict[str, float] | None = None, *, importance_note: str = "", title: str = ""
) -> Figure:
    """The search as one Figure of three panels.

    The panels: the optimisation history (completed and pruned values, failed trials as red lines, the
    best so far), each trial's validation loss per epoch (pruned trials dashed, an x where they stopped),
    and the parameter importances, or ``importance_note`` when there are none.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax_history, ax_curves, ax_importance = fig.subplots(1, 3)
    _plot_history(ax_history, trials)
    _plot_curves(ax_curves, trials)
    _plot_importances(ax_importance, importances, importance_note)
    fig.suptitle(title or "Hyperparameter search")
    return fig


def _plot_history(ax: Axes, trials: Sequence[Any]) -> None:
    from matplotlib.ticker import MaxNLocator

    by_state = {state: [t for t in trials if t.state.name == state] for state in ("COMPLETE", "PRUNED")}
    completed = by_state["COMPLETE"]
    ax.plot([t.number for t in completed], [t.value for t in completed], "o", label="completed")
    pruned = [t for t in by_state["PRUNED"] if t.value is not None]
    ax.plot([t.number for t in pruned], [t.value for t in pruned], "x", color="grey", label="pruned (last value)")
    if completed:
        best = [min(t.value for t in completed if t.number <= c.number) for c in completed]
        numbers = [t.number for t in completed] + [trials[-1].number]  # the line runs on to the last trial
        ax.step(numbers, best + best[-1:], where="post", color="C3", label="best so far")
    failed = [t.number for t in trials if t.state.name == "FAIL"]
    for number in failed:
        ax.axvline(number, color="red", alpha=0.25, lw=1)
    if failed:
        ax.plot([], [], color="red", alpha=0.4, label=f"failed ({len(failed)})")
    _log_scale_if_wide(ax, [t.value for t in completed + pruned])
    ax.set(title="Optimisation history", xlabel="trial", ylabel="validation loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")


def _plot_curves(ax: Axes, trials: Sequence[Any]) -> None:
    from matplotlib.ticker import MaxNLocator

    values = []
    for t in trials:
        if not t.intermediate_values:
            continue
        epochs, losses = zip(*sorted(t.intermediate_values.items()))
        values.extend(losses)
        if t.state.name == "PRUNED":
            ax.plot(epochs, losses, "--", color="grey", alpha=0.7)
            ax.plot(epochs[-1], losses[-1], "x", color="grey", markersize=9)
        else:
            ax.plot(epochs, losses, "o-", alpha=0.8, lw=1.2)
    ax.plot([], [], "--x", color="grey", label="pruned (x: where)")
    _log_scale_if_wide(ax, values)
    ax.set(title="Validation loss per epoch", xlabel="epoch", ylabel="validation loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")


def _plot_importances(ax: Axes, importances: dict[str, float] | None, note: str) -> None:
    ax.set_title("Parameter importance")
    if not importances:
        ax.text(0.5, 0.5, note or "no importances", ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.set_axis_off()
        return
    names = list(importances)[::-1]  # the most important on top
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (optuna, sums to 1)")


def _log_scale_if_wide(ax: Axes, values: Sequence[float]) -> None:
    """A diverged trial's loss can be 1000x a good one's; a log axis keeps both readable."""
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if finite and max(finite) / min(finite) > 20:
        ax.set_yscale("log")
