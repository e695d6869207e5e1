"""The main job, ``python -m utils``, and its subcommands.

With no arguments it trains the built-in tiny GPT on the Python standard
library's source with mixed precision, runs the AMP speedup benchmark, the
comparison with a standard GPT of the same size and the Tier 1 and Tier 2
checks, writes a report folder and prints a summary.
``--model path/to/file.py:ClassName`` runs the same on your model.

Under ``torchrun --nproc_per_node=N -m utils`` it trains with DDP on N
processes and rank 0 writes the report; the AMP benchmark, the comparison and
the tiers, which are single-device measurements, are left out and the report
says so. ``--export DIR`` also exports the fine-tuned model there, checks that
it reloads to the same logits, and puts the export and that check in the report.

The subcommands, each with ``--help``:

- ``train`` trains in a run folder through the training coordinator: it keeps
  the best epoch's weights, stops early, resumes a run by name, exports the
  model, and takes its settings from a wizard's file with ``--config``
  (see ``train_main``);
- ``search`` searches the training settings with optuna (``search_main``);
- ``compare`` compares the model with a standard GPT of the same size
  (``compare_main``);
- ``wizard`` walks the setup wizard in a terminal and writes its settings file
  (``wizard_main``).

Every subcommand checks all its flags before any work and writes nothing when
one is wrong: a bad flag is a usage error (exit 2) that names it and the fix.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import inspect
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from utils import __version__, report
from utils.checks import check_int, check_path, check_positive_int, check_positive_number
from utils.folders import check_writable
from utils.model_helpers import detect_vocab_size, get_config_value, resolve_device
from utils.models import tiny_gpt
from utils.training import checkpoint, training_core
from utils.training.amp_utils import resolve_precision
from utils.training.data import ByteTokenizer, prepare_lm_data
from utils.training.distributed import launched_rank, launched_world_size
from utils.training.export import check_export_target, export_state_dict

if TYPE_CHECKING:  # the wizard loads with the subcommands that use it, never with the main job
    from utils.ui.setup_wizard import WizardConfig

DEFAULT_SEQ_LEN = 128  # for a model file that brings no config
# torch.manual_seed takes [-2**63, 2**64); the loop adds the rank and the epoch, so keep the top half free.
SEED_RANGE = (-(2**63), 2**63 - 1)
# What a check raises for a bad argument; each becomes a usage error (exit 2).
USAGE_ERRORS = (ValueError, TypeError, FileNotFoundError, ImportError)


@dataclass(frozen=True)
class RunProfile:
    """How much work the main job does; ``--quick`` swaps in a smaller one."""

    n_epochs: int = 3
    batch_size: int = 8
    learning_rate: float = 1e-3  # a tiny model trained from scratch wants more than the fine-tuning 5e-5
    max_steps: int | None = None
    max_corpus_bytes: int = 200_000
    max_val_batches: int = 20
    benchmark_steps: int = 40
    # The baseline comparison: optimizer steps for each model, and held-out sequences it is scored on.
    # A short budget, enough for both losses to fall well below chance on the built-in tiny GPT.
    compare_steps: int = 60
    compare_samples: int = 32


FULL = RunProfile()
QUICK = RunProfile(
    n_epochs=1,
    max_steps=30,
    max_corpus_bytes=40_000,
    max_val_batches=4,
    benchmark_steps=12,
    compare_steps=12,
    compare_samples=16,
)
# RunProfile field -> the flag that overrides it, and the check its value must pass.
PROFILE_FLAGS = {
    "n_epochs": ("--epochs", check_positive_int),
    "max_steps": ("--max-steps", check_positive_int),
    "batch_size": ("--batch-size", check_positive_int),
    "learning_rate": ("--lr", check_positive_number),
}
PROFILE_HELP = {
    "n_epochs": "training epochs",
    "max_steps": "cap on optimizer steps",
    "batch_size": "sequences per batch",
    "learning_rate": "peak learning rate",
}


@dataclass(frozen=True)
class CheckedInputs:
    """What the checks built before any work: the profile, the report folder and the model."""

    profile: RunProfile
    out: Path
    model: nn.Module
    config: Any
    label: str


@dataclass(frozen=True)
class BuiltModel:
    """The --model as the checks built it, and how to build it again (a search builds one per trial)."""

    model: nn.Module
    config: Any
    label: str
    build: Callable[[], tuple[nn.Module, Any]]


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m utils`` parser; each help line states its default once, in its own words."""
    parser = argparse.ArgumentParser(
        prog="python -m utils",
        description="Check, train and benchmark a transformer: the built-in tiny GPT by default, or --model yours.",
        epilog="subcommands (python -m utils SUBCOMMAND --help):\n"
        "  train    train in a run folder: keep the best epoch, stop early, resume a run\n"
        "           by name, export the model; --config FILE takes a wizard's settings\n"
        "  search   search the training settings with optuna (--trials N, --storage URL)\n"
        "  compare  compare the model with a standard GPT of the same size\n"
        "  wizard   choose the training settings in a terminal and write them to a file",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the epilog's lines
    )
    parser.add_argument("--version", action="version", version=f"utils {__version__}")
    _add_model_options(parser)
    _add_training_options(parser)
    _add_output_options(parser)
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and hardware")
    _add_model_option(group)
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    group.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="training precision; auto picks bf16/fp16 where the hardware has it (default: %(default)s)",
    )
    group.add_argument("--compile", action="store_true", help="train through torch.compile (the first steps compile)")


def _add_model_option(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--model",
        metavar="FILE.py:NAME",
        help="your model: a class (built with no arguments, or with the file's `config`) or a function returning "
        "a model or (model, config) (default: the built-in tiny GPT)",
    )


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    _add_budget_options(group)
    group.add_argument(
        "--checkpoint-dir", metavar="DIR", help="write last.pt there at each epoch end (rank 0); made if missing"
    )
    group.add_argument("--resume", metavar="CHECKPOINT", help="continue fine-tuning from a last.pt (or its folder)")


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
    group.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed for weights, data and dropout (default: %(default)s)"
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what runs and where it goes")
    group.add_argument("--no-benchmark", action="store_true", help="skip the FP32 vs AMP benchmark")
    group.add_argument(
        "--no-compare", action="store_true", help="skip the comparison with a standard GPT of the same size"
    )
    group.add_argument("--no-tiers", action="store_true", help="skip the Tier 1 and Tier 2 checks")
    group.add_argument("--out", metavar="DIR", help="report folder (default: reports/run-<time>)")
    group.add_argument(
        "--export",
        metavar="DIR",
        help="export the fine-tuned model there (safetensors, config, model card), check that it reloads to the "
        "same logits, and link it in the report; exit status 1 if that check fails",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier report in --out (and an earlier export in --export)",
    )
    group.add_argument("--wandb", action="store_true", help="log to Weights & Biases (offline without an API key)")
    _add_progress_option(group)


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
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _profile_default(field: str) -> str:
    """A profile field's default as help text, with the --quick value where that differs."""
    full, quick = (getattr(profile, field) for profile in (FULL, QUICK))
    text = "no cap" if full is None else f"{full:g}" if isinstance(full, float) else str(full)
    return text if quick == full else f"{text}, or {quick} with --quick"


