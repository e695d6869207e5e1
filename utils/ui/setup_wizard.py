"""The setup wizard: from a preset and a few overrides to checked training settings, in five reported steps.

``WizardConfig`` holds what a run needs besides the model: where the text
comes from and the training settings, named as ``TrainingCoordinator.train``'s
keywords. ``validate`` reports every problem at once, each message starting
with the field it concerns; the checks are the engine's own
(``TrainingSettings``, ``prepare_lm_data``, ``resolve_precision``, the Tier 1
memory check), so there is one way to check an argument.

``SetupWizard.run`` walks five steps (data, tokenizer, model check, training
settings, validation and summary) and keeps what each found in ``report``.
Outside a notebook or a terminal it asks nothing: it takes the preset with
its overrides. The interactive front ends plug in at one seam each:
``utils.ui.form.build_form`` (ipywidgets) and ``utils.ui.terminal.ask``.

Example:
    >>> model, config = tiny_gpt()
    >>> settings = quick_setup(model, config, preset="tiny", learning_rate=2e-3)
    >>> results = TrainingCoordinator("runs").train(model, config, **settings.to_train_kwargs())
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import importlib
import importlib.util
import io
import json
import math
import os
import statistics
import sys
import time
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from utils import tier1_critical_validation as tier1
from utils.checks import check_bool, check_choice, check_path, check_positive_int, check_str, is_int, is_number
from utils.device import resolve_device, synchronize
from utils.model_helpers import (
    config_size,
    count_parameters,
    detect_vocab_size,
    extract_logits,
    make_forward_fn,
    random_input_ids,
    validate_model,
)
from utils.progress import is_interactive
from utils.training import training_core
from utils.training.data import (
    DEFAULT_CORPUS_BYTES,
    ByteTokenizer,
    check_text_bytes,
    load_stdlib_corpus,
    prepare_lm_data,
)
from utils.training.loop import TrainingSettings
from utils.training.losses import next_token_loss_sums
from utils.training.optim import build_optimizer
from utils.training.precision import PRECISIONS, MixedPrecisionStep, PrecisionPlan, resolve_precision

FORMAT_VERSION = 1
DATA_SOURCES = ("builtin", "file", "folder", "strings")
# A folder's files that are read as text; anything else in it is left alone.
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".csv", ".tsv", ".html", ".xml", ".yaml", ".yml")
STEP_NAMES = ("data", "tokenizer", "model", "settings", "summary")
DEFAULT_PRESET = "tiny"
MB = 2**20
# Optimizer steps timed per estimate, after one warm-up step (allocator growth, kernel selection).
TIMED_STEPS = 2
# A validation batch is a forward pass only: about a third of a training step (forward + backward).
VALIDATION_STEP_FRACTION = 1 / 3

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
# Names people reach for first, and the field they mean.
_FIELD_HINTS = {
    "use_amp": "use_mixed_precision",
    "lr": "learning_rate",
    "epochs": "n_epochs",
    "train_data": "data_source",
}


@dataclass
class WizardConfig:
    """Where the text comes from and how to train: every setting of a run except the model.

    The training fields are ``TrainingCoordinator.train``'s keywords, except
    ``use_mixed_precision``, which becomes ``use_amp``. It is mutable on purpose:
    a form edits it field by field, and ``validate`` then reports every problem
    at once, so nothing is checked when it is made.

    Attributes:
        data_source: 'builtin' (Python's standard library source: code), 'file'
            (one UTF-8 text file), 'folder' (its text files, sorted) or 'strings'.
        dataset_path: the file or folder, for 'file' and 'folder'.
        texts: the texts themselves, for 'strings'.
        use_mixed_precision: ``use_amp``; None follows ``precision`` ('auto' trains in mixed precision).
        device: 'auto', 'cpu', 'cuda' or 'cuda:N'.
        preset: the preset this config started from (informative; not a training setting).
        The others: as for ``TrainingCoordinator.train``.
    """

    data_source: str = "builtin"
    dataset_path: str | None = None
    texts: list[str] | None = None
    n_epochs: int = 3
    learning_rate: float = 5e-5
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    warmup_steps: int | None = None
    seq_len: int | None = None
    max_steps: int | None = None
    precision: str = "auto"
    use_mixed_precision: bool | None = None
    device: str = "auto"
    seed: int = 0
    grad_clip: float | None = 1.0
    weight_decay: float = 0.01
    early_stopping_patience: int | None = None
    run_name: str | None = None
    max_corpus_bytes: int = DEFAULT_CORPUS_BYTES
    max_val_batches: int | None = 50
    preset: str | None = None

    # -- checking ---------------------------------------------------------------

    def validate(self, model: nn.Module | None = None, model_config: Any = None) -> list[str]:
        """Every problem at once, each as ``"<field>: <problem and fix>"``; an empty list means ready.

        Without a model it checks the fields and the data; with one it also checks
        the vocabulary, ``seq_len`` against ``max_seq_len``, and whether the
        estimated training memory fits the device. Problems with the model itself
        start with ``"model: "``.

        Args:
            model: the model to train (optional).
            model_config: its config; default ``model.config`` when it has one.

        Example:
            >>> WizardConfig(learning_rate=-1, data_source="file").validate()
            ["dataset_path: data_source='file' needs the path of ...", 'learning_rate: must be a positive finite ...']
        """
        return [message for step in inspect_config(self, model, model_config).errors.values() for message in step]

    def check(self, model: nn.Module | None = None, model_config: Any = None) -> None:
        """Raise one ``ValueError`` that lists every problem ``validate`` finds; return None when there is none."""
        errors = self.validate(model, model_config)
        if errors:
            raise ValueError(f"{len(errors)} problem(s) with the wizard config:\n- " + "\n- ".join(errors))

    # -- conversion -------------------------------------------------------------

    def to_train_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``TrainingCoordinator.train`` (and ``train_model``), ``train_data`` included.

        'builtin' gives ``train_data=None``, 'file' the path, 'folder' the text of
        its files (sorted) as a list of strings, 'strings' the texts.

        Example:
            >>> coordinator.train(model, config, **wizard_config.to_train_kwargs())

        Raises:
            ValueError: listing every problem ``validate`` finds without a model.
        """
        self.check()
        kwargs = {name: getattr(self, name) for name in _TRAIN_KEYWORDS}
        kwargs["use_amp"] = self.use_mixed_precision
        kwargs["train_data"] = _train_data(self)[0]
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON types, with ``format_version``."""
        values = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if isinstance(values["dataset_path"], os.PathLike):
            values["dataset_path"] = os.fspath(values["dataset_path"])
        if isinstance(values["device"], torch.device):
            values["device"] = str(values["device"])
        if isinstance(values["texts"], tuple):
            values["texts"] = list(values["texts"])
        return {"format_version": FORMAT_VERSION, **values}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WizardConfig:
        """A config from ``to_dict``'s output; an unknown key, a wrong type or another format is an error.

        Raises:
            ValueError: naming the key (or every bad key at once).
        """
        if not isinstance(data, dict):
            raise ValueError(f"a wizard config must be a JSON object of settings, got {type(data).__name__}")
        version = data.get("format_version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise ValueError(
                f"format_version: expected {FORMAT_VERSION}, got {version!r}; "
                "the file was not written by WizardConfig.save of this library version"
            )
        values = {k: v for k, v in data.items() if k != "format_version"}
        unknown = sorted(set(values) - set(field_types()))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}{_hint(unknown)}; the keys are {sorted(field_types())}")
        wrong = [_type_problem(key, value) for key, value in values.items()]
        wrong = [problem for problem in wrong if problem]
        if wrong:
            raise ValueError("; ".join(wrong))
        return cls(**values)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the config as JSON (atomically: a crash never leaves a torn file). Returns the path."""
        check_path(path, "path")
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> WizardConfig:
        """Read a config written by ``save``.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: not JSON, another ``format_version``, an unknown key or a wrong type (naming it).
        """
        check_path(path, "path")
        if not Path(path).is_file():
            raise FileNotFoundError(f"path={os.fspath(path)!r}: no wizard config file there; save one first")
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"path={os.fspath(path)!r} is not a JSON wizard config ({err})") from err
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> WizardConfig:
        """A copy with ``changes``; an unknown setting is a ``TypeError`` that names it (values are not checked)."""
        unknown = sorted(set(changes) - set(field_types()))
        if unknown:
            raise TypeError(f"unknown setting(s) {unknown}{_hint(unknown)}; the settings are {sorted(field_types())}")
        return dataclasses.replace(copy.deepcopy(self), **changes)


