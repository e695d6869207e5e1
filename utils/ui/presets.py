"""Training presets sized for what users train here, and a recommendation measured on this machine.

A preset holds training settings only (sequence length, batch, learning rate,
epochs, warm-up, accumulation, precision 'auto' and the data source); the
user brings the model. Nothing is ever downloaded: the built-in presets train
on Python's standard library source, and ``chat`` and ``summarization``
train on the user's own text (``dataset_path``).

Example:
    >>> ConfigPresets.list_presets()[0]["name"]
    'tiny'
    >>> settings = ConfigPresets.customize("small", n_epochs=1)
    >>> ConfigPresets.get_recommendation("research", time_budget_hours=0.5)["recommended"]
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
import torch.nn as nn

from utils.checks import check_positive_number
from utils.device import resolve_device
from utils.model_helpers import config_size, validate_model
from utils.models import tiny_gpt
from utils.ui.setup_wizard import WizardConfig, estimate_training_time, format_duration


@dataclass(frozen=True)
class Preset:
    """One preset: what it is for, the hardware it is sized for, and its settings (``WizardConfig`` fields)."""

    name: str
    description: str
    hardware: str  # 'cpu': runs anywhere; 'gpu': sized for one GPU, and not measured without one
    settings: Mapping[str, Any]


def _preset(name: str, description: str, hardware: str, **settings: Any) -> Preset:
    return Preset(name, description, hardware, MappingProxyType(settings))


# The built-in corpus (Python's standard library source) is about 4.7 MB, so 5_000_000 bytes means all of it.
PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        p.name: p
        for p in (
            _preset(
                "tiny",
                "a CPU smoke run, under a minute: 88 steps of batch 8 x 64 on 50 kB of the built-in corpus",
                "cpu",
                seq_len=64,
                batch_size=8,
                learning_rate=1e-3,
                n_epochs=1,
                warmup_steps=10,
                max_corpus_bytes=50_000,
                max_val_batches=4,
            ),
            _preset(
                "small",
                "a laptop-CPU run of a few minutes: 2 epochs of batch 16 x 128 on 500 kB of the built-in corpus",
                "cpu",
                seq_len=128,
                batch_size=16,
                learning_rate=6e-4,
                n_epochs=2,
                warmup_steps=30,
                max_corpus_bytes=500_000,
                max_val_batches=10,
            ),
            _preset(
                "medium",
                "a single-GPU run: 3 epochs of 32 x 512 tokens per step over the whole built-in corpus",
                "gpu",
                seq_len=512,
                batch_size=16,
                gradient_accumulation_steps=2,
                learning_rate=3e-4,
                n_epochs=3,
                warmup_steps=50,
                max_corpus_bytes=5_000_000,
            ),
            _preset(
                "large",
                "a GPT-2-small-shape run on one H100: seq 1024, 64 sequences (65k tokens) per step, "
                "5 epochs over the whole built-in corpus (pass dataset_path for more text)",
                "gpu",
                seq_len=1024,
                batch_size=16,
                gradient_accumulation_steps=4,
                learning_rate=6e-4,
                n_epochs=5,
                warmup_steps=30,
                max_corpus_bytes=5_000_000,
            ),
            _preset(
                "code_generation",
                "code completion: 2 epochs of batch 16 x 256 over the built-in corpus, which is Python code",
                "cpu",
                seq_len=256,
                batch_size=16,
                learning_rate=5e-4,
                n_epochs=2,
                warmup_steps=50,
                max_corpus_bytes=5_000_000,
            ),
            _preset(
                "chat",
                "dialogue on your own text (dataset_path): seq 512 holds a few turns; a gentler lr 2e-4",
                "cpu",
                data_source="file",
                seq_len=512,
                batch_size=8,
                learning_rate=2e-4,
                n_epochs=3,
                warmup_steps=None,  # 10% of the run: the user's data sets its length
                max_val_batches=20,
            ),
            _preset(
                "summarization",
                "summaries of your own documents (dataset_path): seq 1024 holds a document and its summary; lr 1e-4",
                "cpu",
                data_source="file",
                seq_len=1024,
                batch_size=4,
                gradient_accumulation_steps=2,
                learning_rate=1e-4,
                n_epochs=3,
                warmup_steps=None,  # 10% of the run: the user's data sets its length
                max_val_batches=20,
            ),
        )
    }
)

# Goal -> (how to choose, candidate presets). 'largest': the largest that fits (candidates from small to
# large, measured in that order until one does not fit); 'first': the first that fits, in order of preference.
GOALS: Mapping[str, tuple[str, tuple[str, ...]]] = MappingProxyType(
    {
        "research": ("largest", ("tiny", "small", "medium", "large")),
        "experiment": ("largest", ("tiny", "small", "medium", "large")),
        "learning": ("largest", ("tiny", "small")),
        "quick": ("first", ("tiny",)),
        "smoke_test": ("first", ("tiny",)),
        "code": ("first", ("code_generation", "small", "tiny")),  # small and tiny train on the same Python code
        "code_generation": ("first", ("code_generation", "small", "tiny")),
        "chat": ("first", ("chat",)),
        "summarization": ("first", ("summarization",)),
        **{name: ("first", (name,)) for name in PRESETS if name not in ("code_generation", "chat", "summarization")},
    }
)


class ConfigPresets:
    """The presets: list them, get a copy, customize one, or get one recommended for a goal and a time budget.

    Every method works on the class (``ConfigPresets.get('tiny')``) or an instance.
    """

    @staticmethod
    def list_presets() -> list[dict[str, Any]]:
        """One row per preset: name, description, hardware and its main settings."""
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