def main(argv: list[str] | None = None) -> int:
    """Run the main job, or the subcommand that comes first; a bad argument is a usage error (exit 2) before any work.

    Returns:
        0, or 1 when ``--export`` wrote an export that failed its reload check.

    Example:
        >>> main(["--quick", "--out", "reports/try"])
        >>> main(["train", "--quick", "--run-name", "try", "--export", "exports/try"])
        >>> main(["search", "--trials", "20", "--storage", "sqlite:///search.db", "--study-name", "lr"])
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    parser = build_parser()
    args, inputs = _parse_and_check(parser, argv, check_args)
    return _run_job(args, inputs)


def _parse_and_check(
    parser: argparse.ArgumentParser, argv: list[str], check: Callable[[argparse.Namespace], Any]
) -> tuple[argparse.Namespace, Any]:
    """Parse ``argv`` and run ``check`` on it; a bad argument ends in argparse's usage error (exit 2)."""
    args = parser.parse_args(argv)
    try:
        return args, check(args)
    except USAGE_ERRORS as err:
        parser.error(str(err))


def check_args(args: argparse.Namespace) -> CheckedInputs:
    """Check every argument, cheapest first, and build the model; nothing is written.

    Raises:
        ValueError, TypeError, FileNotFoundError: naming the flag and the fix.
    """
    profile = _profile_from_args(args)
    _check_seq_len_and_seed(args.seq_len, args.seed)
    out = _check_paths(args)
    _check_hardware(args)
    built = _check_model(args)
    _check_resume(args.resume, built.model, profile.n_epochs)
    return CheckedInputs(profile, out, built.model, built.config, built.label)


def _run_job(args: argparse.Namespace, inputs: CheckedInputs) -> int:
    """Run the sections; rank 0 writes the report and prints the summary."""
    world_size, is_main = launched_world_size(), launched_rank() == 0
    say = print if is_main else _say_nothing
    say(f"utils {__version__}: {inputs.label}, device={args.device}, precision={args.precision}", flush=True)
    if world_size > 1:
        say(
            f"torchrun with {world_size} processes: DDP fine-tuning only; the AMP benchmark, the baseline "
            "comparison and the Tier 1/2 checks are single-device measurements, run them without torchrun",
            flush=True,
        )
        args.no_benchmark = args.no_compare = args.no_tiers = True
    sections = _run_all(inputs.model, inputs.config, args, inputs.profile)
    if not is_main:
        return 0  # rank 0 writes the report
    summary_rows = _summary_rows(sections)
    folder = report.write_report(
        inputs.out,
        figures=_collect(sections, "figures"),
        tables=_collect(sections, "tables"),
        results={"model": inputs.label, "version": __version__, **{k: s["results"] for k, s in sections.items()}},
        summary_md=_summary_markdown(inputs.label, summary_rows),
        overwrite=args.overwrite,
    )
    print()
    print(report.markdown_table(summary_rows, ["section", "metric", "value"]))
    print(f"Report written to {folder}")
    return _exit_status(sections["fine_tuning"]["results"].get("export"))


def _say_nothing(*args: Any, **kwargs: Any) -> None:
    """``print`` for ranks other than 0: one report, one voice."""


def _profile_from_args(args: argparse.Namespace) -> RunProfile:
    """The --quick or full profile, with each given flag checked and applied."""
    given = {}
    for field, (flag, check) in PROFILE_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)  # a subcommand may have only some of the flags
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
    if seq_len is not None:
        check_positive_int(seq_len, "--seq-len")
        if seq_len < 2:
            raise ValueError(f"--seq-len must be at least 2 (a token and the next one to predict), got {seq_len}")


def _check_hardware(args: argparse.Namespace) -> None:
    """--device must name a device this machine has, and --precision must run on it."""
    device = _resolve_device(args.device)
    with _naming("--precision"):
        resolve_precision(args.precision, use_amp=args.precision == "auto", device=device)


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
    return BuiltModel(model, config, label, build)


def _check_text_vocab(model: nn.Module, config: Any, spec: str | None) -> None:
    """Every job here trains on text read as UTF-8 bytes: the model needs an id for each of the 256 bytes."""
    with _naming(f"--model {spec!r}", (Exception,)):  # it may run the user's forward to find the output width
        vocab_size = detect_vocab_size(model, config)
    if vocab_size < ByteTokenizer.vocab_size:
        raise ValueError(
            f"--model {spec!r}: its vocabulary has {vocab_size} ids, but the jobs here train on text read as "
            f"bytes, which needs {ByteTokenizer.vocab_size}; build the model with vocab_size=256 or more"
        )


def _check_paths(args: argparse.Namespace) -> Path:
    """Check --out, --checkpoint-dir, --resume and --export paths; return the report folder."""
    for flag, value in (
        ("--out", args.out),
        ("--checkpoint-dir", args.checkpoint_dir),
        ("--resume", args.resume),
        ("--export", args.export),
    ):
        if value is not None:
            check_path(value, flag)  # an empty path would silently mean the current folder
    out = Path(args.out) if args.out is not None else Path("reports") / time.strftime("run-%Y%m%d-%H%M%S")
    report.check_report_folder(out, args.overwrite)
    if args.checkpoint_dir is not None:
        _check_checkpoint_dir(Path(args.checkpoint_dir), out)
    if args.export is not None:
        export_dir = _check_export_dir(args.export, args.overwrite)
        _check_apart(export_dir, "--export", out, "--out")
        if args.checkpoint_dir is not None:
            _check_apart(export_dir, "--export", Path(args.checkpoint_dir), "--checkpoint-dir")
    return out


def _check_checkpoint_dir(folder: Path, out: Path) -> None:
    """The checkpoint folder must be makeable and writable, and outside the report folder."""
    checkpoint.check_checkpoint_dir(folder, name="--checkpoint-dir")
    report.check_writable(folder, "--checkpoint-dir")  # a real write: permission bits miss root and special mounts
    if folder.resolve() == out.resolve() or out.resolve() in folder.resolve().parents:
        raise ValueError(
            f"--checkpoint-dir {folder} is inside --out {out}, and the report replaces that folder as a whole; "
            f"keep checkpoints beside it, e.g. --checkpoint-dir {out.parent / 'checkpoints'}"
        )


def _check_export_dir(export: str, overwrite: bool) -> Path:
    """--export must be a new or empty folder, or an earlier export with --overwrite."""
    return check_export_target(export, overwrite, flag="--export", overwrite_flag="--overwrite")


def _check_apart(path: Path, flag: str, other: Path, other_flag: str) -> None:
    """Neither folder may be, or hold, the other: each is written, or replaced, as a whole."""
    mine, theirs = path.resolve(), other.resolve()
    if mine == theirs or mine in theirs.parents or theirs in mine.parents:
        raise ValueError(
            f"{flag} {path} and {other_flag} {other} overlap, and writing one as a whole folder would replace "
            f"or fill the other; keep them side by side, e.g. {flag} {other.parent / (other.name + '-export')}"
        )


def _resolve_device(name: str) -> torch.device:
    with _naming("--device"):
        return resolve_device(name)


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


def _check_seq_len_fits(seq_len: int | None, config: Any, spec: str | None) -> None:
    """--seq-len must fit the model; without it, the config must say how long a sequence may be."""
    max_seq_len = get_config_value(config, "max_seq_len")
    if seq_len is None and max_seq_len is None:
        raise ValueError(f"--model {spec!r}: its config has no max_seq_len (or an alias of it); pass --seq-len")
    if seq_len is not None and max_seq_len is not None and seq_len > max_seq_len:
        raise ValueError(
            f"--seq-len {seq_len} exceeds the model's max_seq_len {max_seq_len}; pass --seq-len {max_seq_len} or less"
        )


def _check_resume(resume: str | None, model: nn.Module, n_epochs: int) -> None:
    """Read --resume once before any work: a checkpoint of this model, with an epoch left to train."""
    if resume is not None:
        checkpoint.load_for_resume(resume, model, n_epochs, name="--resume", epochs_name="--epochs")


