"""The main job, ``python -m utils``: its flags and checks, and the report sections it runs and writes."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from utils import __version__, report
from utils.checks import check_path
from utils.cli.common import (
    RunProfile,
    _add_budget_options,
    _add_model_options,
    _add_progress_option,
    _add_strategy_options,
    _check_export_dir,
    _check_hardware,
    _check_seq_len_and_seed,
    _profile_from_args,
    _strategy_options,
)
from utils.cli.compare import _comparison_options, _comparison_section
from utils.cli.model_loading import _check_model
from utils.cli.reporting import (
    SAMPLE_PROMPT,
    SAMPLES_BEFORE_AND_AFTER,
    _exit_status,
    _export_model,
    _export_rows,
    _format,
    _text_rows,
)
from utils.training import checkpoint
from utils.training.distributed import launched_rank, launched_world_size
from utils.training.settings import amp_by_default

# What the report keeps of test_fine_tuning's results.
FINE_TUNING_KEPT = (
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
    "tokenizer",
    "samples",
)


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
        epilog="subcommands (python -m utils SUBCOMMAND --help):\n"
        "  train    train in a run folder: keep the best epoch, stop early, resume a run\n"
        "           by name, export the model; --config FILE takes a wizard's settings\n"
        "  search   search the training settings with optuna (--trials N, --storage URL)\n"
        "  compare  compare the model with a standard GPT of the same size\n"
        "  wizard   choose the training settings in a terminal and write them to a file\n"
        "  generate let a trained model (a run folder or an export) continue a prompt",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the epilog's lines
    )
    parser.add_argument("--version", action="version", version=f"utils {__version__}")
    _add_model_options(parser)
    _add_strategy_options(parser)
    _add_training_options(parser)
    _add_output_options(parser)
    return parser


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    """The main job's 'training' group: the budget flags, --checkpoint-dir and --resume."""
    group = parser.add_argument_group("training")
    _add_budget_options(group)
    group.add_argument(
        "--checkpoint-dir", metavar="DIR", help="write last.pt there at each epoch end (rank 0); made if missing"
    )
    group.add_argument("--resume", metavar="CHECKPOINT", help="continue fine-tuning from a last.pt (or its folder)")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """The main job's sections to skip, its report folder, the export, W&B and progress bars."""
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
    _check_resume(args.resume, built.model, profile.n_epochs, profile.max_steps)
    return CheckedInputs(profile, out, built.model, built.config, built.label)


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


def _check_apart(path: Path, flag: str, other: Path, other_flag: str) -> None:
    """Neither folder may be, or hold, the other: each is written, or replaced, as a whole."""
    mine, theirs = path.resolve(), other.resolve()
    if mine == theirs or mine in theirs.parents or theirs in mine.parents:
        raise ValueError(
            f"{flag} {path} and {other_flag} {other} overlap, and writing one as a whole folder would replace "
            f"or fill the other; keep them side by side, e.g. {flag} {other.parent / (other.name + '-export')}"
        )


def _check_resume(resume: str | None, model: nn.Module, n_epochs: int, max_steps: int | None) -> None:
    """Read --resume once before any work: a checkpoint of this model, with an epoch (and a step) left to train."""
    if resume is not None:
        checkpoint.load_for_resume(
            resume,
            model,
            n_epochs,
            max_steps=max_steps,
            name="--resume",
            epochs_name="--epochs",
            steps_name="--max-steps",
        )


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
    """The fine-tuning section, on the profile's budget; rank 0 also exports the model when --export asks."""
    r = _fine_tune(model, config, args, profile)
    section = _fine_tuning_section(r)
    if args.export is not None and launched_rank() == 0:  # one export, like one report
        record = _export_model({**r, "model": model, "config": config}, Path(args.export), args.overwrite)
        section["results"]["export"] = record
        section["summary"] += _export_rows(record)
    return section


def _fine_tune(model: nn.Module, config: Any, args: argparse.Namespace, profile: RunProfile) -> dict[str, Any]:
    """``test_fine_tuning`` with the flags and the profile's budget."""
    from utils import tier3_training_utilities as tier3

    return tier3.test_fine_tuning(
        model,
        config,
        n_epochs=profile.n_epochs,
        learning_rate=profile.learning_rate,
        batch_size=profile.batch_size,
        use_wandb=args.wandb,
        use_amp=amp_by_default(None, args.precision),
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
        tokenizer=args.tokenizer,
        sample_every=SAMPLES_BEFORE_AND_AFTER,
        sample_prompt=SAMPLE_PROMPT,
        **_strategy_options(args),
    )


def _fine_tuning_section(r: dict[str, Any]) -> dict:
    """A report section from ``test_fine_tuning``'s results: what the report keeps, the curves, the tables."""
    throughput = r["throughput"]
    return {
        "results": {k: r[k] for k in FINE_TUNING_KEPT},
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
            *_text_rows(r),
        ],
    }


def _run_benchmark(model: nn.Module, config: Any, args: argparse.Namespace, profile: RunProfile) -> dict:
    """The FP32 vs AMP benchmark section, on the profile's benchmark budget."""
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
        tokenizer=args.tokenizer,
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
    """Every section's ``key`` items (figures or tables) in one dict."""
    return {name: item for section in sections.values() for name, item in section[key].items()}


def _summary_rows(sections: dict[str, dict]) -> list[dict[str, Any]]:
    """The sections' (metric, value) pairs as rows of the summary table."""
    return [
        {"section": name, "metric": metric, "value": value}
        for name, section in sections.items()
        for metric, value in section["summary"]
    ]


def _summary_markdown(label: str, rows: list[dict[str, Any]]) -> str:
    """The report's summary.md: a title and the summary table."""
    return f"# utils report: {label}\n\n" + report.markdown_table(rows, ["section", "metric", "value"])