# The coordinator's keywords that a WizardConfig carries under the same name.
_TRAIN_KEYWORDS = (*_ENGINE_FIELDS, "early_stopping_patience", "run_name")


def effective_use_amp(wizard_config: WizardConfig) -> bool | None:
    """``use_amp`` as the coordinator decides it: None means mixed precision wherever ``precision`` is 'auto'."""
    if wizard_config.use_mixed_precision is None:
        return wizard_config.precision == "auto"
    return wizard_config.use_mixed_precision


# -- loading: types ------------------------------------------------------------------


@functools.cache
def field_types() -> dict[str, Any]:
    """Each field's type hint, resolved once (the annotations are strings under ``from __future__``)."""
    return typing.get_type_hints(WizardConfig)


def _type_problem(key: str, value: Any) -> str | None:
    hint = field_types()[key]
    if _matches(value, hint):
        return None
    return f"{key}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}"


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's type hint; a bool is not a number."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    checks = {type(None): lambda v: v is None, bool: lambda v: isinstance(v, bool), int: is_int, float: is_number}
    return checks.get(hint, lambda v: isinstance(v, hint))(value)


def _type_name(hint: Any) -> str:
    """'float', 'int | None', 'list[str] | None': a type hint as it is written."""
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("NoneType", "None")


def _hint(unknown: list[str]) -> str:
    """' (did you mean ...?)' for the unknown names that resemble a field."""
    names = sorted(field_types())
    guesses = {}
    for name in unknown:
        close = _FIELD_HINTS.get(name) or next(iter(difflib.get_close_matches(name, names, n=1)), None)
        if close:
            guesses[name] = close
    return f" (did you mean {', '.join(f'{v!r} for {k!r}' for k, v in guesses.items())}?)" if guesses else ""


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
    wizard_config: WizardConfig, model: nn.Module | None = None, model_config: Any = None, *, memory: bool = True
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


