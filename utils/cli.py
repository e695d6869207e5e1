"""The main job: ``python -m utils``.

With no arguments it trains the built-in tiny GPT on the Python standard
library's source with mixed precision, runs the AMP speedup benchmark and
the Tier 1 and Tier 2 checks, writes a report folder and prints a summary.
``--model path/to/file.py:ClassName`` runs the same on your model.

Under ``torchrun --nproc_per_node=N -m utils`` it trains with DDP on N
processes and rank 0 writes the report; the AMP benchmark and the tiers,
which are single-device measurements, are left out and the report says so.
``--export DIR`` also exports the fine-tuned model there, checks that it
reloads to the same logits, and puts the export and that check in the report.

``python -m utils train`` trains in a run folder through the training
coordinator instead: it keeps the best epoch's weights, stops early, resumes
a run by name and exports the model (see ``train_main``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import inspect
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn

from utils import __version__, report
from utils.checks import check_int, check_path, check_positive_int, check_positive_number
from utils.folders import check_writable
from utils.model_helpers import detect_vocab_size, get_config_value, resolve_device
from utils.models import tiny_gpt
from utils.training import checkpoint, training_core
from utils.training.amp_utils import resolve_precision
from utils.training.distributed import launched_rank, launched_world_size
from utils.training.export import check_export_target, export_state_dict

DEFAULT_SEQ_LEN = 128  # for a model file that brings no config
# torch.manual_seed takes [-2**63, 2**64); the loop adds the rank and the epoch, so keep the top half free.
SEED_RANGE = (-(2**63), 2**63 - 1)


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


FULL = RunProfile()
QUICK = RunProfile(n_epochs=1, max_steps=30, max_corpus_bytes=40_000, max_val_batches=4, benchmark_steps=12)
# RunProfile field -> the flag that overrides it, and the check its value must pass.
PROFILE_FLAGS = {
    "n_epochs": ("--epochs", check_positive_int),
    "max_steps": ("--max-steps", check_positive_int),
    "batch_size": ("--batch-size", check_positive_int),
    "learning_rate": ("--lr", check_positive_number),
}


@dataclass(frozen=True)
class CheckedInputs:
    """What the checks built before any work: the profile, the report folder and the model."""

    profile: RunProfile
    out: Path
    model: nn.Module
    config: Any
    label: str


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m utils`` parser; each help line states its default once, in its own words."""
    parser = argparse.ArgumentParser(
        prog="python -m utils",
        description="Check, train and benchmark a transformer: the built-in tiny GPT by default, or --model yours.",
        epilog="subcommand:\n  train  train in a run folder: keep the best epoch, stop early, resume a run\n"
        "         by name, export the model (python -m utils train --help)",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the epilog's lines
    )
    parser.add_argument("--version", action="version", version=f"utils {__version__}")
    _add_model_options(parser)
    _add_training_options(parser)
    _add_output_options(parser)
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and hardware")
    group.add_argument(
        "--model",
        metavar="FILE.py:NAME",
        help="your model: a class (built with no arguments, or with the file's `config`) or a function returning "
        "a model or (model, config) (default: the built-in tiny GPT)",
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    group.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="fine-tuning precision; auto picks bf16/fp16 where the hardware has it (default: %(default)s)",
    )
    group.add_argument("--compile", action="store_true", help="train through torch.compile (the first steps compile)")


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
    for flag, kind, text in (
        ("--epochs", int, f"training epochs (default: {_profile_default('n_epochs')})"),
        ("--max-steps", int, f"cap on optimizer steps (default: {_profile_default('max_steps')})"),
        ("--batch-size", int, f"sequences per batch (default: {_profile_default('batch_size')})"),
        ("--lr", float, f"peak learning rate (default: {_profile_default('learning_rate')})"),
    ):
        group.add_argument(flag, type=kind, metavar="N" if kind is int else "LR", help=text)
    group.add_argument(
        "--seq-len",
        type=int,
        metavar="N",
        help="tokens per sequence, at least 2 (default: the model's max_seq_len, "
        f"or {DEFAULT_SEQ_LEN} for a model file without a config)",
    )
    group.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed for weights, data and dropout (default: %(default)s)"
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what runs and where it goes")
    group.add_argument("--no-benchmark", action="store_true", help="skip the FP32 vs AMP benchmark")
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
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _profile_default(field: str) -> str:
    """A profile field's default as help text, with the --quick value where that differs."""
    full, quick = (getattr(profile, field) for profile in (FULL, QUICK))
    text = "no cap" if full is None else f"{full:g}" if isinstance(full, float) else str(full)
    return text if quick == full else f"{text}, or {quick} with --quick"


