"""Shared pieces of the benchmark scripts: model shapes, options, the environment record and output.

Every script in ``benchmarks/`` builds its model from ``SHAPES``, takes the
same core options (``add_common_options``), prints markdown tables, checks its
``Target``s, and writes one JSON file holding ``environment_record()`` next to
its results.

Run the scripts as modules from the repository root, so that ``utils`` and
``benchmarks`` import without installing anything::

    python -m benchmarks.amp_sweep --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import operator
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from utils import records
from utils.device import resolve_device
from utils.models import ModelConfig, TinyTransformer, tiny_gpt
from utils.training.amp_benchmark import TARGET_MAX_ACCURACY_DIFF, TARGET_MEMORY_REDUCTION_PCT
from utils.training.data import load_stdlib_corpus
from utils.training.loop import TrainingSettings

REPO_ROOT = Path(__file__).resolve().parents[1]

# prepare_lm_data holds out this share of the built-in corpus for validation.
VALIDATION_FRACTION = 0.1


# -- model shapes ----------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One model size to benchmark: a ``tiny_gpt`` configuration and its default batch sizes.

    The batch sizes are sequences per optimizer step: ``gpu_batch_size`` fills
    an 80 GB GPU comfortably in strict FP32; ``cpu_batch_size`` keeps a 2-core
    CPU run short.
    """

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    seq_len: int
    vocab_size: int
    gpu_batch_size: int
    cpu_batch_size: int

    def default_batch_size(self, device: torch.device) -> int:
        return self.gpu_batch_size if device.type == "cuda" else self.cpu_batch_size

    def describe(self) -> str:
        return (
            f"{self.n_layers} layers x {self.d_model} wide, {self.n_heads} heads, "
            f"seq {self.seq_len}, vocab {self.vocab_size}"
        )


# tiny: the library's default tiny_gpt. gpt2-small: GPT-2 small's shape with the
# vocabulary padded to 50304 (a multiple of 128, as in nanoGPT), 124M parameters.
# small and medium sit between them and share GPT-2's vocabulary, so the LM
# head weighs in as it does at full size. The built-in corpus is bytes, so
# only ids 0..255 ever occur; the larger vocabulary changes compute, not data.
# The first four fields are name, n_layers, d_model, n_heads.
SHAPES: dict[str, Shape] = {
    shape.name: shape
    for shape in (
        Shape("tiny", 4, 128, 4, seq_len=128, vocab_size=256, gpu_batch_size=64, cpu_batch_size=8),
        Shape("small", 6, 384, 6, seq_len=256, vocab_size=50304, gpu_batch_size=32, cpu_batch_size=4),
        Shape("medium", 8, 512, 8, seq_len=512, vocab_size=50304, gpu_batch_size=16, cpu_batch_size=2),
        Shape("gpt2-small", 12, 768, 12, seq_len=1024, vocab_size=50304, gpu_batch_size=16, cpu_batch_size=1),
    )
}

# The shape-override options and the Shape field each one replaces.
SHAPE_OVERRIDES = ("n_layers", "d_model", "n_heads", "seq_len", "vocab_size")


def build_model(shape: Shape, seed: int = 0) -> tuple[TinyTransformer, ModelConfig]:
    """A ``tiny_gpt`` of this shape, with weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return tiny_gpt(
        vocab_size=shape.vocab_size,
        max_seq_len=shape.seq_len,
        d_model=shape.d_model,
        n_layers=shape.n_layers,
        n_heads=shape.n_heads,
    )


def is_preset(shape: Shape, name: str) -> bool:
    """True when ``shape`` is the preset ``name`` with nothing overridden."""
    return shape == SHAPES[name]


# -- command line ----------------------------------------------------------------


def make_parser(module: str, description: str | None) -> argparse.ArgumentParser:
    """A parser for ``python -m <module>``, with the script's docstring, as written, for its help."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_common_options(
    parser: argparse.ArgumentParser, *, default_out: str, default_steps: int, several_shapes: bool
) -> None:
    """The options every script takes: device, threads, output, shape(s), steps, batch and shape overrides."""
    parser.add_argument("--device", default="auto", help="'auto' (CUDA if present), 'cpu' or 'cuda'")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (fewer threads, less noise)")
    parser.add_argument(
        "--malloc",
        choices=["steady", "default"],
        default="steady",
        help="glibc heap: 'steady' keeps it from trimming and mmapping mid-run (less noise on CPU), or 'default'",
    )
    parser.add_argument("--out", type=Path, default=Path(default_out), help="JSON file to write")
    if several_shapes:
        shapes_help = "model shapes (default: all on CUDA, tiny on CPU)"
        parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=None, help=shapes_help)
    else:
        shape_help = "model shape (default: gpt2-small on CUDA, tiny on CPU)"
        parser.add_argument("--shape", choices=list(SHAPES), default=None, help=shape_help)
    parser.add_argument("--steps", type=int, default=default_steps, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: per shape)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, data order and every RNG")
    overrides = parser.add_argument_group("shape overrides", "replace one size of every chosen shape (smoke tests)")
    for field in SHAPE_OVERRIDES:
        overrides.add_argument(f"--{field.replace('_', '-')}", type=int, default=None)