def field_errors(wizard_config: WizardConfig) -> list[str]:
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
        training_core.check_run_name(run_name)


def _source_errors(cfg: WizardConfig) -> list[str]:
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


def _missing_path(cfg: WizardConfig) -> str | None:
    if cfg.dataset_path is not None:
        return None
    what = "your UTF-8 text file" if cfg.data_source == "file" else "a folder of your text files"
    why = (
        f" (the {cfg.preset!r} preset trains on your own text, not on the built-in Python corpus)"
        if cfg.preset and _preset_reads_user_text(cfg.preset)
        else ""
    )
    return f"dataset_path: data_source={cfg.data_source!r} needs the path of {what}{why}; pass dataset_path='...'"


def _preset_reads_user_text(name: str) -> bool:
    """True for a preset (chat, summarization) whose own data source is the user's text."""
    from utils.ui.presets import ConfigPresets  # presets build on WizardConfig: imported here, not above

    try:
        return ConfigPresets.get(name).data_source in ("file", "folder")
    except ValueError:  # a name that is no preset (e.g. loaded from an edited file): say nothing about it
        return False


def _path_problem(cfg: WizardConfig) -> str | None:
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


# -- the data ------------------------------------------------------------------------


def _train_data(cfg: WizardConfig) -> tuple[Any, int]:
    """``train_data`` for the engine and its size in bytes."""
    if cfg.data_source == "builtin":
        return None, len(load_stdlib_corpus(cfg.max_corpus_bytes))
    if cfg.data_source == "file":
        return os.fspath(cfg.dataset_path), Path(cfg.dataset_path).stat().st_size
    texts = read_text_folder(cfg.dataset_path) if cfg.data_source == "folder" else list(cfg.texts)
    return texts, sum(len(t.encode("utf-8")) for t in texts)


