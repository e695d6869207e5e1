"""The --model: import the user's file once, build the model (or the built-in tiny GPT), and check it fits the jobs."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from utils.cli.common import DEFAULT_SEQ_LEN, _naming
from utils.model_helpers import detect_vocab_size, get_config_value
from utils.models import tiny_gpt
from utils.training.data import ByteTokenizer
from utils.training.tokenization import check_spec_fits

if TYPE_CHECKING:  # the wizard loads with the subcommands that use it, never with the main job
    from utils.ui.config import WizardConfig


@dataclass(frozen=True)
class BuiltModel:
    """The --model as the checks built it, and how to build it again (a search builds one per trial)."""

    model: nn.Module
    config: Any
    label: str
    build: Callable[[], tuple[nn.Module, Any]]


def _check_model(args: argparse.Namespace, wizard_config: WizardConfig | None = None) -> BuiltModel:
    """Build the --model (every subcommand has the flag), and check --seq-len, its vocabulary and --config on it."""
    build, label = model_builder(args.model)
    with torch.random.fork_rng(devices=[]):  # --seed sets the initial weights; the caller's random stream stays
        torch.manual_seed(getattr(args, "seed", 0))
        model, config = _build_model(build, args.model, args.seq_len)
    if wizard_config is not None:  # the file's settings on this model: seq_len, vocabulary, memory
        problems = wizard_config.validate(model, config)
        if problems:
            raise ValueError(f"--config {args.config} does not fit the model ({label}): {'; '.join(problems)}")
    _check_seq_len_fits(args.seq_len, config, args.model)
    _check_text_vocab(model, config, args.model)
    _check_tokenizer_fits(getattr(args, "tokenizer", "bytes"), model, config)
    return BuiltModel(model, config, label, build)


def _check_tokenizer_fits(spec: str, model: nn.Module, config: Any) -> None:
    """--tokenizer must name a tokenizer that is there (offline) and whose ids the model can embed."""
    with _naming("--tokenizer", (ValueError, TypeError, ImportError)):
        check_spec_fits(spec, detect_vocab_size(model, config))


def _check_text_vocab(model: nn.Module, config: Any, spec: str | None) -> None:
    """Every job here trains on text read as UTF-8 bytes: the model needs an id for each of the 256 bytes."""
    with _naming(f"--model {spec!r}", (Exception,)):  # it may run the user's forward to find the output width
        vocab_size = detect_vocab_size(model, config)
    if vocab_size < ByteTokenizer.vocab_size:
        raise ValueError(
            f"--model {spec!r}: its vocabulary has {vocab_size} ids, but the jobs here train on text read as "
            f"bytes, which needs {ByteTokenizer.vocab_size}; build the model with vocab_size=256 or more"
        )


def _check_seq_len_fits(seq_len: int | None, config: Any, spec: str | None) -> None:
    """--seq-len must fit the model; without it, the config must say how long a sequence may be."""
    max_seq_len = get_config_value(config, "max_seq_len")
    if seq_len is None and max_seq_len is None:
        raise ValueError(f"--model {spec!r}: its config has no max_seq_len (or an alias of it); pass --seq-len")
    if seq_len is not None and max_seq_len is not None and seq_len > max_seq_len:
        raise ValueError(
            f"--seq-len {seq_len} exceeds the model's max_seq_len {max_seq_len}; pass --seq-len {max_seq_len} or less"
        )


def load_model(spec: str | None, seq_len: int | None = None) -> tuple[nn.Module, Any, str]:
    """Build the model named by ``--model FILE.py:NAME`` (or the built-in tiny GPT).

    Returns:
        (model, config, label). When the file defines no config, one is made
        from the model: ``vocab_size`` from its output width and
        ``max_seq_len`` from ``--seq-len`` (default 128).

    Raises:
        ValueError, FileNotFoundError: naming ``--model``; errors the user's
            code raises while importing or building the model come back as a ValueError.
    """
    build, label = model_builder(spec)
    model, config = _build_model(build, spec, seq_len)
    return model, config, label


def _build_model(
    build: Callable[[], tuple[nn.Module, Any]], spec: str | None, seq_len: int | None
) -> tuple[nn.Module, Any]:
    """Call ``build``; a model file without a config gets one made from the model."""
    with _naming(f"--model {spec!r}", (Exception,)):  # the user's code may raise anything; say where it came from
        model, config = build()
        if config is None:
            config = SimpleNamespace(max_seq_len=seq_len or DEFAULT_SEQ_LEN)
            config.vocab_size = detect_vocab_size(model, config)
    return model, config


def model_builder(spec: str | None) -> tuple[Callable[[], tuple[nn.Module, Any]], str]:
    """A function that builds a new ``(model, config or None)`` at each call, and the model's label.

    The file is imported once, here; each call then builds a fresh model from it, as a
    hyperparameter search needs for every trial.

    Example:
        >>> build, label = model_builder("my_model.py:MyTransformer")
        >>> model, config = build()
    """
    if spec is None:
        return tiny_gpt, "built-in tiny GPT"
    path, name = _parse_model_spec(spec)
    flag = f"--model {spec!r}"
    with _naming(flag, (Exception,)):  # the user's code may raise anything; say where it came from
        module = _import_file(path)
    if not hasattr(module, name):
        raise ValueError(f"{flag}: {path} defines no {name!r}; its classes and functions are {_defined(module)}")
    obj = getattr(module, name)
    return (lambda: _instantiate(obj, module, flag)), f"{name} from {path}"


def _parse_model_spec(spec: str) -> tuple[Path, str]:
    """Split ``FILE.py:NAME`` into a file that exists and a Python name."""
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text.endswith(".py") or not name.isidentifier():
        raise ValueError(f"--model {spec!r} must look like path/to/file.py:ClassName")
    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"--model: no file at {path}")
    return path, name


def _defined(module: Any) -> list[str]:
    """The public classes and functions of ``module``: the names --model could take."""
    return sorted(
        n for n, v in vars(module).items() if not n.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v))
    )


def _import_file(path: Path) -> Any:
    """Import the model file as a module of its own; a failed import leaves nothing behind."""
    module_spec = importlib.util.spec_from_file_location(f"user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses and pickling look modules up here
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_spec.name]  # no half-imported module for the next try
        raise
    return module


def _instantiate(obj: Any, module: Any, flag: str) -> tuple[nn.Module, Any]:
    """Build the model from a class or a function, with the file's config where it takes one."""
    file_config = getattr(module, "config", None) or getattr(module, "CONFIG", None)
    if inspect.isclass(obj):
        takes_config = "config" in inspect.signature(obj).parameters
        model = obj(file_config) if takes_config and file_config is not None else obj()
        config = file_config
    elif callable(obj):
        built = obj()
        model, config = built if isinstance(built, tuple) else (built, file_config)
    else:
        raise ValueError(
            f"{flag} names a value of type {type(obj).__name__}, not a class or function; "
            "name your model class or a function that returns the model"
        )
    if not isinstance(model, nn.Module):
        raise ValueError(f"{flag} built a {type(model).__name__}, not a torch.nn.Module; return the model itself")
    return model, config if config is not None else getattr(model, "config", None)