def _run_all(model: nn.Module, config: Any, args: argparse.Namespace, profile: RunProfile) -> dict[str, dict]:
    """Run each section; each returns {'results': ..., 'figures': ..., 'tables': ..., 'summary': [...]}."""
    # The comparison runs first: it trains a copy of the model as built, so both designs start from scratch
    # (fine-tuning then trains the model itself). Its section follows the benchmark's in the report.
    comparison = None if args.no_compare else _run_comparison(model, config, args, profile)
    sections = {"fine_tuning": _run_fine_tuning(model, config, args, profile)}
    if not args.no_benchmark:
        sections["amp_benchmark"] = _run_benchmark(model, config, args, profile)
    if comparison is not None:
        sections["comparison"] = comparison
    if not args.no_tiers:
        sections.update(_run_tiers(model, config, args))
    return sections


def _run_fine_tuning(model: nn.Module, config: Any, args: argparse.Namespace, profile: RunProfile) -> dict:
    from utils import tier3_training_utilities as tier3

    r = tier3.test_fine_tuning(
        model,
        config,
        n_epochs=profile.n_epochs,
        learning_rate=profile.learning_rate,
        batch_size=profile.batch_size,
        use_wandb=args.wandb,
        use_amp=args.precision == "auto",
        precision=args.precision,
        device=args.device,
        max_steps=profile.max_steps,
        seed=args.seed,
        seq_len=args.seq_len,
        max_corpus_bytes=profile.max_corpus_bytes,
        max_val_batches=profile.max_val_batches,
        progress=not args.no_progress,
        compile=args.compile,
        checkpoint_dir=args.checkpoint_dir,
        resume_from=args.resume,
    )
    keep = (
        "precision",
        "precision_reason",
        "device",
        "world_size",
        "compiled",
        "optimizer_steps",
        "initial_loss",
        "final_loss",
        "val_loss",
        "val_accuracy",
        "best_epoch",
        "training_time_seconds",
        "samples_per_second",
        "tokens_per_second",
        "mfu",
        "throughput",
        "skipped_steps",
        "final_loss_scale",
        "parameters",
        "data_source",
        "checkpoint_path",
        "loss_history",
    )
    throughput = r["throughput"]
    section = {
        "results": {k: r[k] for k in keep},
        "figures": {"training_curves": r["figure"]},
        "tables": {"metrics": r["metrics_summary"], "steps": r["step_history"]},
        "summary": [
            ("precision", r["precision"]),
            ("optimizer steps", r["optimizer_steps"]),
            ("train loss first -> last", f"{r['initial_loss']:.3f} -> {r['final_loss']:.3f}"),
            ("val loss / accuracy", f"{r['val_loss']:.3f} / {r['val_accuracy']:.3f}"),
            ("tokens/s (steady, all ranks)", _format(throughput["tokens_per_second"], "{:.0f}")),
            ("MFU", f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else f"n/a: {throughput['peak_note']}"),
            ("skipped steps (fp16)", r["skipped_steps"]),
        ],
    }
    if args.export is not None and launched_rank() == 0:  # one export, like one report
        record = _export_model({**r, "model": model, "config": config}, Path(args.export), args.overwrite)
        section["results"]["export"] = record
        section["summary"] += _export_rows(record)
    return section


def _run_benchmark(model: nn.Module, config: Any, args: argparse.Namespace, profile: RunProfile) -> dict:
    from utils.training import amp_benchmark

    b = amp_benchmark.test_amp_speedup_benchmark(
        model,
        config,
        n_epochs=1,
        learning_rate=profile.learning_rate,
        batch_size=profile.batch_size,
        use_wandb=args.wandb,
        precision=args.precision if args.precision in ("fp16", "bf16") else "auto",
        device=args.device,
        max_steps=profile.benchmark_steps,
        seed=args.seed,
        seq_len=args.seq_len,
        max_corpus_bytes=profile.max_corpus_bytes,
        max_val_batches=profile.max_val_batches,
        progress=not args.no_progress,
        compile=args.compile,
    )
    if b["status"] != "ok":
        return {"results": b, "figures": {}, "tables": {}, "summary": [("status", b["notes"][0])]}
    mem = b["memory_reduction_pct"]
    return {
        "results": {k: v for k, v in b.items() if k not in ("figure", "summary")},
        "figures": {"amp_benchmark": b["figure"]},
        "tables": {"amp_benchmark": b["summary"]},
        "summary": [
            ("compared", f"fp32 vs {b['amp_precision']} on {b['device']}"),
            ("median step ms (fp32 / amp)", f"{b['fp32_step_time_ms']:.1f} / {b['amp_step_time_ms']:.1f}"),
            ("speedup", f"{b['speedup']:.2f}x"),
            ("peak memory reduction", f"{mem:.1f}%" if mem is not None else "not measured (no CUDA)"),
            ("val accuracy diff", f"{b['accuracy_diff']:.4f}"),
        ],
    }


def _run_comparison(model: nn.Module, config: Any, args: argparse.Namespace, profile: RunProfile) -> dict:
    """The baseline comparison on the profile's short budget, trained as the fine-tuning is (batch, lr, precision).

    A model it cannot take (a module that cannot be deep-copied, say: its errors come before any
    training) gets a section that says why, and the other sections still run.
    """
    from utils.tier3_benchmark_comparison import test_benchmark_comparison

    try:
        c = test_benchmark_comparison(
            model, config, **_comparison_options(config, args, profile, profile.compare_steps, profile.compare_samples)
        )
    except (TypeError, ValueError) as err:
        reason = f"not run: {err}"
        print(f"baseline comparison {reason}; pass --no-compare to leave it out", file=sys.stderr)
        return {
            "results": {"status": "error", "reason": str(err)},
            "figures": {},
            "tables": {},
            "summary": [("status", reason)],
        }
    return _comparison_section(c)


def _comparison_options(
    config: Any, args: argparse.Namespace, profile: RunProfile, steps: int, samples: int
) -> dict[str, Any]:
    """``test_benchmark_comparison`` keywords: the flags, the profile's batch and data, and ``steps`` per model."""
    seq_len = args.seq_len or get_config_value(config, "max_seq_len")
    return dict(
        n_samples=min(samples, _held_out_sequences(seq_len, profile.max_corpus_bytes)),
        train_steps=steps,
        precision=args.precision,
        use_amp=args.precision == "auto",  # auto means mixed precision where the hardware has it, as in fine-tuning
        device=args.device,
        seed=args.seed,
        progress=not args.no_progress,
        learning_rate=profile.learning_rate,
        batch_size=profile.batch_size,
        seq_len=args.seq_len,
        max_corpus_bytes=profile.max_corpus_bytes,
        compile=args.compile,
    )


def _held_out_sequences(seq_len: int, max_corpus_bytes: int) -> int:
    """Sequences of ``seq_len`` in the built-in corpus's held-out tail: the comparison can score no more."""
    data = prepare_lm_data(
        None, None, vocab_size=ByteTokenizer.vocab_size, seq_len=seq_len, max_corpus_bytes=max_corpus_bytes
    )
    return len(data.val)


def _comparison_section(c: dict[str, Any]) -> dict[str, Any]:
    """A report section from ``test_benchmark_comparison``'s results: the table, the figure and the verdict."""
    keep = ("status", "verdict", "judgement", "baseline_description", "loss_comparable", "loss_note", "notes")
    results = {k: c[k] for k in keep} | {"settings": c["settings"], "reason": c.get("reason")}
    if c["status"] != "ok":
        return {"results": results, "figures": {}, "tables": {}, "summary": [("status", c["verdict"])]}
    base = c["baseline_description"]
    shape = f"{base['d_model']} wide x {base['n_layers']} layers, " if "d_model" in base else ""
    summary = c["summary"].set_index("metric")
    return {
        "results": results | {"summary": c["summary"].to_dict("records")},
        "figures": {"comparison": c["figure"]},
        "tables": {"comparison": c["summary"]},
        "summary": [
            ("baseline", f"{base['name']} ({shape}{base['parameters']:,} parameters)"),
            ("steps per model", c["settings"]["train_steps"]),
            ("val loss (yours / baseline)", _pair(summary, "val loss", "{:.3f}")),
            ("accuracy (yours / baseline)", _pair(summary, "next-token accuracy", "{:.3f}")),
            ("verdict", c["verdict"]),
        ],
    }