def read_text_folder(folder: str | os.PathLike) -> list[str]:
    """The text of every file in ``folder`` (and below) whose suffix is in ``TEXT_SUFFIXES``, sorted by path.

    Hidden files and folders (names starting with '.') are left out.

    Raises:
        ValueError: no text file there, or one that is not UTF-8 text (a NUL byte, invalid UTF-8), named.
    """
    root = Path(folder)
    files = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if not files:
        raise ValueError(
            f"{os.fspath(root)!r} holds no text files ({', '.join('*' + s for s in TEXT_SUFFIXES)}); "
            "put your text there, or pass data_source='file' with one file"
        )
    texts = []
    for path in files:
        raw = path.read_bytes()
        check_text_bytes(raw, "a file in dataset_path", path)
        texts.append(raw.decode("utf-8"))
    return texts


def _data_facts(cfg: WizardConfig, seq_len: int) -> tuple[dict[str, Any] | None, list[str]]:
    """Read the data as training will (the engine's ``prepare_lm_data``): its size and its train/validation split."""
    try:
        train_data, n_bytes = _train_data(cfg)
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


def _step_count(cfg: WizardConfig, data: dict[str, Any]) -> tuple[int, list[str]]:
    """Optimizer steps of the run, as the engine counts them, and whether the warm-up fits in them."""
    batches = math.ceil(data["n_train_sequences"] / cfg.batch_size)
    steps = math.ceil(batches / cfg.gradient_accumulation_steps) * cfg.n_epochs
    steps = min(steps, cfg.max_steps) if cfg.max_steps is not None else steps
    if cfg.warmup_steps is not None and cfg.warmup_steps > steps:
        return steps, [
            f"warmup_steps: {cfg.warmup_steps} exceeds the {steps} optimizer steps this run takes "
            f"({data['n_train_sequences']} training sequences, batch {cfg.batch_size} x "
            f"{cfg.gradient_accumulation_steps}, {cfg.n_epochs} epoch(s)); lower it, or pass None for 10% of the run"
        ]
    return steps, []


# -- the model -----------------------------------------------------------------------


def _model_facts(cfg: WizardConfig, model: Any, model_config: Any) -> tuple[dict[str, Any], list[str], list[str]]:
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
    tokenizer_errors = [] if vocab_size >= ByteTokenizer.vocab_size else [_vocab_problem(vocab_size)]
    return facts, errors, tokenizer_errors


def _vocab_problem(vocab_size: int) -> str:
    return (
        f"model: its vocab_size={vocab_size} is below the byte tokenizer's {ByteTokenizer.vocab_size} ids, "
        "so text holds ids the model cannot embed; build the model with vocab_size>=256"
    )


def _probe_config(facts: dict[str, Any]) -> dict[str, int]:
    """A plain config for the Tier 1 checks, from the sizes already read (any config kind works here)."""
    return {"vocab_size": facts["vocab_size"], "max_seq_len": facts["max_seq_len"] or facts["seq_len"]}


# -- precision and memory ------------------------------------------------------------


