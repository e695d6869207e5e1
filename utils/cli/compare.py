"""``python -m utils compare``: the model against a standard GPT of the same size; the main job's comparison too."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils import __version__, report
from utils.checks import check_positive_int
from utils.cli.common import (
    RunProfile,
    _add_model_options,
    _add_profile_flags,
    _add_report_options,
    _add_seed_option,
    _add_seq_len_option,
    _check_hardware,
    _check_seq_len_and_seed,
    _check_single_process,
    _parse_and_check,
    _profile_from_args,
)
from utils.cli.model_loading import BuiltModel, _check_model
from utils.cli.reporting import _check_optional_out, _format, _write_section_report
from utils.model_helpers import get_config_value
from utils.training.data import ByteTokenizer, prepare_lm_data
from utils.training.settings import amp_by_default


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


def _comparison_options(
    config: Any, args: argparse.Namespace, profile: RunProfile, steps: int, samples: int
) -> dict[str, Any]:
    """``test_benchmark_comparison`` keywords: the flags, the profile's batch and data, and ``steps`` per model."""
    seq_len = args.seq_len or get_config_value(config, "max_seq_len")
    held_out = _held_out_sequences(
        seq_len, profile.max_corpus_bytes, args.tokenizer, get_config_value(config, "vocab_size")
    )
    return dict(
        n_samples=min(samples, held_out),
        train_steps=steps,
        precision=args.precision,
        use_amp=amp_by_default(None, args.precision),
        device=args.device,
        seed=args.seed,
        progress=not args.no_progress,
        learning_rate=profile.learning_rate,
        batch_size=profile.batch_size,
        seq_len=args.seq_len,
        max_corpus_bytes=profile.max_corpus_bytes,
        compile=args.compile,
        tokenizer=args.tokenizer,
    )


def _held_out_sequences(seq_len: int, max_corpus_bytes: int, tokenizer: Any = "bytes", vocab_size: int = 256) -> int:
    """Sequences of ``seq_len`` in the built-in corpus's held-out tail: the comparison can score no more."""
    vocab_size = vocab_size if tokenizer != "bytes" else ByteTokenizer.vocab_size
    data = prepare_lm_data(
        None, None, vocab_size=vocab_size, seq_len=seq_len, max_corpus_bytes=max_corpus_bytes, tokenizer=tokenizer
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
