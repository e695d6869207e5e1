"""``python -m utils generate``: hear a trained model: a run folder's or an export's model continues a prompt.

``--run`` names a run folder (``training_output/NAME``: its config.json records the model's
class and config, its checkpoints the weights) or an export folder (metadata.json,
config.json and model.safetensors). The model is rebuilt from those records (or from
``--model FILE.py:NAME`` when its class lives in a script or notebook), its weights are
loaded with every key and shape checked, and the folder's ``tokenizer.json`` (a run's
``last.pt`` carries a copy) encodes the prompt. Nothing is unpickled: weights are read as
data only.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from utils import __version__
from utils.checks import check_non_negative_number, check_positive_int, check_positive_number
from utils.cli.common import SEED_RANGE, _naming, _parse_and_check, _resolve_device
from utils.cli.model_loading import load_model
from utils.training import checkpoint as ckpt
from utils.training.export import load_exported_weights
from utils.training.text_tokenizer import TOKENIZER_FILE, TextTokenizer, saved_tokenizer
from utils.training.tokenization import load_tokenizer

DEFAULT_NEW_TOKENS = 100


@dataclass(frozen=True)
class GeneratePlan:
    """What the ``generate`` checks built before any work: the trained model and its tokenizer."""

    model: nn.Module
    config: Any
    tokenizer: Any
    label: str


def build_generate_parser() -> argparse.ArgumentParser:
    """The ``python -m utils generate`` parser."""
    parser = argparse.ArgumentParser(
        prog="python -m utils generate",
        description="Hear a trained model: the model of a run folder (python -m utils train) or of an export "
        "(--export) continues --prompt, with the tokenizer it was trained with.",
    )
    parser.add_argument("--run", required=True, metavar="DIR", help="a run folder (training_output/NAME) or an export")
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_NEW_TOKENS,
        metavar="N",
        help="tokens to add (default: %(default)s)",
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0, metavar="T", help="0 is greedy; higher is more random (default: 1)"
    )
    parser.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens only")
    parser.add_argument("--top-p", type=float, metavar="P", help="sample among the likeliest tokens of mass P only")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="the same seed, the same text (default: 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument(
        "--checkpoint",
        choices=["best", "last"],
        default="best",
        help="a run folder's weights: best.pt when the run kept one, else last.pt; or last.pt (default: best)",
    )
    parser.add_argument(
        "--model",
        metavar="FILE.py:NAME",
        help="the architecture, when the folder's records cannot rebuild it (a class defined in a script)",
    )
    parser.add_argument("--tokenizer", metavar="NAME|PATH", help="instead of the folder's own tokenizer.json")
    return parser


def generate_main(argv: list[str]) -> int:
    """``python -m utils generate``: print the model's continuation of ``--prompt``.

    Example:
        >>> generate_main(["--run", "training_output/base", "--prompt", "def ", "--temperature", "0"])
    """
    parser = build_generate_parser()
    args, plan = _parse_and_check(parser, argv, check_generate_args)
    from utils.training.generation import generate

    print(f"utils {__version__} generate: {plan.label}, tokenizer {plan.tokenizer}", file=sys.stderr, flush=True)
    out = generate(
        plan.model,
        args.prompt,
        tokenizer=plan.tokenizer,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        config=plan.config,
    )
    print(out.text)
    return 0


def check_generate_args(args: argparse.Namespace) -> GeneratePlan:
    """Check every flag, rebuild the model and load its weights and tokenizer; nothing is written.

    Raises:
        ValueError, TypeError, FileNotFoundError: naming the flag and the fix.
    """
    check_positive_int(args.max_new_tokens, "--max-new-tokens")
    check_non_negative_number(args.temperature, "--temperature")
    check_positive_int(args.top_k, "--top-k", allow_none=True)
    check_positive_number(args.top_p, "--top-p", allow_none=True)
    if args.top_p is not None and args.top_p > 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if not SEED_RANGE[0] <= args.seed <= SEED_RANGE[1]:
        raise ValueError(f"--seed must be between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {args.seed}")
    if not args.prompt:
        raise ValueError("--prompt is empty; pass some text to continue")
    device = _resolve_device(args.device)
    folder = Path(args.run)
    with _naming("--run"):
        model, config, label = _trained_model(folder, args)
    model.to(device)
    with _naming("--tokenizer" if args.tokenizer else "--run", (ValueError, TypeError, ImportError)):
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else _folder_tokenizer(folder)
    return GeneratePlan(model.eval(), config, tokenizer, label)


def _trained_model(folder: Path, args: argparse.Namespace) -> tuple[nn.Module, Any, str]:
    """The folder's model with its weights, its config, and a label saying where they came from."""
    if (folder / "metadata.json").is_file() and (folder / "model.safetensors").is_file():
        metadata = json.loads((folder / "metadata.json").read_text())
        config_data = json.loads((folder / "config.json").read_text())
        model, config = _build(args.model, metadata.get("model_class"), metadata.get("config_class"), config_data)
        load_exported_weights(model, folder)
        return model, config, f"the export {folder}"
    if not (folder / "config.json").is_file() or not (folder / "checkpoints").is_dir():
        raise FileNotFoundError(
            f"{folder} is neither a run folder (config.json and checkpoints/) nor an export "
            "(metadata.json and model.safetensors); pass the folder python -m utils train or --export wrote"
        )
    record = json.loads((folder / "config.json").read_text()).get("model", {})
    model, config = _build(args.model, record.get("class"), record.get("config_class"), record.get("config"))
    best = ckpt.best_checkpoint_path(folder / "checkpoints")
    path = best if args.checkpoint == "best" and best.is_file() else ckpt.checkpoint_path(folder / "checkpoints")
    saved = ckpt.load_best(path) if path == best else ckpt.load_checkpoint(path, name="--run")
    ckpt.check_matches_model(saved, model, name="--run")  # every key and shape, before a weight is copied
    model.load_state_dict(saved["model"])
    return model, config, f"the run {folder.name} ({path.name})"