def _pair(summary: Any, metric: str, spec: str) -> str:
    """'yours / baseline' for one metric of the comparison's table; 'n/a' where it was not compared."""
    return " / ".join(_format(summary.at[metric, side], spec) for side in ("yours", "baseline"))


def _run_tiers(model: nn.Module, config: Any, args: argparse.Namespace) -> dict[str, dict]:
    """Tier 1 and Tier 2 checks: summary tables, each check's own table, and its plots."""
    from utils import test_functions

    sections = {}
    for tier, run in (("tier1", test_functions.run_all_tier1_tests), ("tier2", test_functions.run_all_tier2_tests)):
        table = run(model, config)
        details = table.attrs.get("results", {})
        checks = {name: d for name, d in details.items() if isinstance(d, dict)}
        figures = {f"{tier}_{name}": d["figure"] for name, d in checks.items() if d.get("figure") is not None}
        tables = {f"{tier}_{name}": d["table"] for name, d in checks.items() if d.get("table") is not None}
        sections[tier] = {
            "results": table.to_dict("records"),
            "figures": figures,
            "tables": {tier: table, **tables},
            "summary": [
                (row["test"], f"{row['status']}: {row.get('key_figure', '')}") for row in table.to_dict("records")
            ],
        }
    return sections


def _collect(sections: dict[str, dict], key: str) -> dict[str, Any]:
    return {name: item for section in sections.values() for name, item in section[key].items()}


def _summary_rows(sections: dict[str, dict]) -> list[dict[str, Any]]:
    return [
        {"section": name, "metric": metric, "value": value}
        for name, section in sections.items()
        for metric, value in section["summary"]
    ]


def _summary_markdown(label: str, rows: list[dict[str, Any]]) -> str:
    return f"# utils report: {label}\n\n" + report.markdown_table(rows, ["section", "metric", "value"])


def _format(value: float | None, spec: str) -> str:
    return spec.format(value) if value is not None else "n/a"


# -- exporting, for the main job and train ---------------------------------------


def _export_model(results: dict[str, Any], folder: Path, overwrite: bool) -> dict[str, Any]:
    """Export ``results['model']`` to ``folder`` with the reload check; return what the report keeps of it."""
    exported = export_state_dict(results, folder, overwrite=overwrite)
    return {"export_dir": str(exported["export_dir"]), "files": exported["files"], "parity": exported["parity"]}


def _export_rows(record: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The summary rows of an export: where it is and whether it reloads to the same logits."""
    if record is None:
        return [("export", "none (pass --export DIR)")]
    parity = record["parity"]
    if parity["status"] == "ok":
        verdict = f"ok (max abs diff {parity['max_abs_diff']:.3g})"
    else:
        verdict = f"FAIL: {parity['reason']}"
    return [("export", record["export_dir"]), ("export parity", verdict)]


def _exit_status(record: dict[str, Any] | None) -> int:
    """1 when an export failed its reload check: a script must not take those weights for good ones."""
    if record is None or record["parity"]["status"] == "ok":
        return 0
    print(
        f"error: the export in {record['export_dir']} does not reload to the same model "
        f"({record['parity']['reason']}); do not use those weights until you know why",
        file=sys.stderr,
    )
    return 1


# -- python -m utils train ------------------------------------------------------

# train --config FILE: the flags that override a setting of the file, as dest -> WizardConfig field.
CONFIG_FLAGS = {
    "epochs": "n_epochs",
    "max_steps": "max_steps",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "seq_len": "seq_len",
    "seed": "seed",
    "device": "device",
    "precision": "precision",
    "run_name": "run_name",
    "early_stopping": "early_stopping_patience",
}
# Flags that set what a run computes -> the config.json entry they must match on --resume:
# resume_training continues a run with its own settings, so a different value would be ignored.
RESUME_KEPT = {
    "batch_size": ("--batch-size", "batch_size"),
    "lr": ("--lr", "learning_rate"),
    "seq_len": ("--seq-len", "seq_len"),
    "seed": ("--seed", "seed"),
    "precision": ("--precision", "precision"),
    "device": ("--device", "device"),
    "compile": ("--compile", "compile"),
    "wandb": ("--wandb", "use_wandb"),
    "no_progress": ("--no-progress", "progress"),
    "early_stopping": ("--early-stopping", "early_stopping_patience"),
}


@dataclass(frozen=True)
class TrainPlan:
    """What the ``train`` checks built before any work."""

    coordinator: training_core.TrainingCoordinator
    model: nn.Module
    config: Any
    label: str
    run_dir: Path | None  # None: the coordinator names a new run run-<date>-<time>
    export_dir: Path | None
    options: dict[str, Any]  # TrainingCoordinator.train keywords, for a new run


def build_train_parser() -> argparse.ArgumentParser:
    """The ``python -m utils train`` parser."""
    parser = argparse.ArgumentParser(
        prog="python -m utils train",
        description="Train in a run folder (checkpoints, metrics.csv, config.json): keep the best epoch's weights, "
        "stop early, resume a run by name, and export the model with a reload check. --config FILE trains with "
        "the settings the wizard wrote (python -m utils wizard).",
    )
    _add_model_options(parser)
    group = parser.add_argument_group("training")
    group.add_argument(
        "--config",
        metavar="FILE",
        help="train with the settings in this wizard file; a flag typed beside it overrides the file's value "
        f"({', '.join('--' + dest.replace('_', '-') for dest in CONFIG_FLAGS)}); not with --quick or --resume",
    )
    _add_budget_options(group)
    _add_run_options(parser)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the run folder and the export")
    group.add_argument(
        "--output-dir", default="training_output", metavar="DIR", help="where run folders go (default: %(default)s)"
    )
    group.add_argument(
        "--run-name",
        metavar="NAME",
        help="the run's folder in --output-dir: letters, digits, '.', '_', '-' (default: run-<date>-<time>)",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue the run --run-name from its last epoch, with the settings in its config.json; "
        "raise --epochs or --max-steps (counted from the run's start) to train on",
    )
    group.add_argument(
        "--early-stopping",
        type=int,
        metavar="N",
        help="stop after N epochs without a better val/loss (default: train every epoch)",
    )
    group.add_argument(
        "--export",
        metavar="DIR",
        help="export the trained (best) model there and check that it reloads to the same logits; "
        "exit status 1 if that check fails",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export in --export, and without --resume an earlier run of that --run-name",
    )
    group.add_argument("--wandb", action="store_true", help="log to Weights & Biases (offline without an API key)")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def train_main(argv: list[str]) -> int:
    """``python -m utils train``: train in a run folder, print a summary; bad flags are usage errors (exit 2).

    Returns:
        0, or 1 when the export failed its reload check.

    Example:
        >>> train_main(["--quick", "--run-name", "try", "--early-stopping", "2", "--export", "exports/try"])
        >>> train_main(["--run-name", "try", "--resume", "--epochs", "5"])
    """
    parser = build_train_parser()
    args, plan = _parse_and_check(parser, argv, lambda args: check_train_args(args, _typed_options(parser, argv)))
    return _run_train(args, plan)


def _typed_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The options the user typed, as dests: argparse leaves a value it finds in the namespace unless typed."""
    unset = object()
    probe = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args(argv)), unset))
    return {dest for dest, value in vars(parser.parse_args(argv, namespace=probe)).items() if value is not unset}


