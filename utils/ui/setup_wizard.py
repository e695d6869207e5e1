"""The setup wizard: from a preset and a few overrides to checked training settings, in five reported steps.

``SetupWizard.run`` walks five steps (data, tokenizer, model check, training
settings, validation and summary) and keeps what each found in ``report``.
Outside a notebook or a terminal it asks nothing: it takes the preset with
its overrides. The interactive front ends plug in at one seam each:
``utils.ui.form.build_form`` (ipywidgets) and ``utils.ui.terminal.ask``.

The wizard's parts live in modules of their own, and this module re-exports
their names (it is the path users import): ``WizardConfig`` (``utils.ui.config``),
the checks (``utils.ui.inspect``), the data sources (``utils.ui.data_source``)
and the estimates (``utils.ui.estimate``, ``utils.ui.run_estimate``).

Example:
    >>> model, config = tiny_gpt()
    >>> settings = quick_setup(model, config, preset="tiny", learning_rate=2e-3)
    >>> results = TrainingCoordinator("runs").train(model, config, **settings.to_train_kwargs())
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import sys
import types
from typing import Any

import torch
import torch.nn as nn

from utils.checks import check_bool
from utils.device import MB  # noqa: F401 (a name this module had)
from utils.diagnostics.shapes import test_shape_robustness
from utils.model_helpers import count_parameters, validate_model
from utils.progress import is_interactive
from utils.training.data import ByteTokenizer
from utils.ui.config import FORMAT_VERSION, WizardConfig, field_types  # noqa: F401
from utils.ui.data_source import DATA_SOURCES, TEXT_SUFFIXES, read_text_folder  # noqa: F401
from utils.ui.estimate import (  # noqa: F401
    TIMED_STEPS,
    available_memory_mb,
    estimate_training_memory,
    format_duration,
    time_training_steps,
)
from utils.ui.inspect import (  # noqa: F401
    STEP_NAMES,
    TRAIN_KEYWORDS,
    Inspection,
    effective_use_amp,
    field_errors,
    inspect_config,
    probe_config,
)
from utils.ui.presets import ConfigPresets
from utils.ui.run_estimate import VALIDATION_STEP_FRACTION, estimate_training_time  # noqa: F401

DEFAULT_PRESET = "tiny"


class SetupWizard:
    """Walk five steps from a preset to checked settings, report each, and return a ``WizardConfig``.

    Args:
        quiet: print nothing (the report is kept either way).
        measure_time: time a few training steps for the summary's estimate (default True).

    Attributes:
        report: after ``run`` (or ``review``), one dict per step: step, name,
            status ('ok', 'warn' or 'error'), summary, errors and what the step found.

    Example:
        >>> wizard = SetupWizard()
        >>> settings = wizard.run(model, config, preset="small", n_epochs=1)
        >>> [step["summary"] for step in wizard.report]
    """

    def __init__(self, *, quiet: bool = False, measure_time: bool = True) -> None:
        check_bool(quiet, "quiet")
        check_bool(measure_time, "measure_time")
        self.quiet = quiet
        self.measure_time = measure_time
        self.report: list[dict[str, Any]] = []

    def run(
        self,
        model: nn.Module,
        config: Any = None,
        *,
        preset: str | None = None,
        interactive: bool | None = None,
        **overrides: Any,
    ) -> WizardConfig:
        """Start from ``preset`` (default 'tiny') with ``overrides``, ask where that fits, check, and report.

        ``interactive=None`` decides by where it runs: a notebook with ipywidgets
        shows the form (``utils.ui.form.build_form``); a terminal asks questions
        (``utils.ui.terminal.ask``); anywhere else (CI, a pipe) it asks nothing.
        ``interactive=False`` never asks; ``interactive=True`` must be able to ask.

        Returns:
            The config. With the notebook form, the form's live config, which its Apply button updates.

        Raises:
            ValueError: a bad argument, or (unless the form shows them) every problem the checks found, at once.
            TypeError: an override that is not a setting, named.
            NotImplementedError: an interactive front end that is not written yet.
        """
        check_bool(interactive, "interactive", allow_none=True)
        validate_model(model)
        config = config if config is not None else getattr(model, "config", None)
        wizard_config = ConfigPresets.customize(DEFAULT_PRESET if preset is None else preset, **overrides)
        mode = interaction_mode(interactive)
        if mode == "form":
            return self._show_form(model, config, wizard_config)
        if mode == "terminal":
            ask = _front_end("terminal").ask
            wizard_config = ask(wizard_config, validate=lambda c: c.validate(model, config))
        self.review(model, config, wizard_config)
        errors = self.report[-1]["errors"]
        if errors:
            raise ValueError(f"the setup wizard found {len(errors)} problem(s):\n- " + "\n- ".join(errors))
        return wizard_config

    def review(self, model: nn.Module, config: Any, wizard_config: WizardConfig) -> list[dict[str, Any]]:
        """Run the five steps on ``wizard_config`` (asking nothing), keep them in ``report`` and return them."""
        config = config if config is not None else getattr(model, "config", None)
        found = inspect_config(wizard_config, model, config)
        steps = [
            _data_step(wizard_config, found),
            _tokenizer_step(found, wizard_config.tokenizer),
            _model_step(model, found),
            _settings_step(wizard_config, found),
        ]
        steps.append(self._summary_step(model, config, wizard_config, found, steps))
        self.report = steps
        for step in steps:
            self._say(f"[{step['step']}/{len(STEP_NAMES)}] {step['name']}: {step['summary']}")
        return steps

    def _show_form(self, model: nn.Module, config: Any, wizard_config: WizardConfig) -> WizardConfig:
        """The notebook seam: the form edits ``wizard_config`` in place and reviews it on Apply."""
        form = _front_end("form")
        widget = form.build_form(
            wizard_config,
            validate=lambda c: c.validate(model, config),
            on_apply=lambda c: self.review(model, config, c),
        )
        from IPython.display import display

        display(widget)
        self.review(model, config, wizard_config)
        return wizard_config

    def _summary_step(
        self, model: nn.Module, config: Any, cfg: WizardConfig, found: Inspection, steps: list[dict[str, Any]]
    ) -> dict[str, Any]:
        errors = [message for step in steps for message in step["errors"]] + found.errors["summary"]
        timing, timing_note = None, "not measured (measure_time=False)"
        if self.measure_time and not errors:
            try:
                timing, timing_note = estimate_training_time(model, config, cfg), None
            except torch.cuda.OutOfMemoryError as err:
                errors.append(f"batch_size: one training step ran out of GPU memory ({err}); lower batch_size")
            except RuntimeError as err:  # the model's own error is the report
                errors.append(f"model: one training step failed: {type(err).__name__}: {err}")
        elif errors:
            timing_note = "not measured: fix the problems first"
        summary = (
            "ready" if not errors else f"{len(errors)} problem(s): {errors[0]}" + (" ..." if len(errors) > 1 else "")
        )
        if timing:
            summary += f"; about {format_duration(timing['total_s'])} ({timing['optimizer_steps']} steps x "
            summary += f"{timing['seconds_per_step']:.3g} s measured on {timing['device']})"
        if found.memory:
            summary += f"; memory ~{found.memory['estimate_mb']:,.0f} MB (estimate)"
        return _step(5, errors, summary, time=timing, time_note=timing_note, memory=found.memory, config=cfg.to_dict())

    def _say(self, line: str) -> None:
        if not self.quiet:
            print(f"setup wizard {line}", flush=True)


def quick_setup(
    model: nn.Module, config: Any = None, preset: str = DEFAULT_PRESET, *, quiet: bool = False, **overrides: Any
) -> WizardConfig:
    """The wizard without questions: ``preset`` plus ``overrides``, checked and reported, in one call.

    Example:
        >>> settings = quick_setup(model, config, "tiny", n_epochs=2)
        >>> TrainingCoordinator("runs").train(model, config, **settings.to_train_kwargs())

    Raises:
        ValueError: every problem found, at once.
    """
    return SetupWizard(quiet=quiet).run(model, config, preset=preset, interactive=False, **overrides)


# -- where the wizard runs -----------------------------------------------------------


def interaction_mode(interactive: bool | None) -> str:
    """'form', 'terminal' or 'none': how to ask, given ``interactive`` and where this process runs.

    Raises:
        ValueError: ``interactive=True`` where nobody can answer (no notebook, stdin not a terminal).
    """
    if interactive is False:
        return "none"
    # With a stream that is never a terminal, is_interactive answers one question: are we in a notebook kernel?
    in_notebook = is_interactive(io.StringIO())
    if in_notebook and (importlib.util.find_spec("ipywidgets") is not None or interactive):
        return "form"  # with interactive=True and no ipywidgets, the form's import names the install
    if _stdin_is_terminal():
        return "terminal"
    if interactive:
        raise ValueError(
            "interactive=True, but there is no notebook or terminal to ask in (stdin is not a terminal); "
            "pass interactive=False (or call quick_setup) to take the preset with its overrides"
        )
    return "none"


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError, OSError):  # a replaced or closed stdin cannot be asked
        return False


def _front_end(name: str) -> types.ModuleType:
    """``utils.ui.form`` or ``utils.ui.terminal``, or a NotImplementedError while it is not written."""
    module_name = f"utils.ui.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise  # the front end exists but misses a dependency: its own error names it
        what = "notebook form" if name == "form" else "terminal questions"
        raise NotImplementedError(
            f"the wizard's {what} ({module_name}) is not written yet; pass interactive=False "
            "(or call quick_setup) to take the preset with its overrides"
        ) from err


# -- the steps' reports --------------------------------------------------------------


def _step(number: int, errors: list[str], summary: str, **found: Any) -> dict[str, Any]:
    status = "error" if errors else "warn" if found.get("notes") else "ok"
    return {
        "step": number,
        "name": STEP_NAMES[number - 1],
        "status": status,
        "summary": summary,
        "errors": errors,
        **found,
    }


_DATA_KEYS = ("source", "path", "n_bytes", "n_tokens", "seq_len", "n_train_sequences", "n_val_sequences")


def _data_step(cfg: WizardConfig, found: Inspection) -> dict[str, Any]:
    data, errors = found.data, found.errors["data"]
    if data is None:
        summary = f"{len(errors)} problem(s): {errors[0]}" if errors else "not read"
        return _step(1, errors, summary, **{**dict.fromkeys(_DATA_KEYS), "source": cfg.data_source})
    where = "the built-in Python corpus" if data["source"] == "builtin" else f"{data['source']} {data['path'] or ''}"
    summary = (
        f"{where.strip()}: {data['n_bytes']:,} bytes = {data['n_tokens']:,} tokens; "
        f"{data['n_train_sequences']:,} train / {data['n_val_sequences']:,} validation sequences of {data['seq_len']}"
    )
    return _step(1, errors, summary, **data)


def _tokenizer_step(found: Inspection, spec: Any = "bytes") -> dict[str, Any]:
    vocab, errors = found.model.get("vocab_size"), found.errors["tokenizer"]
    if spec != "bytes":  # another tokenizer: checked against the model; a 'bpe' is trained with the run
        summary = errors[0] if errors else f"tokenizer {spec!r} fits the model's vocabulary of {vocab or 'unknown'}"
        return _step(2, errors, summary, tokenizer=spec, model_vocab_size=vocab, fits=not errors if vocab else None)
    fits = None if vocab is None else vocab >= ByteTokenizer.vocab_size
    if vocab is None:
        summary = "UTF-8 bytes (256 ids); the model's vocabulary is unknown"
    elif fits:
        summary = f"UTF-8 bytes (256 ids) fit the model's vocabulary of {vocab:,}"
    else:
        summary = errors[0]
    return _step(
        2, errors, summary, tokenizer="ByteTokenizer", tokenizer_vocab_size=256, model_vocab_size=vocab, fits=fits
    )


def _model_step(model: nn.Module, found: Inspection) -> dict[str, Any]:
    """Tier 1's shape check at small sizes (a quick forward on probe batches) and the parameter count."""
    errors, facts = list(found.errors["model"]), found.model
    n_params = count_parameters(model)
    shapes = None
    if facts.get("vocab_size") is not None:
        seq_lengths = (1, min(8, facts["max_seq_len"] or facts["seq_len"] or 8))
        try:
            shapes = test_shape_robustness(
                model, probe_config(facts), batch_sizes=(1, 2), seq_lengths=seq_lengths, progress=False
            )
        except (TypeError, ValueError, RuntimeError) as err:  # the probe pass failed: the model's error is the report
            errors.append(f"model: {err}")
    if shapes is not None:
        failed = shapes["table"].query("status == 'fail'")
        errors += [f"model: batch {r.batch_size} x {r.seq_len} tokens failed: {r.error}" for r in failed.itertuples()]
    shape_line = shapes["summary"] if shapes else "not run"
    summary = f"{shape_line}; {n_params['total']:,} parameters ({n_params['trainable']:,} trainable)"
    summary = f"{summary}; {errors[0]}" if errors else summary
    shape_rows = shapes["table"].to_dict("records") if shapes else None
    return _step(3, errors, summary, parameters=n_params, shape_check=shape_rows, **facts)


