"""The presets as configs, and a recommendation measured on this machine.

``ConfigPresets`` turns the preset table (``utils.ui.preset_table``: what
each preset is for and its settings) into ``WizardConfig`` copies, and
recommends one for a goal and a time budget by timing a few training steps
of the user's model here. Nothing is ever downloaded.

Example:
    >>> list(ConfigPresets.list_presets())[:2]
    ['tiny', 'small']
    >>> ConfigPresets.preset_rows()[0]["seq_len"]
    64
    >>> settings = ConfigPresets.customize("small", n_epochs=1)
    >>> ConfigPresets.get_recommendation("research", time_budget_hours=0.5)["recommended"]
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from utils.checks import check_positive_number
from utils.device import resolve_device
from utils.model_helpers import config_size, validate_model
from utils.models import tiny_gpt
from utils.ui.config import WizardConfig
from utils.ui.estimate import format_duration
from utils.ui.preset_table import GOALS, PRESETS, Preset
from utils.ui.run_estimate import estimate_training_time


class ConfigPresets:
    """The presets: list them, get a copy, customize one, or get one recommended for a goal and a time budget.

    Every method works on the class (``ConfigPresets.get('tiny')``) or an instance.
    """

    @staticmethod
    def list_presets() -> dict[str, str]:
        """Each preset's name and what it is for, in table order (the seed API); ``preset_rows`` has the settings.

        Example:
            >>> ConfigPresets.list_presets()["tiny"]
            'a CPU smoke run, under a minute: 88 steps of batch 8 x 64 on 50 kB of the built-in corpus'
        """
        return {name: preset.description for name, preset in PRESETS.items()}

    @staticmethod
    def preset_rows() -> list[dict[str, Any]]:
        """One row per preset: name, description, hardware and its main settings (a table to show)."""
        keys = ("seq_len", "batch_size", "gradient_accumulation_steps", "learning_rate", "n_epochs", "data_source")
        rows = []
        for preset in PRESETS.values():
            config = ConfigPresets.get(preset.name)
            rows.append(
                {"name": preset.name, "description": preset.description, "hardware": preset.hardware}
                | {key: getattr(config, key) for key in keys}
            )
        return rows

    @staticmethod
    def get(name: str) -> WizardConfig:
        """A new ``WizardConfig`` for preset ``name``: change it freely, the preset stays as it is.

        Raises:
            ValueError: an unknown name, with the list of names.
        """
        if not isinstance(name, str) or name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; the presets are {', '.join(PRESETS)}")
        return WizardConfig(preset=name, **PRESETS[name].settings)

    @staticmethod
    def customize(name: str, **overrides: Any) -> WizardConfig:
        """Preset ``name`` with ``overrides`` (``WizardConfig`` fields); values are checked by ``validate``.

        Example:
            >>> ConfigPresets.customize("chat", dataset_path="my_chats.txt", n_epochs=1)

        Raises:
            ValueError: an unknown preset name.
            TypeError: an override that is not a setting, named (with the closest setting).
        """
        return ConfigPresets.get(name).replace(**overrides)

    @staticmethod
    def get_recommendation(
        goal: str, time_budget_hours: float | None = None, *, model: nn.Module | None = None, config: Any = None
    ) -> dict[str, Any]:
        """The preset for ``goal`` that fits ``time_budget_hours``, from a time MEASURED on this machine.

        Each candidate's time is a few optimizer steps of ``model`` (default: the
        built-in tiny GPT) timed at the preset's batch and sequence length on this
        device, times the preset's optimizer steps for its data. Presets sized for
        a GPU are not measured without one, nor shapes longer than the model's
        ``max_seq_len``; once a preset is over the budget, larger ones are not measured.

        Args:
            goal: one of ``GOALS`` ('research' and 'experiment': the largest that
                fits; 'code', 'chat', 'summarization', 'quick', ...; or a preset name).
            time_budget_hours: the time you have; None: no limit.
            model, config: your model and its config (default ``model.config``).

        Returns:
            dict with recommended (a preset name, or None when none fits), reason,
            estimates (per preset: total_s, hours, seconds_per_step, optimizer_steps,
            device, method, fits; or skipped with why), device, model and budget.

        Raises:
            ValueError: an unknown goal (listing the goals) or a bad budget.
        """
        if not isinstance(goal, str) or goal not in GOALS:
            raise ValueError(f"unknown goal {goal!r}; the goals are {', '.join(GOALS)}")
        check_positive_number(time_budget_hours, "time_budget_hours", allow_none=True)
        model, config, model_label = _model_to_measure(model, config)
        policy, candidates = GOALS[goal]
        runnable, estimates = _runnable(candidates, config)
        budget_s = None if time_budget_hours is None else time_budget_hours * 3600
        chosen = _choose(policy, runnable, budget_s, estimates, lambda name: _measure(name, model, config))
        return {
            "goal": goal,
            "time_budget_hours": time_budget_hours,
            "recommended": chosen,
            "reason": _reason(goal, policy, candidates, chosen, budget_s, estimates),
            "estimates": {name: estimates[name] for name in candidates},
            "device": str(resolve_device("auto")),
            "model": model_label,
        }


# -- the recommendation's parts ----------------------------------------------------------


def _model_to_measure(model: nn.Module | None, config: Any) -> tuple[nn.Module, Any, str]:
    """The user's model, or the built-in tiny GPT long enough for every preset's sequence length."""
    if model is not None:
        validate_model(model)
        return model, config if config is not None else getattr(model, "config", None), type(model).__name__
    longest = max(preset.settings["seq_len"] for preset in PRESETS.values())
    with torch.random.fork_rng(devices=[]):  # building it leaves the caller's random stream alone
        torch.manual_seed(0)
        model, config = tiny_gpt(max_seq_len=longest)
    return model, config, f"the built-in tiny GPT (tiny_gpt(max_seq_len={longest})); pass model= for yours"


def _runnable(candidates: tuple[str, ...], config: Any) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The candidates this device and model can run; the others, with why, as estimate entries."""
    on_gpu = resolve_device("auto").type == "cuda"
    max_seq_len = config_size(config, "max_seq_len")
    runnable, estimates = [], {}
    for name in candidates:
        seq_len = PRESETS[name].settings["seq_len"]
        if PRESETS[name].hardware == "gpu" and not on_gpu:
            estimates[name] = _skipped("sized for one GPU, and this machine has no CUDA device")
        elif max_seq_len is not None and seq_len > max_seq_len:
            estimates[name] = _skipped(f"its seq_len {seq_len} exceeds the model's max_seq_len={max_seq_len}")
        else:
            runnable.append(name)
    return runnable, estimates