def setup_device(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and resolve ``--device``; a bad value ends the script with the reason."""
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    MALLOC_STATE["steady"] = args.malloc == "steady" and steady_malloc()
    try:
        return resolve_device(args.device)
    except ValueError as err:
        raise SystemExit(f"--device: {err}") from err


# Whether this process runs with steady_malloc's settings; recorded in every JSON.
MALLOC_STATE = {"steady": False}


def steady_malloc() -> bool:
    """Keep glibc's heap from being trimmed and from mmapping large blocks for the rest of the process.

    On CPU, glibc returns freed heap to the system and maps large blocks afresh,
    so a step may pay page faults its twin did not; measured here, that swung
    both the bare loop and the library's loop by 0.1 to 1.8 ms per step, run to
    run, more than the loop's own cost. Both arms of a comparison run in this
    process, so both get the same, steadier heap. Returns False where glibc's
    ``mallopt`` is not available (other C libraries), and nothing changes.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # glibc's <malloc.h> parameter numbers
    settings = ((m_trim_threshold, 2**30), (m_top_pad, 2**28), (m_mmap_threshold, 2**25))  # mmap's maximum: 32 MiB
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


def chosen_shape(args: argparse.Namespace, device: torch.device) -> Shape:
    """``--shape`` (default: gpt2-small on CUDA, tiny on CPU), with any size overrides applied."""
    name = args.shape or ("gpt2-small" if device.type == "cuda" else "tiny")
    return apply_overrides(SHAPES[name], args)


def chosen_shapes(args: argparse.Namespace, device: torch.device) -> list[Shape]:
    """``--shapes`` (default: all on CUDA, tiny on CPU), with any size overrides applied."""
    names = args.shapes or (list(SHAPES) if device.type == "cuda" else ["tiny"])
    return [apply_overrides(SHAPES[name], args) for name in names]


def apply_overrides(shape: Shape, args: argparse.Namespace) -> Shape:
    """``shape`` with the sizes given by ``--n-layers`` and friends; renamed '<name>-custom' if any."""
    overrides = {field: getattr(args, field) for field in SHAPE_OVERRIDES if getattr(args, field) is not None}
    if not overrides:
        return shape
    return dataclasses.replace(shape, name=f"{shape.name}-custom", **overrides)


# -- workloads -------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One run's model shape and training settings, resolved from the command line."""

    shape: Shape
    batch_size: int
    steps: int
    learning_rate: float
    seed: int
    device: torch.device
    corpus_bytes: int

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.shape.seq_len

    def training_kwargs(self) -> dict[str, Any]:
        """This workload as training keywords: one epoch of ``steps`` steps, no progress bar.

        They are ``TrainingSettings`` fields and ``test_amp_speedup_benchmark`` keywords alike.
        """
        return {
            "n_epochs": 1,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "device": self.device,
            "max_steps": self.steps,
            "seed": self.seed,
            "seq_len": self.shape.seq_len,
            "max_corpus_bytes": self.corpus_bytes,
            "progress": False,
        }

    def settings(self, **changes: Any) -> TrainingSettings:
        """The engine's ``TrainingSettings`` for this workload, with ``changes`` (other fields) on top.

        Example:
            >>> loop.train(model, config, work.settings(precision="bf16", max_val_batches=1))
        """
        return TrainingSettings(**{**self.training_kwargs(), **changes})

    def describe(self) -> dict[str, Any]:
        """The settings that shape the result, for the JSON."""
        return {
            "shape": dataclasses.asdict(self.shape),
            "batch_size": self.batch_size,
            "tokens_per_step": self.tokens_per_step,
            "steps": self.steps,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
            "corpus_bytes": self.corpus_bytes,
        }


def make_workload(shape: Shape, args: argparse.Namespace, device: torch.device, min_steps: int = 1) -> Workload:
    """Combine a shape with ``--steps``, ``--batch-size`` and friends; bad values end the script."""
    if args.steps < min_steps:
        raise SystemExit(f"--steps must be at least {min_steps}, got {args.steps}")
    batch_size = args.batch_size or shape.default_batch_size(device)
    if batch_size < 1:
        raise SystemExit(f"--batch-size must be at least 1, got {batch_size}")
    return Workload(
        shape=shape,
        batch_size=batch_size,
        steps=args.steps,
        learning_rate=args.learning_rate,
        seed=args.seed,
        device=device,
        corpus_bytes=corpus_bytes_for(args.steps, batch_size, shape.seq_len),
    )


def corpus_bytes_for(steps: int, batch_size: int, seq_len: int) -> int:
    """Built-in corpus bytes for one epoch of ``steps`` full batches, plus one spare batch.

    One epoch means no validation pass and no short last batch inside the
    timed steps (a short batch would also make ``torch.compile`` recompile).
    """
    train_tokens = (steps + 1) * batch_size * seq_len
    needed = math.ceil(train_tokens / (1 - VALIDATION_FRACTION)) + 2 * seq_len
    available = len(load_stdlib_corpus(needed))
    if available < needed:
        raise SystemExit(
            f"{steps} steps of {batch_size} x {seq_len} tokens need {needed:,} bytes of the built-in corpus, "
            f"but this Python's standard library holds {available:,}; lower --steps or --batch-size"
        )
    return needed


# -- the environment record --------------------------------------------------------


def environment_record(device: torch.device) -> dict[str, Any]:
    """What machine and software produced a result, written into every JSON.

    The library's ``utils.records.environment_record`` (one spelling of every
    key) plus what belongs to a benchmark run: when, at which commit, and the
    command line. Its TF32 keys are the process-wide settings when the file is
    written; an arm that sets its own (the AMP benchmark's FP32 arm) records
    them in its report's settings.
    """
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **records.environment_record(device),
        "steady_malloc": MALLOC_STATE["steady"],
        "git_commit": git_commit(),
        "command": command_line(),
    }