def _settings_step(cfg: WizardConfig, found: Inspection) -> dict[str, Any]:
    errors, plan = found.errors["settings"], found.plan
    origin = f"the {cfg.preset!r} preset" if cfg.preset else "your settings"
    seq_len = found.model.get("seq_len") or cfg.seq_len
    shape = f"seq_len {seq_len}, batch {cfg.batch_size} x {cfg.gradient_accumulation_steps}"
    precision = f"{plan.name} ({plan.reason})" if plan else "not resolved"
    summary = f"{origin}: {shape}, lr {cfg.learning_rate}, {cfg.n_epochs} epoch(s); precision {precision}"
    summary = f"{summary}; {errors[0]}" if errors else summary
    return _step(
        4,
        errors,
        summary,
        settings={k: getattr(cfg, k) for k in TRAIN_KEYWORDS} | {"use_amp": cfg.use_mixed_precision},
        precision=plan.name if plan else None,
        precision_reason=plan.reason if plan else None,
        optimizer_steps=found.optimizer_steps,
        notes=found.precision_notes,
    )


__all__ = [
    "DATA_SOURCES",
    "FORMAT_VERSION",
    "TEXT_SUFFIXES",
    "Inspection",
    "SetupWizard",
    "WizardConfig",
    "available_memory_mb",
    "effective_use_amp",
    "estimate_training_memory",
    "estimate_training_time",
    "field_errors",
    "format_duration",
    "inspect_config",
    "interaction_mode",
    "quick_setup",
    "read_text_folder",
    "time_training_steps",
]