def check_train_args(args: argparse.Namespace, typed: set[str]) -> TrainPlan:
    """Check every ``train`` flag, cheapest first, and build the model and the coordinator; nothing is written.

    Raises:
        ValueError, TypeError, FileNotFoundError: naming the flag and the fix.
    """
    profile = _profile_from_args(args)
    _check_seq_len_and_seed(args.seq_len, args.seed)
    if args.early_stopping is not None:
        check_positive_int(args.early_stopping, "--early-stopping")
    _check_hardware(args)  # the typed (or default) --device and --precision; the file's are checked with it
    wizard_config = _read_train_config(args, typed) if args.config is not None else None
    _check_single_process("train", "for DDP run the main job under torchrun (python -m utils)")
    output_dir = _check_output_dir(args.output_dir)
    run_dir = _check_run_name(args, output_dir)
    export_dir = _check_train_export(args, run_dir or output_dir)
    built = _check_model(args, wizard_config)
    if args.resume:
        _check_resumable(run_dir, args, typed, built.model)
    coordinator = training_core.TrainingCoordinator(
        output_dir, args.precision, args.device, args.wandb, progress=not args.no_progress
    )
    if wizard_config is None:
        options = _train_options(args, profile)
    else:
        options = {**wizard_config.to_train_kwargs(), "compile": args.compile, "overwrite": args.overwrite}
    return TrainPlan(coordinator, built.model, built.config, built.label, run_dir, export_dir, options)


def _check_single_process(subcommand: str, instead: str) -> None:
    if launched_world_size() > 1:
        raise ValueError(f"{subcommand} runs on one process; {instead}")


def _read_train_config(args: argparse.Namespace, typed: set[str]) -> WizardConfig:
    """Read --config FILE, put the typed flags over it, check it, and make its settings the flags' values.

    The checks that follow (run name, device, precision, the model) then see the settings the run will use.
    """
    from utils.ui.setup_wizard import WizardConfig

    if "quick" in typed:
        raise ValueError("--quick sets a run's budget, and --config sets its own; drop one of them")
    if "resume" in typed:
        raise ValueError(
            "--resume continues a run with the settings in its own config.json, not --config's; "
            "drop --config to resume, or drop --resume to start a new run with the file"
        )
    path = args.config
    check_path(path, "--config")
    if not Path(path).is_file():
        raise ValueError(f"--config {path}: no file there; write one with python -m utils wizard --config-out {path}")
    overrides = {field: getattr(args, dest) for dest, field in CONFIG_FLAGS.items() if dest in typed}
    with _naming(f"--config {path}"):
        wizard_config = WizardConfig.load(path).replace(**overrides)
    problems = wizard_config.validate()
    if problems:
        raise ValueError(f"--config {path}: {'; '.join(problems)}; fix the file, or override the setting with its flag")
    for dest, field in CONFIG_FLAGS.items():
        setattr(args, dest, getattr(wizard_config, field))
    return wizard_config


def _check_output_dir(output_dir: str) -> Path:
    """--output-dir must be a folder that can be made and written to."""
    check_path(output_dir, "--output-dir")
    checkpoint.check_checkpoint_dir(output_dir, name="--output-dir")
    check_writable(Path(output_dir), "--output-dir")  # a real write: permission bits miss root and special mounts
    return Path(output_dir)


def _check_run_name(args: argparse.Namespace, output_dir: Path) -> Path | None:
    """The run folder --run-name names: new unless --resume (or --overwrite); None for a default name."""
    if args.run_name is None:
        if args.resume:
            raise ValueError("--resume needs --run-name NAME: the run to continue, a folder in --output-dir")
        return None
    training_core.check_run_name(args.run_name, "--run-name")
    run_dir = output_dir / args.run_name
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--run-name {args.run_name}: {run_dir} is a file; pick another --run-name")
    if args.resume and not run_dir.exists():
        raise ValueError(
            f"--resume: there is no run {args.run_name!r} in --output-dir {output_dir} (no {run_dir}); "
            "check --run-name and --output-dir, or drop --resume to start that run"
        )
    if run_dir.exists() and not (args.resume or args.overwrite):
        raise ValueError(
            f"--run-name {args.run_name}: {run_dir} already exists; pass --resume to continue it, "
            "--overwrite to replace it, or another --run-name"
        )
    return run_dir


def _check_train_export(args: argparse.Namespace, run_or_output_dir: Path) -> Path | None:
    """--export may sit inside the run folder (as the coordinator's default does), never be it or hold it."""
    if args.export is None:
        return None
    check_path(args.export, "--export")
    export_dir = _check_export_dir(args.export, args.overwrite)
    run = run_or_output_dir.resolve()
    if export_dir.resolve() == run or export_dir.resolve() in run.parents:
        raise ValueError(
            f"--export {export_dir} is, or holds, the run folder {run_or_output_dir}, and an export is written as "
            f"a whole folder; pass a folder beside it or inside it, e.g. --export {run_or_output_dir / 'export'}"
        )
    return export_dir


def _check_resumable(run_dir: Path, args: argparse.Namespace, typed: set[str], model: nn.Module) -> None:
    """--resume: a run folder with a checkpoint of this model, flags that agree with it, and training left."""
    with _naming("--resume"):
        saved = training_core.read_run_config(run_dir)
    last = checkpoint.checkpoint_path(run_dir / "checkpoints")
    if not last.is_file():
        raise ValueError(
            f"--resume: run {run_dir.name!r} has no checkpoint ({last}): it stopped before its first epoch "
            "ended; start it again with --overwrite"
        )
    _check_kept_settings(saved, args, typed, run_dir.name)
    settings = saved["settings"]
    n_epochs = args.epochs if args.epochs is not None else settings["n_epochs"]
    state = checkpoint.load_for_resume(last, model, n_epochs, name="--resume", epochs_name="--epochs")
    max_steps = args.max_steps if args.max_steps is not None else settings["max_steps"]
    if max_steps is not None and state["optimizer_step"] >= max_steps:
        raise ValueError(
            f"--max-steps: run {run_dir.name!r} already took {state['optimizer_step']} optimizer steps, its cap "
            f"of {max_steps}; pass --max-steps > {state['optimizer_step']} to train on"
        )


def _check_kept_settings(saved: dict[str, Any], args: argparse.Namespace, typed: set[str], name: str) -> None:
    """A flag typed with --resume must agree with the run's config.json, which resume_training follows."""
    if "quick" in typed:
        raise ValueError(
            f"--quick sets a new run's budget; --resume continues run {name!r} with its own, so drop --quick "
            "(raise --epochs or --max-steps to train on)"
        )
    recorded = {**saved["settings"], **saved["lifecycle"]}
    for dest, (flag, key) in RESUME_KEPT.items():
        value = getattr(args, dest)
        value = not value if dest == "no_progress" else value
        if dest in typed and value != recorded.get(key):
            raise ValueError(
                f"{flag} asks for {key}={value!r}, but run {name!r} trained with {key}={recorded.get(key)!r} "
                "(its config.json), which --resume keeps; drop the flag, or start a new --run-name"
            )


def _train_options(args: argparse.Namespace, profile: RunProfile) -> dict[str, Any]:
    """``TrainingCoordinator.train`` keywords for a new run: the profile, the seed, and the lifecycle flags."""
    return dict(
        run_name=args.run_name,
        n_epochs=profile.n_epochs,
        learning_rate=profile.learning_rate,
        batch_size=profile.batch_size,
        max_steps=profile.max_steps,
        max_corpus_bytes=profile.max_corpus_bytes,
        max_val_batches=profile.max_val_batches,
        seed=args.seed,
        seq_len=args.seq_len,
        compile=args.compile,
        early_stopping_patience=args.early_stopping,
        overwrite=args.overwrite,
    )


