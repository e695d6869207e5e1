"""The main job: ``python -m utils``.

With no arguments it trains the built-in tiny GPT on the Python standard
library's source with mixed precision, runs the AMP speedup benchmark and
the Tier 1 and Tier 2 checks, writes a report folder and prints a summary.
``--model path/to/file.py:ClassName`` runs the same on your model.

Under ``torchrun --nproc_per_node=N -m utils`` it trains with DDP on N
processes and rank 0 writes the report; the AMP benchmark and the tiers,
which are single-device measurements, are left out and the report says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch.nn as nn

from utils import __version__, report
from utils.model_helpers import detect_vocab_size, resolve_device
from utils.models import tiny_gpt
from utils.training import checkpoint
from utils.training.amp_utils import resolve_precision
from utils.training.distributed import launched_rank, launched_world_size


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils",
        description="Check, train and benchmark a transformer: the built-in tiny GPT by default, or --model yours.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", metavar="FILE.py:NAME",
                        help="your model: a class (built with no arguments, or with the file's `config`) "
                             "or a function returning a model or (model, config); default: the built-in tiny GPT")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                        help="fine-tuning precision; auto picks bf16/fp16 where the hardware has it")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: reports/run-<time>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--quick", action="store_true", help="a short run (~30 s on a laptop CPU) to check the wiring")
    parser.add_argument("--epochs", type=int, help="training epochs (default 3, or 1 with --quick)")
    parser.add_argument("--max-steps", type=int, help="cap on optimizer steps")
    parser.add_argument("--batch-size", type=int, help="sequences per batch (default 8)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: the model's max_seq_len)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="train through torch.compile (the first steps compile)")
    parser.add_argument("--checkpoint-dir", type=Path, help="write last.pt there at each epoch end (rank 0)")
    parser.add_argument("--resume", type=Path, metavar="CHECKPOINT", help="continue fine-tuning from a last.pt")
    parser.add_argument("--no-benchmark", action="store_true", help="skip the FP32 vs AMP benchmark")
    parser.add_argument("--no-tiers", action="store_true", help="skip the Tier 1 and Tier 2 checks")
    parser.add_argument("--wandb", action="store_true", help="log to Weights & Biases (offline without an API key)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--version", action="version", version=f"utils {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        profile = _profile_from_args(args)
        out = args.out or Path("reports") / time.strftime("run-%Y%m%d-%H%M%S")
        report.check_report_folder(out, args.overwrite)
        checkpoint.check_checkpoint_dir(args.checkpoint_dir)
        if args.resume is not None and not args.resume.exists():
            raise FileNotFoundError(f"--resume {args.resume}: no such checkpoint file or folder")
        device = resolve_device(args.device)
        resolve_precision(args.precision, use_amp=args.precision == "auto", device=device)
        model, config, label = load_model(args.model, args.seq_len)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        parser.error(str(err))

    world_size, is_main = launched_world_size(), launched_rank() == 0
    say = print if is_main else (lambda *a, **k: None)
    say(f"utils {__version__}: {label}, device={args.device}, precision={args.precision}", flush=True)
    if world_size > 1:
        say(f"torchrun with {world_size} processes: DDP fine-tuning only; the AMP benchmark and the "
            "Tier 1/2 checks are single-device measurements, run them without torchrun", flush=True)  # fmt: skip
        args.no_benchmark = args.no_tiers = True
    sections = _run_all(model, config, args, profile)
    if not is_main:
        return 0  # rank 0 writes the report
    summary_rows = _summary_rows(sections)
    folder = report.write_report(
        out,
        figures={name: fig for name, fig in _collect(sections, "figures").items()},
        tables={name: table for name, table in _collect(sections, "tables").items()},
        results={"model": label, "version": __version__, **{k: s["results"] for k, s in sections.items()}},
        summary_md=_summary_markdown(label, summary_rows),
        overwrite=args.overwrite,
    )
    print()
    print(report.markdown_table(summary_rows, ["section", "metric", "value"]))
    print(f"Report written to {folder}")
    return 0


def _profile_from_args(args: argparse.Namespace) -> RunProfile:
    profile = QUICK if args.quick else FULL
    flags = {"n_epochs": ("--epochs", args.epochs), "max_steps": ("--max-steps", args.max_steps),
             "batch_size": ("--batch-size", args.batch_size), "learning_rate": ("--lr", args.lr)}  # fmt: skip
    for flag, value in flags.values():
        if value is not None and not value > 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    return dataclasses.replace(profile, **{field: v for field, (_, v) in flags.items() if v is not None})


def load_model(spec: str | None, seq_len: int | None = None) -> tuple[nn.Module, Any, str]:
    """Build the model named by ``--model FILE.py:NAME`` (or the built-in tiny GPT).

    Returns:
        (model, config, label). When the file defines no config, one is made
        from the model: ``vocab_size`` from its output width and
        ``max_seq_len`` from ``--seq-len`` (default 128).
    """
    if spec is None:
        model, config = tiny_gpt()
        return model, config, "built-in tiny GPT"
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text.endswith(".py") or not name.isidentifier():
        raise ValueError(f"--model {spec!r} must look like path/to/file.py:ClassName")
    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"--model: no file at {path}")
    module = _import_file(path)
    if not hasattr(module, name):
        raise ValueError(f"--model: {path} defines no {name!r}; it has {sorted(n for n in vars(module) if not n.startswith('_'))}")
    model, config = _instantiate(getattr(module, name), module, spec)
    if config is None:
        config = SimpleNamespace(max_seq_len=seq_len or 128)
        config.vocab_size = detect_vocab_size(model, config)
    return model, config, f"{name} from {path}"


def _import_file(path: Path) -> Any:
    module_spec = importlib.util.spec_from_file_location(f"user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses and pickling look modules up here
    module_spec.loader.exec_module(module)
    return module


def _instantiate(obj: Any, module: Any, spec: str) -> tuple[nn.Module, Any]:
    file_config = getattr(module, "config", None) or getattr(module, "CONFIG", None)
    if inspect.isclass(obj):
        takes_config = "config" in inspect.signature(obj).parameters
        model = obj(file_config) if takes_config and file_config is not None else obj()
        config = file_config
    elif callable(obj):
        built = obj()
        model, config = built if isinstance(built, tuple) else (built, file_config)
    else:
        raise TypeError(f"--model {spec!r} names a {type(obj).__name__}, not a class or function")
    if not isinstance(model, nn.Module):
        raise TypeError(f"--model {spec!r} built a {type(model).__name__}, not a torch.nn.Module")
    return model, config if config is not None else getattr(model, "config", None)


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
        model, config, n_epochs=profile.n_epochs, learning_rate=profile.learning_rate,
        batch_size=profile.batch_size, use_wandb=args.wandb, use_amp=args.precision == "auto",
        precision=args.precision, device=args.device, max_steps=profile.max_steps, seed=args.seed,
        seq_len=args.seq_len, max_corpus_bytes=profile.max_corpus_bytes,
        max_val_batches=profile.max_val_batches, progress=not args.no_progress, compile=args.compile,
        checkpoint_dir=args.checkpoint_dir, resume_from=args.resume,
    )  # fmt: skip
    keep = ("precision", "precision_reason", "device", "world_size", "compiled", "optimizer_steps", "initial_loss",
            "final_loss", "val_loss", "val_accuracy", "best_epoch", "training_time_seconds", "samples_per_second",
            "tokens_per_second", "mfu", "throughput", "skipped_steps", "final_loss_scale", "parameters",
            "data_source", "checkpoint_path", "loss_history")  # fmt: skip
    throughput = r["throughput"]
    return {
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


def _run_benchmark(model: nn.Module, config: Any, args: argparse.Namespace, profile: RunProfile) -> dict:
    from utils.training import amp_benchmark

    b = amp_benchmark.test_amp_speedup_benchmark(
        model, config, n_epochs=1, learning_rate=profile.learning_rate, batch_size=profile.batch_size,
        use_wandb=args.wandb, precision=args.precision if args.precision in ("fp16", "bf16") else "auto",
        device=args.device, max_steps=profile.benchmark_steps, seed=args.seed, seq_len=args.seq_len,
        max_corpus_bytes=profile.max_corpus_bytes, max_val_batches=profile.max_val_batches,
        progress=not args.no_progress, compile=args.compile,
    )  # fmt: skip
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
            "summary": [(row["test"], f"{row['status']}: {row.get('key_figure', '')}") for row in table.to_dict("records")],
        }
    return sections


def _collect(sections: dict[str, dict], key: str) -> dict[str, Any]:
    return {name: item for section in sections.values() for name, item in section[key].items()}


def _summary_rows(sections: dict[str, dict]) -> list[dict[str, Any]]:
    return [{"section": name, "metric": metric, "value": value}
            for name, section in sections.items() for metric, value in section["summary"]]  # fmt: skip


def _summary_markdown(label: str, rows: list[dict[str, Any]]) -> str:
    return f"# utils report: {label}\n\n" + report.markdown_table(rows, ["section", "metric", "value"])


def _format(value: float | None, spec: str) -> str:
    return spec.format(value) if value is not None else "n/a"