def _precision_plan(cfg: WizardConfig) -> tuple[PrecisionPlan | None, list[str], list[str]]:
    """The precision this hardware gives, its problem if it cannot run, and the engine's warnings as notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            plan = resolve_precision(cfg.precision, effective_use_amp(cfg), resolve_device(cfg.device))
        except ValueError as err:
            return None, [_message("precision", str(err))], []
    return plan, [], [str(w.message) for w in caught]


def _memory_facts(
    cfg: WizardConfig, model: nn.Module, facts: dict[str, Any], seq_len: int
) -> tuple[dict[str, Any] | None, list[str]]:
    """Training memory (a labelled estimate) against what the device has free."""
    try:
        memory = estimate_training_memory(model, _probe_config(facts), seq_len, cfg.batch_size)
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


def estimate_training_memory(model: nn.Module, config: Any, seq_len: int, batch_size: int) -> dict[str, Any]:
    """Parameters, gradients, AdamW state and activations for one training step, from Tier 1's memory check.

    The check runs at batch 1 and this sequence length (CUDA: the allocator's
    peak; elsewhere its saved-tensor estimate); activations grow linearly with
    the batch, so they are scaled to ``batch_size``. FP32 figures: mixed precision needs less.

    Returns:
        dict with estimate_mb, static_mb, activation_mb_per_sequence and method (a label saying how).
    """
    result = tier1.test_memory_footprint(model, config, batch_sizes=(1,), seq_len=seq_len, progress=False)
    row = result["table"].query("mode == 'forward_backward'").iloc[0]
    static_mb = sum(result["static"][k] for k in ("params_mb", "grads_mb", "optimizer_mb"))
    activation_mb = float(row["activation_mb"])
    return {
        "estimate_mb": static_mb + activation_mb * batch_size,
        "static_mb": static_mb,
        "activation_mb_per_sequence": activation_mb,
        "method": f"estimate: Tier 1 memory check at batch 1 x {seq_len} tokens ({row['method']}), "
        f"activations x {batch_size}; fp32 with AdamW",
    }


def available_memory_mb(device: torch.device) -> tuple[float | None, str]:
    """Free memory on ``device`` in MiB, and what it is: CUDA's free memory, or the system RAM available."""
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return free_bytes / MB, f"free on {device}"
    if device.type != "cpu":
        return None, f"unknown on {device.type}"
    try:
        import psutil

        return psutil.virtual_memory().available / MB, "of system RAM available"
    except ImportError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / MB, "of system RAM free"
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
        return None, "unknown (install psutil to read it)"


# -- time ----------------------------------------------------------------------------


def estimate_training_time(
    model: nn.Module, model_config: Any, wizard_config: WizardConfig, *, timed_steps: int = TIMED_STEPS
) -> dict[str, Any]:
    """Time a few optimizer steps of ``model`` at the config's shape on its device, and extrapolate to the run.

    The steps run on a copy of the model (the user's weights never change), with
    random tokens, through the engine's own parts (AdamW, the mixed-precision
    step, the next-token loss). Without the user's data yet ('file' or 'folder'
    with no ``dataset_path``), the step count assumes ``max_corpus_bytes`` of text.

    Returns:
        dict with total_s, hours, seconds_per_step (per optimizer step),
        optimizer_steps, validation_s, device, precision, and method (how it was made).

    Raises:
        ValueError: a setting that the shape or the step count depends on is wrong (every problem listed).
        torch.OutOfMemoryError: one step does not fit the GPU.
    """
    check_positive_int(timed_steps, "timed_steps")
    cfg, model_config = wizard_config, model_config if model_config is not None else getattr(model, "config", None)
    assumed = cfg.data_source in ("file", "folder") and cfg.dataset_path is None
    found = inspect_config(cfg.replace(data_source="builtin") if assumed else cfg, model, model_config, memory=False)
    problems = [message for step in found.errors.values() for message in step]
    if problems or found.optimizer_steps is None:
        raise ValueError("cannot estimate the training time: " + "; ".join(problems or ["the data was not read"]))
    device, seq_len, steps = resolve_device(cfg.device), found.model["seq_len"], found.optimizer_steps
    micro_s = time_training_steps(
        model, found.model["vocab_size"], seq_len, cfg.batch_size, found.plan, device, timed_steps=timed_steps
    )
    step_s = micro_s * cfg.gradient_accumulation_steps
    val_batches = math.ceil(found.data["n_val_sequences"] / cfg.batch_size)
    val_batches = min(val_batches, cfg.max_val_batches) if cfg.max_val_batches is not None else val_batches
    validation_s = cfg.n_epochs * val_batches * micro_s * VALIDATION_STEP_FRACTION
    data_note = f"{found.data['n_bytes']:,} bytes of " + ("text assumed (no dataset_path yet)" if assumed else "data")
    return {
        "total_s": steps * step_s + validation_s,
        "hours": (steps * step_s + validation_s) / 3600,
        "seconds_per_step": step_s,
        "optimizer_steps": steps,
        "validation_s": validation_s,
        "device": str(device),
        "precision": found.plan.name,
        "method": f"measured: median of {timed_steps} timed steps (after 1 warm-up) of batch {cfg.batch_size} x "
        f"{seq_len} tokens in {found.plan.name} on {device}; x {cfg.gradient_accumulation_steps} micro-batch(es) "
        f"per optimizer step, x {steps} steps for {data_note}, plus {val_batches} validation batch(es) per epoch "
        "(a forward is ~1/3 of a step)",
    }