def _run_train(args: argparse.Namespace, plan: TrainPlan) -> int:
    """Train (or resume), export when asked, and print the summary table."""
    how = f"resuming {plan.run_dir}" if args.resume else f"device={args.device}, precision={args.precision}"
    how += f", settings from {args.config}" if args.config is not None else ""
    print(f"utils {__version__} train: {plan.label}, {how}", flush=True)
    if args.resume:
        results = plan.coordinator.resume_training(
            plan.run_dir, plan.model, plan.config, n_epochs=args.epochs, max_steps=args.max_steps
        )
    else:
        results = plan.coordinator.train(plan.model, plan.config, **plan.options)
    record = _export_model(results, plan.export_dir, args.overwrite) if plan.export_dir is not None else None
    rows = [{"metric": metric, "value": value} for metric, value in _train_summary(results, record)]
    print()
    print(report.markdown_table(rows, ["metric", "value"]))
    return _exit_status(record)


def _train_summary(results: dict[str, Any], record: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """Where the run is, how it went, and where its export is."""
    best, epoch = results["best_value"], results["best_epoch"]
    return [
        ("run folder", results["run_dir"]),
        ("precision", results["precision"]),
        ("optimizer steps", results["optimizer_steps"]),
        (f"best {results['monitor']}", f"{best:.4f} at epoch {epoch + 1}" if best is not None else "n/a"),
        ("stopped early", "yes" if results["stopped_early"] else "no"),
        *_export_rows(record),
    ]


# -- reports of the subcommands ------------------------------------------------------


def _check_optional_out(out: str | None, overwrite: bool) -> Path | None:
    """--out of a subcommand whose report folder is optional: None, or a folder that can receive a report."""
    if out is None:
        return None
    check_path(out, "--out")  # an empty path would silently mean the current folder
    report.check_report_folder(Path(out), overwrite)
    return Path(out)


def _print_rows(rows: list[tuple[str, Any]]) -> None:
    print()
    print(report.markdown_table([{"metric": metric, "value": value} for metric, value in rows], ["metric", "value"]))


def _write_section_report(out: Path | None, title: str, label: str, section: dict, overwrite: bool) -> None:
    """Write one section (results, figures, tables, summary rows) as a report folder, when --out asks for one."""
    if out is None:
        return
    rows = [{"metric": metric, "value": value} for metric, value in section["summary"]]
    folder = report.write_report(
        out,
        figures=section["figures"],
        tables=section["tables"],
        results={"model": label, "version": __version__, **section["results"]},
        summary_md=f"# {title}: {label}\n\n" + report.markdown_table(rows, ["metric", "value"]),
        overwrite=overwrite,
    )
    print(f"Report written to {folder}")


# -- python -m utils search -----------------------------------------------------


@dataclass(frozen=True)
class SearchJob:
    """What the ``search`` checks built before any work."""

    built: BuiltModel
    storage: Any  # an opened optuna storage, or None: the study lives in memory
    n_done: int  # finished trials the stored study already holds
    out: Path | None


def build_search_parser() -> argparse.ArgumentParser:
    """The ``python -m utils search`` parser."""
    parser = argparse.ArgumentParser(
        prog="python -m utils search",
        description="Search the training settings (learning rate, weight decay, warm-up, batch size, clipping, "
        "accumulation) with optuna: each trial trains a new model on the built-in corpus and is scored by its "
        "validation loss; a poor trial is pruned after an epoch. --storage keeps the study, to resume it.",
    )
    _add_model_options(parser)
    group = parser.add_argument_group("the search")
    for flag, default, text in (
        ("--trials", 10, "trials the study holds at the end, counting those --storage already keeps"),
        ("--epochs", 3, "epochs per trial; the pruner judges each epoch's validation loss"),
        ("--max-steps-per-trial", 200, "cap on one trial's optimizer steps"),
    ):
        group.add_argument(flag, type=int, default=default, metavar="N", help=f"{text} (default: %(default)s)")
    group.add_argument(
        "--pruner",
        choices=["median", "none"],
        default="median",
        help="median stops a trial whose validation loss is worse than the median of earlier trials at the "
        "same epoch (default: %(default)s)",
    )
    group.add_argument(
        "--timeout", type=float, metavar="S", help="start no new trial after S seconds (default: no limit)"
    )
    _add_seq_len_option(group)
    _add_seed_option(group)
    group = parser.add_argument_group("keeping the study")
    group.add_argument(
        "--storage",
        metavar="URL",
        help="an optuna storage such as sqlite:///search.db: the study is kept there, and the same command "
        "resumes it after a crash (default: in memory)",
    )
    group.add_argument("--study-name", metavar="NAME", help="the study's name in --storage (needed with it)")
    _add_report_options(parser)
    return parser


def search_main(argv: list[str]) -> int:
    """``python -m utils search``: run an optuna search and print the best settings; bad flags are usage errors.

    Returns:
        0, or 1 when no trial completed (each one failed or was pruned).

    Example:
        >>> search_main(["--trials", "20", "--storage", "sqlite:///search.db", "--study-name", "tiny-gpt"])
    """
    parser = build_search_parser()
    args, job = _parse_and_check(parser, argv, check_search_args)
    return _run_search(args, job)


def check_search_args(args: argparse.Namespace) -> SearchJob:
    """Check every ``search`` flag and build the model; the storage is opened last, as it may create its file.

    Raises:
        ValueError, TypeError, FileNotFoundError, ImportError: naming the flag and the fix.
    """
    for flag, value in (
        ("--trials", args.trials),
        ("--epochs", args.epochs),
        ("--max-steps-per-trial", args.max_steps_per_trial),
    ):
        check_positive_int(value, flag)
    check_positive_number(args.timeout, "--timeout", allow_none=True)
    _check_seq_len_and_seed(args.seq_len, args.seed)
    _check_study_flags(args.storage, args.study_name)
    out = _check_optional_out(args.out, args.overwrite)
    _check_single_process("search", "run it without torchrun")
    _check_hardware(args)
    built = _check_model(args)
    storage, n_done = _open_storage(args.storage, args.study_name) if args.storage is not None else (None, 0)
    return SearchJob(built, storage, n_done, out)


def _check_study_flags(storage: str | None, study_name: str | None) -> None:
    """--storage and --study-name go together: a kept study is found again by its name."""
    if storage is not None and not storage.strip():
        raise ValueError("--storage must be a database URL such as sqlite:///search.db")
    if study_name is not None and not study_name.strip():
        raise ValueError("--study-name must not be empty; pass a name such as --study-name tiny-gpt")
    if storage is not None and study_name is None:
        raise ValueError(
            "--storage needs --study-name NAME too: the study to create, or to resume after a crash; "
            "e.g. --study-name my-search"
        )
    if storage is None and study_name is not None:
        raise ValueError(
            "--study-name names a study kept in --storage, and without --storage the study lives in memory; "
            "pass --storage sqlite:///search.db too, or drop --study-name"
        )


def _open_storage(url: str, study_name: str) -> tuple[Any, int]:
    """Open the optuna storage; return it and the finished trials its study ``study_name`` already holds."""
    from utils.tier3_hyperparameter_search import import_optuna

    optuna = import_optuna()
    try:
        storage = optuna.storages.get_storage(url)
    except Exception as err:  # SQLAlchemy's errors for a bad URL, driver or folder share no base class with ours
        cause = getattr(err, "orig", None) or err  # the database's own words, without SQLAlchemy's wrapping
        why = str(cause).splitlines()[0] if str(cause) else ""
        raise ValueError(
            f"--storage {_shown_url(url)} cannot be opened ({type(err).__name__}: {why}); pass a URL such as "
            "sqlite:///search.db whose folder exists, or leave --storage out to keep the study in memory"
        ) from err
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return storage, 0  # a new study
    if storage.get_study_directions(study_id) != [optuna.study.StudyDirection.MINIMIZE]:
        raise ValueError(
            f"--study-name {study_name!r}: that study in --storage maximises its objective, so it is not a search "
            "of this tool's; pick another --study-name"
        )
    return storage, sum(t.state.is_finished() for t in storage.get_all_trials(study_id, deepcopy=False))


def _shown_url(url: str) -> str:
    """A storage URL fit to print or keep in a report: its password, if any, masked."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can read; it carries no password it could find either
        return url


def _run_search(args: argparse.Namespace, job: SearchJob) -> int:
    """Run the trials, print the best settings, and write the report folder when --out asks for one."""
    from utils.tier3_hyperparameter_search import test_hyperparameter_search

    _say_search_plan(args, job)
    search = test_hyperparameter_search(
        lambda: job.built.build()[0],  # a new model per trial, from the file imported once
        job.built.config,
        n_trials=args.trials,
        n_epochs=args.epochs,
        max_steps_per_trial=args.max_steps_per_trial,
        seed=args.seed,
        pruner=args.pruner,
        timeout_s=args.timeout,
        storage=job.storage,
        study_name=args.study_name,
        device=args.device,
        precision=args.precision,
        progress=not args.no_progress,
        use_amp=args.precision == "auto",  # auto means mixed precision where the hardware has it, as elsewhere
        seq_len=args.seq_len,
        compile=args.compile,
    )
    section = _search_section(search, args)
    _print_rows(section["summary"])
    _write_section_report(job.out, "utils search", job.built.label, section, args.overwrite)
    return 0 if search["best_value"] is not None else _nothing_completed(search["trials"])


def _say_search_plan(args: argparse.Namespace, job: SearchJob) -> None:
    """What the search will do, and, for a kept study, how much of it is done."""
    budget = f"up to {args.epochs} epochs / {args.max_steps_per_trial} steps each"
    print(
        f"utils {__version__} search: {job.built.label}, {args.trials} trials of {budget}, device={args.device}, "
        f"precision={args.precision}",
        flush=True,
    )
    if job.storage is not None:
        to_run = max(0, args.trials - job.n_done)
        print(
            f"study {args.study_name!r} in {_shown_url(args.storage)}: {job.n_done} finished trial(s) kept, "
            f"{to_run} to run" + ("" if to_run else f"; pass --trials > {job.n_done} to run more"),
            flush=True,
        )


def _search_section(search: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """A report section from ``test_hyperparameter_search``'s results: the trials table, the figure, the best."""
    trials = search["trials"]
    keep = ("best_params", "best_value", "best_trial", "n_pruned", "n_failed", "timed_out", "importances")
    settings = {k: getattr(args, k) for k in ("epochs", "max_steps_per_trial", "pruner", "seed", "device")}
    results = {k: search[k] for k in keep} | {
        "n_trials": len(trials),
        "parameters": search["parameters"],
        "storage": _shown_url(args.storage) if args.storage is not None else None,
        "study_name": args.study_name,
        "settings": settings | {"precision": args.precision},
    }
    n_completed = int((trials["state"] == "COMPLETE").sum())
    counts = f"{n_completed} completed, {search['n_pruned']} pruned, {search['n_failed']} failed"
    best = search["best_value"]
    rows = [
        ("trials", f"{len(trials)}: {counts}" + (" (stopped by --timeout)" if search["timed_out"] else "")),
        ("best val/loss", f"{best:.4f} (trial {search['best_trial']})" if best is not None else "none completed"),
        *((f"best {name}", _format_param(value)) for name, value in (search["best_params"] or {}).items()),
    ]
    return {
        "results": {"search": results},
        "figures": {"search": search["figure"]},
        "tables": {"trials": trials},
        "summary": rows,
    }


def _format_param(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _nothing_completed(trials: Any) -> int:
    """1, with the reasons: a search that completed no trial has no best settings for a script to use."""
    reasons = sorted(set(trials["fail_reason"].dropna()))[:3]
    why = f"; failure reasons: {' | '.join(reasons)}" if reasons else ""
    print(f"error: no trial completed, so there are no best settings{why} (see the trials table)", file=sys.stderr)
    return 1


# -- python -m utils compare ------------------------------------------------------


@dataclass(frozen=True)
class CompareJob:
    """What the ``compare`` checks built before any work."""

    built: BuiltModel
    profile: RunProfile
    out: Path | None


def build_compare_parser() -> argparse.ArgumentParser:
    """The ``python -m utils compare`` parser."""
    from utils.tier3_benchmark_comparison import DEFAULT_TRAIN_STEPS

    parser = argparse.ArgumentParser(
        prog="python -m utils compare",
        description="Is your design better than a standard transformer of the same size? Trains your model and "
        "the built-in GPT sized to its parameter count the same way (same corpus, steps, seed, batch and "
        "precision), then compares loss, accuracy, speed and memory, with a one-line verdict.",
    )
    _add_model_options(parser)
    group = parser.add_argument_group("the comparison")
    group.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_TRAIN_STEPS,
        metavar="N",
        help="optimizer steps for each model (default: %(default)s)",
    )
    _add_profile_flags(group, ("batch_size", "learning_rate"))
    _add_seq_len_option(group)
    _add_seed_option(group)
    _add_report_options(parser)
    return parser


def compare_main(argv: list[str]) -> int:
    """``python -m utils compare``: compare the model with the baseline GPT, print the table and the verdict.

    Example:
        >>> compare_main(["--model", "my_model.py:MyTransformer", "--steps", "300", "--out", "reports/compare"])
    """
    parser = build_compare_parser()
    args, job = _parse_and_check(parser, argv, check_compare_args)
    return _run_compare(args, job)


def check_compare_args(args: argparse.Namespace) -> CompareJob:
    """Check every ``compare`` flag and build the model; nothing is written.

    Raises:
        ValueError, TypeError, FileNotFoundError: naming the flag and the fix.
    """
    profile = _profile_from_args(args)
    check_positive_int(args.steps, "--steps")
    _check_seq_len_and_seed(args.seq_len, args.seed)
    out = _check_optional_out(args.out, args.overwrite)
    _check_single_process("compare", "run it without torchrun")
    _check_hardware(args)
    return CompareJob(_check_model(args), profile, out)


def _run_compare(args: argparse.Namespace, job: CompareJob) -> int:
    """Train both models, print the comparison table, its notes and the verdict, and write the report."""
    from utils.tier3_benchmark_comparison import DEFAULT_N_SAMPLES, test_benchmark_comparison

    print(
        f"utils {__version__} compare: {job.built.label} against the built-in GPT of its size, {args.steps} "
        f"steps each, device={args.device}, precision={args.precision}",
        flush=True,
    )
    options = _comparison_options(job.built.config, args, job.profile, args.steps, DEFAULT_N_SAMPLES)
    c = test_benchmark_comparison(job.built.model, job.built.config, **options)
    section = _comparison_section(c)
    if c["status"] == "ok":
        print()
        print(report.markdown_table(c["summary"].to_dict("records"), ["metric", "yours", "baseline", "ratio", "note"]))
    for note in c["notes"]:
        print(f"note: {note}")
    print(f"verdict: {c['verdict']}")
    _write_section_report(
        job.out,
        "utils compare",
        job.built.label,
        {**section, "results": {"comparison": section["results"]}},
        args.overwrite,
    )
    return 0


# -- python -m utils wizard -------------------------------------------------------

DEFAULT_CONFIG_FILE = "wizard_config.json"
MAX_ANSWERS = 3  # a question about the settings file is asked again after a bad answer, at most this many times


@dataclass(frozen=True)
class WizardJob:
    """What the ``wizard`` checks built before any work."""

    built: BuiltModel
    overrides: dict[str, Any]  # WizardConfig fields over the preset's, from --set and --seq-len
    config_out: Path | None
    asks: bool  # stdin is a terminal and --no-input was not given: someone can answer


def build_wizard_parser() -> argparse.ArgumentParser:
    """The ``python -m utils wizard`` parser."""
    from utils.ui.presets import PRESETS

    parser = argparse.ArgumentParser(
        prog="python -m utils wizard",
        description="Choose the training settings from a preset in five checked steps (data, tokenizer, model, "
        "settings, and a summary with a time measured on this machine). In a terminal it asks each setting "
        "(Enter keeps it); then it writes the settings to a file and offers to start "
        "python -m utils train --config FILE. Without a terminal it asks nothing.",
    )
    group = parser.add_argument_group("the model and the settings")
    _add_model_option(group)
    _add_seq_len_option(group, "the preset's; a model file without a config gets it as max_seq_len")
    group.add_argument(
        "--preset", default="tiny", choices=list(PRESETS), help="settings to start from (default: %(default)s)"
    )
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change one setting of the preset, as the terminal questions read it, e.g. --set n_epochs=2 "
        "--set max_steps=50 (repeatable)",
    )
    group.add_argument("--no-input", action="store_true", help="ask nothing, even in a terminal")
    group = parser.add_argument_group("the settings file")
    group.add_argument(
        "--config-out",
        metavar="FILE",
        help=f"write the settings there (default: in a terminal, ask where, offering {DEFAULT_CONFIG_FILE}; "
        "otherwise write no file)",
    )
    group.add_argument("--overwrite", action="store_true", help="replace an existing --config-out file")
    return parser