def _skipped(why: str) -> dict[str, Any]:
    return {"skipped": why, "fits": None, "total_s": None}


def _choose(
    policy: str,
    runnable: list[str],
    budget_s: float | None,
    estimates: dict[str, dict[str, Any]],
    measure: Callable[[str], dict[str, Any]],
) -> str | None:
    """Measure candidates in order and pick one; record every estimate (or why it was not measured)."""
    if not runnable:
        return None
    if budget_s is None:  # everything fits: measure only the pick, to say how long it takes
        chosen = runnable[-1] if policy == "largest" else runnable[0]
        estimates[chosen] = {**measure(chosen), "fits": True, "skipped": None}
        _mark_unmeasured(runnable, estimates, "not measured: no time budget given")
        return chosen
    chosen = None
    for name in runnable:
        estimate = measure(name)
        fits = estimate.get("total_s") is not None and estimate["total_s"] <= budget_s
        estimates[name] = {**estimate, "fits": fits, "skipped": estimate.get("skipped")}
        if fits:
            chosen = name
        if (fits and policy == "first") or (not fits and policy == "largest"):
            break  # 'first' has its pick; for 'largest', the bigger presets need longer still
    why = "an earlier choice fits" if chosen and policy == "first" else "a smaller preset is over the budget"
    _mark_unmeasured(runnable, estimates, f"not measured: {why}")
    return chosen


def _mark_unmeasured(runnable: list[str], estimates: dict[str, dict[str, Any]], why: str) -> None:
    for name in runnable:
        estimates.setdefault(name, _skipped(why))


def _measure(name: str, model: nn.Module, config: Any) -> dict[str, Any]:
    """A preset's measured time estimate, or why it could not be made (out of memory, say)."""
    try:
        return estimate_training_time(model, config, ConfigPresets.get(name))
    except torch.cuda.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        return _skipped("one training step at its shape ran out of GPU memory")
    except ValueError as err:
        return _skipped(str(err))


def _reason(
    goal: str,
    policy: str,
    candidates: tuple[str, ...],
    chosen: str | None,
    budget_s: float | None,
    estimates: dict[str, dict[str, Any]],
) -> str:
    """One or two sentences: what was picked and why, or why nothing was."""
    if chosen is not None:
        e = estimates[chosen]
        took = f"about {format_duration(e['total_s'])} ({e['optimizer_steps']} steps x {e['seconds_per_step']:.3g} s "
        took += f"measured on {e['device']})"
        if budget_s is None:
            which = "the largest preset" if policy == "largest" else "the preset"
            return f"no time budget given: {chosen!r} is {which} for goal {goal!r} that runs here; it takes {took}"
        return f"{chosen!r} fits the {format_duration(budget_s)} budget for goal {goal!r}: {took}"
    measured = {n: e for n, e in estimates.items() if e.get("total_s") is not None}
    if not measured:
        why = "; ".join(f"{n}: {estimates[n]['skipped']}" for n in candidates)
        return f"no preset for goal {goal!r} can run here ({why})"
    name, e = min(measured.items(), key=lambda item: item[1]["total_s"])
    return (
        f"no preset for goal {goal!r} fits {format_duration(budget_s)} here: the quickest, {name!r}, needs about "
        f"{format_duration(e['total_s'])} ({e['optimizer_steps']} steps x {e['seconds_per_step']:.3g} s measured "
        f"on {e['device']}). Raise the budget, or customize({name!r}, max_steps=...) for a shorter run"
    )


__all__ = ["GOALS", "PRESETS", "ConfigPresets", "Preset"]
