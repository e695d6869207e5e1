"""``WizardConfig``: every setting of a run except the model, as data that saves to JSON and checks itself.

Its training fields are ``TrainingCoordinator.train``'s keywords (with
``use_mixed_precision`` for ``use_amp``); its data fields say where the text
comes from (``utils.ui.data_source``). ``save`` and ``load`` write and read
JSON with a format version, and a file's keys and value types are checked as
it loads. ``validate`` reports every problem at once, through
``utils.ui.inspect``.

Example:
    >>> config = WizardConfig(data_source="file", dataset_path="notes.txt", n_epochs=1)
    >>> config.validate(model)
    []
    >>> WizardConfig.load(config.save("wizard.json")) == config
    True
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from utils.checks import check_path, is_int, is_number
from utils.folders import write_json_atomic
from utils.training.settings import LIFECYCLE_DEFAULTS, TrainingSettings
from utils.ui.data_source import read_train_data
from utils.ui.inspect import TRAIN_KEYWORDS, inspect_config

FORMAT_VERSION = 1
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
        tokenizer: how the text becomes ids: 'bytes', 'bpe', 'gpt2', 'auto' or a tokenizer.json
            path (see ``test_fine_tuning``); a name or a path, so that it saves as JSON.
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
    n_epochs: int = TrainingSettings.n_epochs
    learning_rate: float = TrainingSettings.learning_rate
    batch_size: int = TrainingSettings.batch_size
    gradient_accumulation_steps: int = TrainingSettings.gradient_accumulation_steps
    warmup_steps: int | None = TrainingSettings.warmup_steps
    seq_len: int | None = TrainingSettings.seq_len
    max_steps: int | None = TrainingSettings.max_steps
    precision: str = TrainingSettings.precision
    use_mixed_precision: bool | None = LIFECYCLE_DEFAULTS["use_amp"]
    device: str = TrainingSettings.device
    seed: int = TrainingSettings.seed
    grad_clip: float | None = TrainingSettings.grad_clip
    weight_decay: float = TrainingSettings.weight_decay
    early_stopping_patience: int | None = None
    run_name: str | None = None
    max_corpus_bytes: int = TrainingSettings.max_corpus_bytes
    max_val_batches: int | None = TrainingSettings.max_val_batches
    preset: str | None = None
    tokenizer: str = TrainingSettings.tokenizer

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
        kwargs = {name: getattr(self, name) for name in TRAIN_KEYWORDS}
        kwargs["use_amp"] = self.use_mixed_precision
        kwargs["train_data"] = read_train_data(self)[0]
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
        """Write the config as JSON (atomically: a crash never leaves a torn file). Returns the path.

        Raises:
            IsADirectoryError: ``path`` is a folder; nothing is written.
            OSError: the write failed; the file at ``path`` is as it was, and no ``.partial`` file is left.
        """
        check_path(path, "path")
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(
                f"path={os.fspath(path)!r} is a folder; pass a file path, such as "
                f"{os.fspath(path / 'wizard_config.json')!r}"
            )
        write_json_atomic(path, self.to_dict())  # a failed write leaves no .partial file and the old file whole
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


__all__ = ["FORMAT_VERSION", "WizardConfig", "field_types"]