def _build(spec: str | None, model_class: Any, config_class: Any, config_data: Any) -> tuple[nn.Module, Any]:
    """The model from --model, else from its recorded class and config."""
    if spec is not None:
        model, config, _ = load_model(spec)
        return model, config
    if not isinstance(model_class, str) or model_class.startswith("__main__.") or "<locals>" in model_class:
        raise ValueError(
            f"the model's class ({model_class}) cannot be imported from its record; "
            "pass --model FILE.py:NAME to build the architecture"
        )
    config = _rebuild_config(config_class, config_data)
    try:
        return _import_qualified(model_class)(config), config
    except Exception as err:  # the user's class may raise anything for a config it cannot take
        raise ValueError(f"{model_class}(config) failed ({err}); pass --model FILE.py:NAME") from err


def _rebuild_config(config_class: Any, data: Any) -> Any:
    """The config from its JSON: the reverse of the export's ``config_to_dict`` (dict when its class is unknown)."""
    if not isinstance(data, dict) or not isinstance(config_class, str) or config_class.startswith("builtins."):
        return data
    if config_class == "types.SimpleNamespace":
        return types.SimpleNamespace(**data)
    cls = _import_qualified(config_class)
    if callable(getattr(cls, "from_dict", None)):
        return cls.from_dict(data)
    if dataclasses.is_dataclass(cls):
        return cls(**data)
    return data


def _import_qualified(name: str) -> Any:
    """A class by its ``module.QualifiedName``: the longest importable module, then attributes."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ValueError(f"cannot import {name}; pass --model FILE.py:NAME")


def _folder_tokenizer(folder: Path) -> TextTokenizer:
    """The folder's tokenizer.json, else the one a run's last.pt carries, else bytes (runs from before either)."""
    if (folder / TOKENIZER_FILE).is_file():
        return load_tokenizer(folder / TOKENIZER_FILE)
    last = ckpt.checkpoint_path(folder / "checkpoints")
    saved = saved_tokenizer(ckpt.load_checkpoint(last, name="--run")) if last.is_file() else None
    return saved if saved is not None else TextTokenizer("bytes")


__all__ = ["build_generate_parser", "check_generate_args", "generate_main"]
