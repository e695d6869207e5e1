"""Time per optimizer step: the training engine's loop against a bare autocast/GradScaler loop.

The engine is ``utils.training.loop.train``, which ``test_fine_tuning`` wraps
(the table still heads its column 'test_fine_tuning'). Both loops run in this
process on the same model shape, initial weights, data, batch order and
precision. Each round runs both (alternating which goes first), drops the
warm-up steps, and takes the median step time; the overhead is the median
over rounds of (loop - bare) / bare. Target: at most 3%, on CPU and on GPU.

    python -m benchmarks.loop_overhead --threads 1                  # CPU: tiny shape
    python -m benchmarks.loop_overhead --device cuda                # GPU: gpt2-small shape

Prints a table and writes JSON (``--out``, default loop_overhead.json).
"""

from __future__ import annotations

import argparse
import copy
import statistics
from typing import Any

import torch

from benchmarks.common import (
    LOOP_OVERHEAD_PCT,
    Workload,
    add_common_options,
    build_model,
    chosen_shape,
    format_number,
    format_verdicts,
    make_parser,
    make_workload,
    setup_device,
    write_json,
)
from utils.model_helpers import extract_logits, make_forward_fn
from utils.report import markdown_table
from utils.training import loop
from utils.training.data import make_loader, prepare_lm_data
from utils.training.losses import next_token_loss_sums
from utils.training.optim import build_lr_scheduler, build_optimizer
from utils.training.precision import PRECISIONS, resolve_precision
from utils.training.timing import StepTimer


def bare_loop_step_times(model: torch.nn.Module, config: Any, work: Workload, precision: str) -> list[float]:
    """The minimal loop: autocast forward and loss, scaler backward, unscale, clip, step, update."""
    device = work.device
    plan = resolve_precision(precision, use_amp=precision == "auto", device=device)
    data = prepare_lm_data(
        None, None, vocab_size=config.vocab_size, seq_len=work.shape.seq_len, max_corpus_bytes=work.corpus_bytes
    )
    loader = make_loader(data.train, work.batch_size, shuffle=True, seed=work.seed, pad_token_id=0)
    model.to(device).train()
    forward = make_forward_fn(model)
    optimizer = build_optimizer(model, work.learning_rate)
    scheduler = build_lr_scheduler(optimizer, warmup_steps=max(1, work.steps // 10), total_steps=work.steps)
    scaler = plan.make_scaler()
    timer = StepTimer(device)
    timer.start()
    for step, batch in enumerate(loader):
        if step == work.steps:
            break
        input_ids = batch["input_ids"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        with plan.autocast():
            loss_sum, _ = next_token_loss_sums(extract_logits(forward(input_ids)), labels)
            loss = loss_sum / batch["n_targets"]
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        timer.mark()
    timer.stop()
    return timer.step_times_s()


def library_loop_step_times(model: torch.nn.Module, config: Any, work: Workload, precision: str) -> list[float]:
    """The engine's per-step times on the same workload (one validation batch, untimed)."""
    settings = work.settings(use_amp=precision == "auto", precision=precision, max_val_batches=1)
    return loop.train(model, config, settings)["step_times_s"]


def measure_rounds(work: Workload, precision: str, rounds: int, warmup: int) -> list[dict[str, Any]]:
    """Run both loops ``rounds`` times from the same weights, alternating which goes first."""
    model, config = build_model(work.shape, work.seed)
    initial = copy.deepcopy(model.state_dict())
    loops = [("bare", bare_loop_step_times), ("loop", library_loop_step_times)]
    measured = []
    for r in range(rounds):
        order = loops if r % 2 == 0 else loops[::-1]
        medians_ms = {}
        for name, run in order:
            model.load_state_dict(initial)
            medians_ms[name] = 1000 * statistics.median(run(model, config, work, precision)[warmup:])
        overhead_pct = 100 * (medians_ms["loop"] - medians_ms["bare"]) / medians_ms["bare"]
        measured.append(
            {
                "first": order[0][0],
                "bare_step_ms": medians_ms["bare"],
                "loop_step_ms": medians_ms["loop"],
                "overhead_pct": overhead_pct,
            }
        )
        print(
            f"round {r}: bare {medians_ms['bare']:.2f} ms, loop {medians_ms['loop']:.2f} ms, "
            f"overhead {overhead_pct:+.2f}%",
            flush=True,
        )
    return measured


def summarize(rounds: list[dict[str, Any]], precision_name: str) -> dict[str, Any]:
    """Medians over the rounds: the figures the table and the target use."""
    return {
        "precision": precision_name,
        "bare_step_ms": statistics.median(r["bare_step_ms"] for r in rounds),
        "loop_step_ms": statistics.median(r["loop_step_ms"] for r in rounds),
        "overhead_pct": statistics.median(r["overhead_pct"] for r in rounds),
        "rounds": rounds,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser("benchmarks.loop_overhead", __doc__)
    add_common_options(parser, default_out="loop_overhead.json", default_steps=60, several_shapes=False)
    precision_help = "'auto': bf16 or fp16 where the device has it, as use_amp=True"
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help=precision_help)
    parser.add_argument("--warmup", type=int, default=10, help="steps per run left out of the median")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each loop; the overhead is their median")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = setup_device(args)
    if args.rounds < 1 or args.warmup < 0:
        raise SystemExit(f"--rounds must be >= 1 and --warmup >= 0, got {args.rounds} and {args.warmup}")
    shape = chosen_shape(args, device)
    work = make_workload(shape, args, device, min_steps=args.warmup + 1)
    plan = resolve_precision(args.precision, use_amp=args.precision == "auto", device=device)
    print(f"{shape.name}: {shape.describe()}, batch {work.batch_size}, {plan.name} on {device}", flush=True)

    result = summarize(measure_rounds(work, args.precision, args.rounds, args.warmup), plan.name)
    verdicts = [LOOP_OVERHEAD_PCT.judge(result["overhead_pct"], applies=True)]
    row = {
        "shape": shape.name,
        "device": str(device),
        "precision": plan.name,
        "batch": work.batch_size,
        "bare loop (ms/step)": format_number(result["bare_step_ms"]),
        "test_fine_tuning (ms/step)": format_number(result["loop_step_ms"]),
        "overhead": format_number(result["overhead_pct"], "+.2f", "%"),
    }
    print()
    print(markdown_table([row], list(row)))
    print(format_verdicts(verdicts))
    settings = {**work.describe(), "precision": args.precision, "warmup_steps": args.warmup, "rounds": args.rounds}
    write_json(args.out, "loop_overhead", device, {"settings": settings, "result": result, "targets": verdicts})


if __name__ == "__main__":
    main()