def command_line() -> list[str]:
    """How this script was started: ``['-m', 'benchmarks.mfu', '--threads', '1']``, or the script name and options."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    launcher = ["-m", spec.name] if spec is not None else [Path(sys.argv[0]).name]
    return [*launcher, *sys.argv[1:]]


def git_commit() -> str | None:
    """The repository's HEAD commit, with '+dirty' for uncommitted changes; None outside a git checkout."""
    try:
        head = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _git(*args: str) -> str:
    """The stripped output of ``git ARGS`` in the repository; raises when git fails or is missing."""
    proc = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10)
    return proc.stdout.strip()


# -- targets ---------------------------------------------------------------------

_COMPARISONS = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    """A goal from the issue: a measured value compared with a threshold, where the goal applies."""

    name: str
    comparison: str  # one of _COMPARISONS
    threshold: float
    unit: str
    scope: str  # where the goal is stated, in words

    def judge(self, value: float | None, applies: bool, why_not: str = "") -> dict[str, Any]:
        """A JSON-ready verdict: ``met`` is True/False, or None when not judged here (and ``note`` says why)."""
        if not applies:
            met, note = None, why_not or f"the goal is stated for {self.scope}"
        elif value is None:
            met, note = None, "not measured on this device"
        else:
            met, note = bool(_COMPARISONS[self.comparison](value, self.threshold)), ""
        return {
            "target": self.name,
            "comparison": self.comparison,
            "threshold": self.threshold,
            "unit": self.unit,
            "scope": self.scope,
            "value": value,
            "met": met,
            "note": note,
        }


LOOP_OVERHEAD_PCT = Target("test_fine_tuning loop overhead", "<=", 3.0, "%", "CPU and GPU")
AMP_SPEEDUP = Target("bf16 speedup over strict FP32", ">=", 4.0, "x", "an H100 at gpt2-small shape")
AMP_MEMORY_REDUCTION_PCT = Target(
    "peak-memory reduction", ">=", TARGET_MEMORY_REDUCTION_PCT, "%", "a GPU at gpt2-small shape"
)
AMP_ACCURACY_DIFF = Target("validation accuracy difference", "<", TARGET_MAX_ACCURACY_DIFF, "", "every shape")
COMPILED_MFU = Target("MFU (fraction of peak) with torch.compile", ">=", 0.40, "", "an H100 at gpt2-small shape, bf16")


def format_verdicts(verdicts: list[dict[str, Any]]) -> str:
    """One line per target: the goal, the value, and met / NOT met / not judged (why)."""
    lines = []
    for v in verdicts:
        goal = f"{v['target']} {v['comparison']} {v['threshold']:g}{v['unit']}"
        value = format_number(v["value"], ".3g", v["unit"])
        status = {True: "met", False: "NOT met", None: f"not judged ({v['note']})"}[v["met"]]
        lines.append(f"  {goal}: {value} -> {status}")
    return "targets:\n" + "\n".join(lines)


# -- output ----------------------------------------------------------------------


def format_number(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    """A table cell: ``value`` formatted with ``spec`` plus ``suffix``, or '-' when there is no value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec) + suffix


def format_percent(fraction: float | None, spec: str = ".1f") -> str:
    """A fraction (0.42) as a percentage cell ('42.0%'), or '-'."""
    return format_number(None if fraction is None else 100 * fraction, spec, "%")


def write_json(path: Path, benchmark: str, device: torch.device, payload: dict[str, Any]) -> None:
    """Write ``payload`` with the benchmark's name and the environment record; make parent folders."""
    record = {"benchmark": benchmark, "environment": environment_record(device), **payload}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records.to_jsonable(record), indent=2) + "\n")
    print(f"\nwrote {path}")