def main(argv: list[str] | None = None) -> int:
    """Run the main job, or ``train`` when that comes first; a bad argument is a usage error (exit 2) before any work.

    Returns:
        0, or 1 when ``--export`` wrote an export that failed its reload check.

    Example:
        >>> main(["--quick", "--out", "reports/try"])
        >>> main(["train", "--quick", "--run-name", "try", "--export", "exports/try"])
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        return train_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        inputs = check_args(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        parser.error(str(err))
    return _run_job(args, inputs)


def check_args(args: argparse.Namespace) -> CheckedInputs:
    """Check every argument, cheapest first, and build the model; nothing is written.

    Raises:
        ValueError, TypeError, FileNotFoundError: naming the flag and the fix.
    """
    profile = _profile_from_args(args)
    _check_seq_len_and_seed(args.seq_len, args.seed)
    out = _check_paths(args)
    device = _resolve_device(args.device)
    with _naming("--precision"):
        resolve_precision(args.precision, use_amp=args.precision == "auto", device=device)
    model, config, label = load_model(args.model, args.seq_len)
    _check_seq_len_fits(args.seq_len, config, args.model)
    _check_resume(args.resume, model, profile.n_epochs)
    return CheckedInputs(profile, out, model, config, label)


def _run_job(args: argparse.Namespace, inputs: CheckedInputs) -> int:
    """Run the sections; rank 0 writes the report and prints the summary."""
    world_size, is_main = launched_world_size(), launched_rank() == 0
    say = print if is_main else _say_nothing
    say(f"utils {__version__}: {inputs.label}, device={args.device}, precision={args.precision}", flush=True)
    if world_size > 1:
        say(
            f"torchrun with {world_size} processes: DDP fine-tuning only; the AMP benchmark and the "
            "Tier 1/2 checks are single-device measurements, run them without torchrun",
            flush=True,
        )
        args.no_benchmark = args.no_tiers = True
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
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            check(value, flag)
            given[field] = value
    return dataclasses.replace(QUICK if args.quick else FULL, **given)


def _check_seq_len_and_seed(seq_len: int | None, seed: int) -> None:
    """--seq-len needs a token and the next one to predict; --seed must fit torch's generator."""
    if seq_len is not None:
        check_positive_int(seq_len, "--seq-len")
        if seq_len < 2:
            raise ValueError(f"--seq-len must be at least 2 (a token and the next one to predict), got {seq_len}")
    check_int(seed, "--seed")
    low, high = SEED_RANGE
    if not low <= seed <= high:
        raise ValueError(f"--seed must be between {low} and {high}, got {seed}")


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
    if spec is None:
        model, config = tiny_gpt()
        return model, config, "built-in tiny GPT"
    path, name = _parse_model_spec(spec)
    flag = f"--model {spec!r}"
    with _naming(flag, (Exception,)):  # the user's code may raise anything; say where it came from
        module = _import_file(path)
    if not hasattr(module, name):
        raise ValueError(f"{flag}: {path} defines no {name!r}; its classes and functions are {_defined(module)}")
    with _naming(flag, (Exception,)):
        model, config = _instantiate(getattr(module, name), module, flag)
        if config is None:
            config = SimpleNamespace(max_seq_len=seq_len or DEFAULT_SEQ_LEN)
            config.vocab_size = detect_vocab_size(model, config)
    return model, config, f"{name} from {path}"


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
    sections = {"fine_tuning": _run_fine_tuning(model, config, args, profile)}
    if not args.no_benchmark:
        sections["amp_benchmark"] = _run_benchmark(model, config, args, profile)
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
        "stop early, resume a run by name, and export the model with a reload check.",
    )
    _add_model_options(parser)
    _add_budget_options(parser.add_argument_group("training"))
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
    args = parser.parse_args(argv)
    try:
        plan = check_train_args(args, _typed_options(parser, argv))
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        parser.error(str(err))
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
    if launched_world_size() > 1:
        raise ValueError("train runs on one process; for DDP run the main job under torchrun (python -m utils)")
    output_dir = _check_output_dir(args.output_dir)
    run_dir = _check_run_name(args, output_dir)
    export_dir = _check_train_export(args, run_dir or output_dir)
    device = _resolve_device(args.device)
    with _naming("--precision"):
        resolve_precision(args.precision, use_amp=args.precision == "auto", device=device)
    model, config, label = load_model(args.model, args.seq_len)
    _check_seq_len_fits(args.seq_len, config, args.model)
    if args.resume:
        _check_resumable(run_dir, args, typed, model)
    coordinator = training_core.TrainingCoordinator(
        output_dir, args.precision, args.device, args.wandb, progress=not args.no_progress
    )
    return TrainPlan(coordinator, model, config, label, run_dir, export_dir, _train_options(args, profile))


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
