"""Every problem of a wizard config at once: its fields, its data, the model, the precision and the memory.

``inspect_config`` runs each check whose fields are valid, so one bad field
hides no other problem, and collects what the checks found (an
``Inspection``): problems per wizard step, each as ``"<field>: <problem and
fix>"``, and the facts each step reports. The checks are the engine's own
(``TrainingSettings``, ``prepare_lm_data``, ``resolve_precision``, the
engine's step count, the Tier 1 memory check), so there is one way to check
an argument. ``WizardConfig.validate`` (``utils.ui.config``) is built on it;
this module sits below that one and reads a config by its attributes.

Example:
    >>> found = inspect_config(WizardConfig(learning_rate=-1), model)
    >>> found.errors["settings"]
    ['learning_rate: must be a positive finite number, got -1']
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from utils.checks import check_choice, check_path, check_positive_int, check_str, is_int
from utils.device import resolve_device
from utils.model_helpers import config_size, detect_vocab_size, validate_model
from utils.training import run_folder
from utils.training.data import ByteTokenizer, prepare_lm_data
from utils.training.precision import PRECISIONS, PrecisionPlan, resolve_precision
from utils.training.settings import TrainingSettings, amp_by_default, total_steps
from utils.training.tokenization import check_spec_fits, is_bytes_spec
from utils.ui.data_source import DATA_SOURCES, read_train_data
from utils.ui.estimate import available_memory_mb, estimate_training_memory
from utils.ui.preset_table import PRESETS

STEP_NAMES = ("data", "tokenizer", "model", "settings", "summary")
# Fields checked by building the engine's own TrainingSettings with that one field.
_ENGINE_FIELDS = (
    "n_epochs",
    "learning_rate",
    "batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "warmup_steps",
    "grad_clip",
    "weight_decay",
    "seed",
    "seq_len",
    "max_val_batches",
    "max_corpus_bytes",
    "precision",
    "device",
    "tokenizer",
)
_DATA_FIELDS = ("data_source", "dataset_path", "texts", "max_corpus_bytes")
_MEMORY_FIELDS = {"batch_size", "device", "seq_len"}  # what the memory check reads besides the model
# The field an error of each data source concerns.
_DATA_FIELD_OF_SOURCE = {
    "builtin": "max_corpus_bytes",
    "file": "dataset_path",
    "folder": "dataset_path",
    "strings": "texts",
}

# The coordinator's keywords that a WizardConfig carries under the same name.
TRAIN_KEYWORDS = (*_ENGINE_FIELDS, "early_stopping_patience", "run_name")


def effective_use_amp(wizard_config: Any) -> bool | None:
    """``use_amp`` as the coordinator decides it: None means mixed precision wherever ``precision`` is 'auto'."""
    return amp_by_default(wizard_config.use_mixed_precision, wizard_config.precision)


# -- validation ----------------------------------------------------------------------


@dataclass
class Inspection:
    """What ``inspect_config`` found: problems per wizard step, and the facts each step reports."""

    errors: dict[str, list[str]] = field(default_factory=lambda: {name: [] for name in STEP_NAMES})
    data: dict[str, Any] | None = None
    model: dict[str, Any] = field(default_factory=dict)
    plan: PrecisionPlan | None = None
    precision_notes: list[str] = field(default_factory=list)
    optimizer_steps: int | None = None
    memory: dict[str, Any] | None = None


def inspect_config(
    wizard_config: Any, model: nn.Module | None = None, model_config: Any = None, *, memory: bool = True
) -> Inspection:
    """Check every field, the data, the model, the precision and (with a model) the memory; never stop early.

    Each check runs when the fields it reads are valid, so one bad field hides no other problem.
    ``memory=False`` skips the memory check (it runs the model once at the run's sequence length).
    """
    cfg, found = wizard_config, Inspection()
    model_config = model_config if model_config is not None or model is None else getattr(model, "config", None)
    bad = set()
    for message in field_errors(cfg):
        field_name = message.split(":")[0]
        bad.add(field_name)
        found.errors["data" if field_name in _DATA_FIELDS else "settings"].append(message)
    found.model, found.errors["model"], found.errors["tokenizer"] = _model_facts(cfg, model, model_config)
    if not bad & set(_DATA_FIELDS):
        data_seq_len = _valid_seq_len(cfg.seq_len) or found.model.get("max_seq_len") or 2  # 2: still reads the data
        found.data, data_errors = _data_facts(cfg, data_seq_len)
        found.errors["data"] += data_errors
    if not bad & {"precision", "use_mixed_precision", "device"}:
        found.plan, precision_errors, found.precision_notes = _precision_plan(cfg)
        found.errors["settings"] += precision_errors
    if found.data and not bad & {"batch_size", "gradient_accumulation_steps", "n_epochs", "max_steps", "warmup_steps"}:
        found.optimizer_steps, step_errors = _step_count(cfg, found.data)
        found.errors["settings"] += step_errors
    seq_len = found.model.get("seq_len")
    if memory and model is not None and seq_len and not found.errors["model"] and not bad & _MEMORY_FIELDS:
        found.memory, found.errors["summary"] = _memory_facts(cfg, model, found.model, seq_len)
    return found


def _valid_seq_len(seq_len: Any) -> int | None:
    return seq_len if is_int(seq_len) and seq_len >= 2 else None


def field_errors(wizard_config: Any) -> list[str]:
    """Type and range problems of each field, found by the engine's own checks, as ``"<field>: ..."``."""
    cfg = wizard_config
    errors = [_problem(name, lambda n=name: TrainingSettings(**{n: getattr(cfg, n)})) for name in _ENGINE_FIELDS]
    precision = cfg.precision if cfg.precision in PRECISIONS else "auto"  # a bad precision is reported once
    errors += [
        _problem("seq_len", lambda: _check_min_seq_len(cfg.seq_len)),
        _problem("use_mixed_precision", lambda: TrainingSettings(precision=precision, use_amp=cfg.use_mixed_precision)),
        _problem(
            "early_stopping_patience",
            lambda: check_positive_int(cfg.early_stopping_patience, "early_stopping_patience", allow_none=True),
        ),
        _problem("run_name", lambda: _check_run_name(cfg.run_name)),
        _problem("preset", lambda: check_str(cfg.preset, "preset", allow_none=True)),
    ]
    return [e for e in errors if e] + _source_errors(cfg)


def _check_min_seq_len(seq_len: Any) -> None:
    """The engine needs two tokens to predict one; it checks this only once training starts."""
    if is_int(seq_len) and seq_len == 1:
        raise ValueError("seq_len must be at least 2 for next-token training, got 1")


def _problem(field_name: str, check: Callable[[], Any]) -> str | None:
    """Run one check; its error as ``"<field>: <message>"`` (without repeating the field's name), or None."""
    try:
        check()
    except (ValueError, TypeError) as err:
        return _message(field_name, str(err))
    return None


def _message(field_name: str, text: str) -> str:
    text = text[len(field_name) + 1 :] if text.startswith(f"{field_name} ") else text
    return f"{field_name}: {text}"


def _check_run_name(run_name: Any) -> None:
    """The coordinator's own rule for a run folder's name; None means a dated name."""
    if run_name is not None:
        run_folder.check_run_name(run_name)


def _source_errors(cfg: Any) -> list[str]:
    """Does the data source have what it reads: a path for 'file'/'folder', texts for 'strings', and nothing extra?"""
    problem = _problem("data_source", lambda: check_choice(cfg.data_source, "data_source", DATA_SOURCES))
    if problem:
        return [problem]
    source, errors = cfg.data_source, []
    if source in ("file", "folder"):
        errors.append(_missing_path(cfg) or _path_problem(cfg))
    elif cfg.dataset_path is not None:
        errors.append(
            f"dataset_path: is set, but data_source={source!r} does not read it; pass data_source='file' "
            "(or 'folder') to train on it, or dataset_path=None"
        )
    if source == "strings":
        errors.append(_texts_problem(cfg.texts))
    elif cfg.texts is not None:
        errors.append(f"texts: are set, but data_source={source!r} does not read them; pass data_source='strings'")
    return [e for e in errors if e]


def _missing_path(cfg: Any) -> str | None:
    if cfg.dataset_path is not None:
        return None
    what = "your UTF-8 text file" if cfg.data_source == "file" else "a folder of your text files"
    why = (
        f" (the {cfg.preset!r} preset trains on your own text, not on the built-in Python corpus)"
        if cfg.preset and _preset_reads_user_text(cfg.preset)
        else ""
    )
    return f"dataset_path: data_source={cfg.data_source!r} needs the path of {what}{why}; pass dataset_path='...'"


def _preset_reads_user_text(name: Any) -> bool:
    """True for a preset (chat, summarization) whose own data source is the user's text.

    A name that is no preset (e.g. loaded from an edited file) says nothing about it: False.
    """
    if not isinstance(name, str) or name not in PRESETS:
        return False
    return PRESETS[name].settings.get("data_source") in ("file", "folder")


def _path_problem(cfg: Any) -> str | None:
    problem = _problem("dataset_path", lambda: check_path(cfg.dataset_path, "dataset_path"))
    if problem:
        return problem
    path = Path(cfg.dataset_path)
    if not path.exists():
        return f"dataset_path: nothing at {os.fspath(path)!r}; pass the path of an existing text file or folder"
    if cfg.data_source == "file" and path.is_dir():
        return f"dataset_path: {os.fspath(path)!r} is a folder; pass data_source='folder' to read its text files"
    if cfg.data_source == "folder" and not path.is_dir():
        return f"dataset_path: {os.fspath(path)!r} is a file, not a folder; pass data_source='file' to read it"
    return None


def _texts_problem(texts: Any) -> str | None:
    if isinstance(texts, (list, tuple)) and texts and all(isinstance(t, str) for t in texts):
        return None
    return f"texts: data_source='strings' needs a non-empty list of strings, got {_short(texts)}; pass texts=['...']"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- the data and the step count ---------------------------------------------------


def _data_facts(cfg: Any, seq_len: int) -> tuple[dict[str, Any] | None, list[str]]:
    """Read the data as training will (the engine's ``prepare_lm_data``): its size and its train/validation split."""
    try:
        train_data, n_bytes = read_train_data(cfg)
        data = prepare_lm_data(
            train_data,
            None,
            vocab_size=ByteTokenizer.vocab_size,
            seq_len=seq_len,
            max_corpus_bytes=cfg.max_corpus_bytes,
        )
    except (ValueError, TypeError, OSError) as err:
        return None, [_message(_DATA_FIELD_OF_SOURCE[cfg.data_source], str(err))]
    return {
        "source": cfg.data_source,
        "path": os.fspath(cfg.dataset_path) if cfg.dataset_path is not None else None,
        "n_bytes": n_bytes,
        "n_tokens": n_bytes,  # the byte tokenizer: one token per UTF-8 byte
        "seq_len": seq_len,
        "n_train_sequences": len(data.train),
        "n_val_sequences": len(data.val),
    }, []


def _step_count(cfg: Any, data: dict[str, Any]) -> tuple[int, list[str]]:
    """Optimizer steps of the run, counted by the engine, and whether the warm-up fits in them."""
    batches = math.ceil(data["n_train_sequences"] / cfg.batch_size)  # len() of the engine's loader (no drop_last)
    shape = dict(batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    steps = total_steps(batches, TrainingSettings(n_epochs=cfg.n_epochs, max_steps=cfg.max_steps, **shape))
    if cfg.warmup_steps is not None and cfg.warmup_steps > steps:
        return steps, [
            f"warmup_steps: {cfg.warmup_steps} exceeds the {steps} optimizer steps this run takes "
            f"({data['n_train_sequences']} training sequences, batch {cfg.batch_size} x "
            f"{cfg.gradient_accumulation_steps}, {cfg.n_epochs} epoch(s)); lower it, or pass None for 10% of the run"
        ]
    return steps, []


# -- the model -----------------------------------------------------------------------


def _model_facts(cfg: Any, model: Any, model_config: Any) -> tuple[dict[str, Any], list[str], list[str]]:
    """The model's vocabulary and ``max_seq_len``, and the run's ``seq_len``; problems for the model and tokenizer."""
    seq_len = cfg.seq_len if is_int(cfg.seq_len) and cfg.seq_len > 0 else None
    facts = {"seq_len": seq_len, "vocab_size": None, "max_seq_len": None}
    if model is None:
        return facts, [], []
    try:
        validate_model(model)
        vocab_size = detect_vocab_size(model, model_config)
        max_seq_len = config_size(model_config, "max_seq_len")
    except Exception as err:  # the model's own error is the report
        return facts, [f"model: {type(err).__name__}: {err}"], []
    seq_len = seq_len if cfg.seq_len is not None else max_seq_len
    facts.update(seq_len=seq_len, vocab_size=vocab_size, max_seq_len=max_seq_len)
    errors = []
    if seq_len is None and cfg.seq_len is None:
        errors.append("seq_len: the model's config has no max_seq_len (or n_positions ...); pass seq_len=")
    elif seq_len is not None and max_seq_len is not None and seq_len > max_seq_len:
        errors.append(
            f"seq_len: {seq_len} exceeds the model's max_seq_len={max_seq_len}; pass seq_len<={max_seq_len}, "
            f"or build the model with max_seq_len>={seq_len}"
        )
    if errors:
        facts["seq_len"] = None  # no check runs the model at a length it cannot take
    return facts, errors, _tokenizer_problems(getattr(cfg, "tokenizer", "bytes"), vocab_size)


def _tokenizer_problems(spec: Any, vocab_size: int) -> list[str]:
    """Whether the tokenizer's ids fit the model: the bytes' 256, or the one ``tokenizer`` names."""
    if is_bytes_spec(spec, vocab_size):
        return [] if vocab_size >= ByteTokenizer.vocab_size else [_vocab_problem(vocab_size)]
    try:
        check_spec_fits(spec, vocab_size)
    except (ValueError, TypeError, ImportError) as err:
        return [_message("tokenizer", str(err))]
    return []


def _vocab_problem(vocab_size: int) -> str:
    return (
        f"model: its vocab_size={vocab_size} is below the byte tokenizer's {ByteTokenizer.vocab_size} ids, "
        "so text holds ids the model cannot embed; build the model with vocab_size>=256"
    )


def probe_config(facts: dict[str, Any]) -> dict[str, int]:
    """A plain config for the Tier 1 checks, from the sizes already read (any config kind works here)."""
    return {"vocab_size": facts["vocab_size"], "max_seq_len": facts["max_seq_len"] or facts["seq_len"]}


# -- precision and memory ------------------------------------------------------------


def _precision_plan(cfg: Any) -> tuple[PrecisionPlan | None, list[str], list[str]]:
    """The precision this hardware gives, its problem if it cannot run, and the engine's warnings as notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            plan = resolve_precision(cfg.precision, effective_use_amp(cfg), resolve_device(cfg.device))
        except ValueError as err:
            return None, [_message("precision", str(err))], []
    return plan, [], [str(w.message) for w in caught]


def _memory_facts(
    cfg: Any, model: nn.Module, facts: dict[str, Any], seq_len: int
) -> tuple[dict[str, Any] | None, list[str]]:
    """Training memory (a labelled estimate) against what the device has free."""
    try:
        memory = estimate_training_memory(model, probe_config(facts), seq_len, cfg.batch_size)
    except Exception as err:  # the model's own error is the report
        return None, [f"model: the memory check could not run it: {type(err).__name__}: {err}"]
    device = resolve_device(cfg.device)
    memory["available_mb"], memory["available_note"] = available_memory_mb(device)
    memory["device"] = str(device)
    if memory["available_mb"] is not None and memory["estimate_mb"] > memory["available_mb"]:
        return memory, [
            f"batch_size: training needs about {memory['estimate_mb']:,.0f} MB ({memory['method']}), more than "
            f"the {memory['available_mb']:,.0f} MB {memory['available_note']}; lower batch_size or seq_len, and "
            "raise gradient_accumulation_steps to keep the same batch per optimizer step"
        ]
    return memory, []


__all__ = [
    "STEP_NAMES",
    "TRAIN_KEYWORDS",
    "Inspection",
    "effective_use_amp",
    "field_errors",
    "inspect_config",
    "probe_config",
]
