"""AMP speedup, peak memory and accuracy for a sweep of model sizes, up to GPT-2-small shape.

For each shape, ``test_amp_speedup_benchmark`` trains the model twice from the
same weights, data and batch order: in strict FP32 (TF32 off, recorded) and in
mixed precision (bf16 where the GPU has it, else fp16; bf16 autocast on CPU).
It compares median step times, CUDA peak memory and validation accuracy.

    python -m benchmarks.amp_sweep --threads 1                      # CPU: tiny only
    python -m benchmarks.amp_sweep --device cuda                    # GPU: all four shapes
    python -m benchmarks.amp_sweep --device cuda --shapes gpt2-small

Targets (GPU, gpt2-small): speedup >= 4x on an H100, peak memory down >= 40%;
accuracy within 0.01 at every shape. Prints a table and writes JSON (``--out``,
default amp_sweep.json) with every shape's full report.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.common import (
    AMP_ACCURACY_DIFF,
    AMP_MEMORY_REDUCTION_PCT,
    AMP_SPEEDUP,
    Workload,
    add_common_options,
    build_model,
    chosen_shapes,
    format_number,
    format_percent,
    format_verdicts,
    is_preset,
    make_parser,
    make_workload,
    setup_device,
    write_json,
)
from utils.device import reset_peak_memory
from utils.model_helpers import count_parameters
from utils.report import markdown_table
from utils.training.amp_benchmark import test_amp_speedup_benchmark
from utils.training.precision import AMP_PRECISIONS

TABLE_COLUMNS = [
    "shape",
    "params (M)",
    "seq",
    "batch",
    "amp",
    "fp32 ms/step",
    "amp ms/step",
    "speedup",
    "fp32 peak MB",
    "amp peak MB",
    "memory saved",
    "accuracy diff",
    "amp tokens/s",
    "amp MFU",
]


def run_shape(work: Workload, amp_precision: str, warmup: int, val_batches: int) -> dict[str, Any]:
    """One shape's AMP benchmark, made JSON-ready: the figure dropped, the summary as records."""
    model, config = build_model(work.shape, work.seed)
    parameters = count_parameters(model)["total"]
    print(
        f"{work.shape.name}: {work.shape.describe()}, {parameters / 1e6:.3g}M parameters, batch {work.batch_size}",
        flush=True,
    )
    report = test_amp_speedup_benchmark(
        model,
        config,
        precision=amp_precision,
        timing_warmup_steps=warmup,
        allow_tf32=False,
        max_val_batches=val_batches,
        **work.training_kwargs(),
    )
    report.pop("figure", None)
    if "summary" in report:
        report["summary"] = report["summary"].to_dict(orient="records")
    del model
    reset_peak_memory(work.device)  # drop the last shape's tensors, so this peak is its own
    return {**work.describe(), "parameters": parameters, "report": report}


def table_row(entry: dict[str, Any]) -> dict[str, str]:
    """One row of the printed table; '-' where the report has no figure (CPU memory, skipped runs)."""
    r, shape = entry["report"], entry["shape"]
    return {
        "shape": shape["name"],
        "params (M)": format_number(entry["parameters"] / 1e6, ".3g"),
        "seq": str(shape["seq_len"]),
        "batch": str(entry["batch_size"]),
        "amp": r.get("amp_precision") or "skipped",
        "fp32 ms/step": format_number(r.get("fp32_step_time_ms")),
        "amp ms/step": format_number(r.get("amp_step_time_ms")),
        "speedup": format_number(r.get("speedup"), ".2f", "x"),
        "fp32 peak MB": format_number(r.get("fp32_memory_mb"), ".0f"),
        "amp peak MB": format_number(r.get("amp_memory_mb"), ".0f"),
        "memory saved": format_number(r.get("memory_reduction_pct"), ".1f", "%"),
        "accuracy diff": format_number(r.get("accuracy_diff"), ".4f"),
        "amp tokens/s": format_number(r.get("amp_tokens_per_second"), ",.0f"),
        "amp MFU": format_percent(r.get("amp_mfu")),
    }


def judge_targets(works: list[Workload], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed and memory goals at gpt2-small on a GPU; the accuracy goal at every shape that ran."""
    gpt2 = next((e for w, e in zip(works, entries) if is_preset(w.shape, "gpt2-small")), None)
    on_gpu = bool(works) and works[0].device.type == "cuda"
    judged = on_gpu and gpt2 is not None
    why_not = "" if judged else "run gpt2-small on a GPU to judge it"
    gpt2_report = gpt2["report"] if gpt2 else {}
    verdicts = [
        AMP_SPEEDUP.judge(gpt2_report.get("speedup"), applies=judged, why_not=why_not),
        AMP_MEMORY_REDUCTION_PCT.judge(gpt2_report.get("memory_reduction_pct"), applies=judged, why_not=why_not),
    ]
    for entry in entries:
        verdict = AMP_ACCURACY_DIFF.judge(entry["report"].get("accuracy_diff"), applies=True)
        verdicts.append({**verdict, "target": f"{verdict['target']} ({entry['shape']['name']})"})
    return verdicts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser("benchmarks.amp_sweep", __doc__)
    add_common_options(parser, default_out="amp_sweep.json", default_steps=50, several_shapes=True)
    precision_help = "the mixed-precision arm; 'auto': bf16 where native, fp16 on older GPUs, bf16 on CPU"
    parser.add_argument("--precision", default="auto", choices=("auto", *AMP_PRECISIONS), help=precision_help)
    parser.add_argument("--warmup", type=int, default=5, help="steps per arm left out of the timing")
    parser.add_argument("--val-batches", type=int, default=20, help="validation batches for the accuracy figure")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = setup_device(args)
    if args.val_batches < 1:
        raise SystemExit(f"--val-batches must be at least 1, got {args.val_batches}")
    shapes = chosen_shapes(args, device)
    # CPU 'auto' could fall back to FP32 and compare FP32 with itself; the CPU arm is bf16 autocast.
    amp_precision = "bf16" if device.type == "cpu" and args.precision == "auto" else args.precision
    works = [make_workload(shape, args, device, min_steps=args.warmup + 1) for shape in shapes]

    entries = [run_shape(work, amp_precision, args.warmup, args.val_batches) for work in works]
    verdicts = judge_targets(works, entries)
    print()
    print(markdown_table([table_row(e) for e in entries], TABLE_COLUMNS))
    for entry in entries:
        for note in entry["report"].get("notes", []):
            print(f"note ({entry['shape']['name']}): {note}")
    print(format_verdicts(verdicts))
    settings = {
        "amp_precision": amp_precision,
        "fp32_tf32": False,
        "timing_warmup_steps": args.warmup,
        "val_batches": args.val_batches,
        "steps": args.steps,
    }
    write_json(args.out, "amp_sweep", device, {"settings": settings, "results": entries, "targets": verdicts})


if __name__ == "__main__":
    main()