def wizard_main(argv: list[str]) -> int:
    """``python -m utils wizard``: the setup wizard, its settings file, and on request the training.

    In a terminal it asks the settings, then where to write them and whether to start training;
    without one (a pipe, CI) it asks nothing, writes the file only when ``--config-out`` names it,
    and never starts training.

    Returns:
        0; 1 when the answers left problems (nothing is written); or the training's exit status.

    Example:
        >>> wizard_main(["--preset", "tiny", "--set", "n_epochs=2", "--config-out", "tiny.json", "--no-input"])
    """
    parser = build_wizard_parser()
    args, job = _parse_and_check(parser, argv, check_wizard_args)
    return _run_wizard(args, job)


def check_wizard_args(args: argparse.Namespace) -> WizardJob:
    """Check every ``wizard`` flag and build the model; without anyone to ask, the settings must fit it too.

    Raises:
        ValueError, TypeError, FileNotFoundError: naming the flag and the fix.
    """
    from utils.ui.presets import ConfigPresets
    from utils.ui.setup_wizard import interaction_mode

    _check_seq_len(args.seq_len)
    overrides = _parse_settings(args.set)
    if args.seq_len is not None:
        overrides.setdefault("seq_len", args.seq_len)
    config_out = _check_config_out(args.config_out, args.overwrite) if args.config_out is not None else None
    built = _check_model(args)
    asks = not args.no_input and interaction_mode(None) == "terminal"
    if not asks:  # nobody can fix a problem by answering, so it is the flags'
        problems = ConfigPresets.customize(args.preset, **overrides).validate(built.model, built.config)
        if problems:
            changed = [flag for flag, given in (("--set", args.set), ("--seq-len", args.seq_len)) if given]
            raise ValueError(
                f"--preset {args.preset}{' with ' + ' and '.join(changed) if changed else ''} does not fit the model: "
                f"{'; '.join(problems)}; change those settings with --set FIELD=VALUE"
            )
    return WizardJob(built, overrides, config_out, asks)


