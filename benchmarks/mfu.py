"""Model FLOPs utilisation of the training engine's loop, eager and through torch.compile.

For one shape, the engine (``utils.training.loop.train``, beneath
``test_fine_tuning``) trains with ``use_amp=True`` (bf16 where the device has
it natively) from the same weights and data, once eagerly and once with
``compile=`` (``--compile on|off|both``). Each run reports
steady-state tokens/s (the library leaves the first steps, which hold the
compilation, out), achieved TFLOP/s per device from the 6N + 12LTd count,
the datasheet peak, MFU (empty on CPU, which has no datasheet peak), the
median step time, the first step's time and the CUDA peak memory.

    python -m benchmarks.mfu --threads 1 --compile off              # CPU, tiny shape
    python -m benchmarks.mfu --device cuda                          # GPU, gpt2-small, eager and compiled

Target: MFU >= 40% with torch.compile at gpt2-small on an H100. Prints a table
and writes JSON (``--out``, default mfu.json).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

from benchmarks.common import (
    COMPILED_MFU,
    Workload,
    add_common_options,
    build_model,
    chosen_shape,
    format_number,
    format_percent,
    format_verdicts,
    is_preset,
    make_parser,
    make_workload,
    setup_device,
    write_json,
)
from utils.device import peak_memory_mb, reset_peak_memory
from utils.report import markdown_table
from utils.training import loop

MODES = {"off": ["eager"], "on": ["compiled"], "both": ["eager", "compiled"]}
TABLE_COLUMNS = [
    "mode",
    "precision",
    "ms/step (median)",
    "first step ms",
    "tokens/s",
    "achieved TFLOP/s",
    "peak TFLOP/s",
    "MFU",
    "peak MB",
]


def compile_options(args: argparse.Namespace) -> dict[str, Any]:
    """``torch.compile`` keyword arguments from ``--compile-backend`` and ``--compile-mode``."""
    options: dict[str, Any] = {"backend": args.compile_backend}
    if args.compile_mode:
        options["mode"] = args.compile_mode
    return options


def run_mode(
    model: torch.nn.Module, config: Any, work: Workload, compile_with: dict[str, Any] | None
) -> dict[str, Any]:
    """One training run, eager (``compile_with=None``) or compiled, and its throughput figures."""
    torch.compiler.reset()  # compile from scratch: no graphs or guards carried over from the last run
    reset_peak_memory(work.device)
    compile_setting = compile_with if compile_with is not None else False
    settings = work.settings(use_amp=True, precision="auto", max_val_batches=1, compile=compile_setting)
    results = loop.train(model, config, settings)
    throughput, step_times_s = results["throughput"], results["step_times_s"]
    steady_s = step_times_s[throughput["warmup_steps_excluded"] :]
    return {
        "mode": "eager" if compile_with is None else "compiled",
        "compile_options": compile_with,
        "precision": results["precision"],
        "optimizer_steps": results["optimizer_steps"],
        "step_time_ms_median": 1000 * statistics.median(steady_s),
        "first_step_ms": 1000 * step_times_s[0],
        "tokens_per_second": throughput["tokens_per_second"],
        "achieved_tflops_per_device": throughput["achieved_tflops_per_device"],
        "peak_tflops_per_device": throughput["peak_tflops_per_device"],
        "mfu": throughput["mfu"],
        "peak_memory_mb": peak_memory_mb(work.device),
        "timed_steps": throughput["timed_steps"],
        "warmup_steps_excluded": throughput["warmup_steps_excluded"],
        "flops_per_token": throughput["flops_per_token"],
        "flops_note": throughput["flops_note"],
        "peak_note": throughput["peak_note"],
        "val_loss": results["val_loss"],
    }


def table_row(run: dict[str, Any]) -> dict[str, str]:
    return {
        "mode": run["mode"] + (f" ({run['compile_options']['backend']})" if run["compile_options"] else ""),
        "precision": run["precision"],
        "ms/step (median)": format_number(run["step_time_ms_median"]),
        "first step ms": format_number(run["first_step_ms"], ".0f"),
        "tokens/s": format_number(run["tokens_per_second"], ",.0f"),
        "achieved TFLOP/s": format_number(run["achieved_tflops_per_device"], ".3g"),
        "peak TFLOP/s": format_number(run["peak_tflops_per_device"], "g"),
        "MFU": format_percent(run["mfu"]),
        "peak MB": format_number(run["peak_memory_mb"], ".0f"),
    }


def judge_target(work: Workload, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The MFU goal: judged for an inductor-compiled run at gpt2-small on a GPU."""
    compiled = next((r for r in runs if r["mode"] == "compiled"), None)
    judged = (
        work.device.type == "cuda"
        and is_preset(work.shape, "gpt2-small")
        and compiled is not None
        and compiled["compile_options"]["backend"] == "inductor"
    )
    return COMPILED_MFU.judge(
        compiled["mfu"] if compiled else None,
        applies=judged,
        why_not="run gpt2-small on a GPU with --compile on|both and the inductor backend to judge it",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser("benchmarks.mfu", __doc__)
    add_common_options(parser, default_out="mfu.json", default_steps=50, several_shapes=False)
    parser.add_argument("--compile", choices=list(MODES), default="both", help="eager, compiled, or both")
    backend_help = "torch.compile backend; 'eager' skips code generation (cheap smoke tests)"
    parser.add_argument("--compile-backend", default="inductor", help=backend_help)
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune (default: none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = setup_device(args)
    shape = chosen_shape(args, device)
    work = make_workload(shape, args, device, min_steps=loop.THROUGHPUT_WARMUP_STEPS + 1)
    model, config = build_model(shape, work.seed)
    initial_state = {k: v.clone() for k, v in model.state_dict().items()}
    print(f"{shape.name}: {shape.describe()}, batch {work.batch_size}, {work.steps} steps on {device}", flush=True)

    runs = []
    for mode in MODES[args.compile]:
        model.load_state_dict(initial_state)  # every mode starts from the same weights
        runs.append(run_mode(model, config, work, compile_options(args) if mode == "compiled" else None))
        print(f"{mode}: {runs[-1]['step_time_ms_median']:.2f} ms/step", flush=True)
    verdicts = [judge_target(work, runs)]
    print()
    print(markdown_table([table_row(r) for r in runs], TABLE_COLUMNS))
    print(f"FLOPs per token: {runs[0]['flops_per_token']:.4g} ({runs[0]['flops_note']})")
    print(f"peak: {runs[0]['peak_note']}")
    print(format_verdicts(verdicts))
    settings = {
        **work.describe(),
        "compile": args.compile,
        "compile_options": compile_options(args),
        "throughput_warmup_steps": loop.THROUGHPUT_WARMUP_STEPS,
    }
    write_json(args.out, "mfu", device, {"settings": settings, "runs": runs, "targets": verdicts})


if __name__ == "__main__":
    main()