def time_training_steps(
    model: nn.Module,
    vocab_size: int,
    seq_len: int,
    batch_size: int,
    plan: PrecisionPlan,
    device: torch.device,
    *,
    timed_steps: int = TIMED_STEPS,
) -> float:
    """Median seconds of one training step (forward, loss, backward, clip, AdamW update) of a copy of ``model``.

    Raises:
        torch.cuda.OutOfMemoryError: the shape does not fit the GPU.
    """
    check_positive_int(timed_steps, "timed_steps")
    trial = copy.deepcopy(model).to(device)  # the user's weights stay untouched
    trial.train()
    optimizer = build_optimizer(trial, learning_rate=1e-4)
    step = MixedPrecisionStep(plan, optimizer, grad_clip=1.0)
    forward = make_forward_fn(trial)
    input_ids = random_input_ids(batch_size, seq_len, vocab_size, device)
    times_s = []
    with torch.random.fork_rng(devices=_rng_devices(device)):  # dropout here leaves the caller's random stream alone
        for _ in range(1 + timed_steps):
            times_s.append(_timed_step(trial, forward, step, input_ids, plan, device))
    del trial, optimizer, step
    return statistics.median(times_s[1:])  # the first step pays for allocation and kernel selection


def _timed_step(
    model: nn.Module,
    forward: Callable[..., Any],
    step: MixedPrecisionStep,
    input_ids: torch.Tensor,
    plan: PrecisionPlan,
    device: torch.device,
) -> float:
    """Seconds of one training step, synchronized at both edges."""
    synchronize(device)  # deliberate: a timing edge
    start = time.perf_counter()
    with plan.autocast():
        loss_sum, _ = next_token_loss_sums(extract_logits(forward(input_ids)), input_ids)
    step.backward(loss_sum / input_ids.numel())  # outside autocast, as in the engine
    step.update(model.parameters())
    synchronize(device)  # deliberate: a timing edge
    return time.perf_counter() - start


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def format_duration(seconds: float) -> str:
    """'0.36 s', '42 s', '7.5 min' or '3.2 h'."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# -- the wizard ----------------------------------------------------------------------


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
        from utils.ui.presets import ConfigPresets  # presets build on WizardConfig: imported here, not above

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
            _tokenizer_step(found),
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


def _tokenizer_step(found: Inspection) -> dict[str, Any]:
    vocab, errors = found.model.get("vocab_size"), found.errors["tokenizer"]
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
            shapes = tier1.test_shape_robustness(
                model, _probe_config(facts), batch_sizes=(1, 2), seq_lengths=seq_lengths, progress=False
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
        settings={k: getattr(cfg, k) for k in _TRAIN_KEYWORDS} | {"use_amp": cfg.use_mixed_precision},
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