def _parse_settings(items: list[str]) -> dict[str, Any]:
    """--set FIELD=VALUE, each value read as the terminal questions read an answer."""
    from utils.ui import terminal

    fields = terminal.editable_fields()
    settings = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name.strip() not in fields:
            raise ValueError(f"--set {item!r} must be FIELD=VALUE with FIELD one of: {', '.join(fields)}")
        with _naming("--set"):
            settings[name.strip()] = terminal.parse_answer(name.strip(), text)
    return settings


def _check_config_out(text: str, overwrite: bool, name: str = "--config-out") -> Path:
    """A settings file to write: not a folder, not an existing file unless ``overwrite``, in a writable place."""
    check_path(text, name)
    path = Path(text)
    if path.is_dir():
        raise ValueError(f"{name} {path} is a folder; pass a file path such as {path / DEFAULT_CONFIG_FILE}")
    if path.exists() and not overwrite:
        raise ValueError(f"{name} {path} already exists; pass --overwrite to replace it, or another path")
    check_writable(path.resolve().parent, name, path)  # a real write: permission bits miss root and special mounts
    return path


def _run_wizard(args: argparse.Namespace, job: WizardJob) -> int:
    """Walk the wizard, write its settings file, and start training when the person at the terminal says so."""
    from utils.ui.setup_wizard import SetupWizard

    print(f"utils {__version__} wizard: {job.built.label}, preset {args.preset}", flush=True)
    try:
        settings = SetupWizard().run(
            job.built.model, job.built.config, preset=args.preset, interactive=job.asks, **job.overrides
        )
    except ValueError as err:  # problems the answers left: nothing is written
        print(f"error: {err}\nNo settings file written; run the wizard again.", file=sys.stderr)
        return 1
    path = job.config_out or (_ask_config_path() if job.asks else None)
    if path is None:
        why = "" if job.asks else " (no terminal to ask in; pass --config-out FILE to write one)"
        print(f"No settings file written{why}.")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    settings.save(path)
    train_argv = ["train", "--config", str(path), *(["--model", args.model] if args.model else [])]
    command = shlex.join(["python", "-m", "utils", *train_argv])
    print(f"Settings written to {path}; to train with them: {command}")
    if job.asks and _ask_yes_no("start training now? [y/N]: "):
        return train_main(train_argv[1:])
    return 0


def _ask_config_path() -> Path | None:
    """Ask where to write the settings (Enter: the default file; 'none': no file); a bad path is asked again."""
    for _ in range(MAX_ANSWERS):
        answer = _answer(f"settings file [{DEFAULT_CONFIG_FILE}] ('none': no file): ")
        if answer is None or answer.lower() == "none":
            return None
        text = answer or DEFAULT_CONFIG_FILE
        if Path(text).is_file() and not _ask_yes_no(f"{text} exists; replace it? [y/N]: "):
            print("  kept it; type another path")
            continue
        try:
            return _check_config_out(text, overwrite=True, name="settings file")
        except ValueError as err:
            print(f"  {err}")
    return None


def _ask_yes_no(prompt: str) -> bool:
    """True only for 'y' or 'yes': Enter, anything else and the end of input mean no."""
    answer = _answer(prompt)
    return answer is not None and answer.lower() in ("y", "yes")


def _answer(prompt: str) -> str | None:
    """One answer, stripped; None when input has ended (Ctrl-D, a closed stdin): never wait for more."""
    try:
        return input(prompt).strip()
    except EOFError:
        print()
        return None


# The subcommands main() runs: the first argument -> its entry point.
SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": train_main,
    "search": search_main,
    "compare": compare_main,
    "wizard": wizard_main,
}
