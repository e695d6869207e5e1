"""Time per optimizer step: test_fine_tuning's loop against a bare autocast/GradScaler loop.

Both loops run in this process on the same model shape, initial weights,
data, batch order and precision. Each round runs both (alternating which goes
first), drops the warm-up steps, and takes the median step time; the overhead
is the median over rounds of (loop - bare) / bare.

    python benchmarks/loop_overhead.py                    # CPU, built-in tiny GPT
    python benchmarks/loop_overhead.py --device cuda --precision auto --d-model 768 --n-layers 12

Prints a table and writes JSON (``--out``, default loop_overhead.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import tier3_training_utilities as tier3  # noqa: E402
from utils.model_helpers import device_name, extract_logits, make_forward_fn, resolve_device  # noqa: E402
from utils.models import tiny_gpt  # noqa: E402
from utils.training.amp_utils import resolve_precision  # noqa: E402
from utils.training.data import make_loader, prepare_lm_data  # noqa: E402
from utils.training.losses import next_token_loss_sums  # noqa: E402
from utils.training.optim import build_lr_scheduler, build_optimizer  # noqa: E402
from utils.training.timing import StepTimer  # noqa: E402


def bare_loop_step_times(model, config, args, device) -> list[float]:
    """The minimal loop: autocast forward and loss, scaler backward, unscale, clip, step, update."""
    plan = resolve_precision(args.precision, use_amp=args.precision == "auto", device=device)
    data = prepare_lm_data(None, None, vocab_size=config.vocab_size, seq_len=args.seq_len,
                           max_corpus_bytes=args.corpus_bytes)  # fmt: skip
    loader = make_loader(data.train, args.batch_size, shuffle=True, seed=0, pad_token_id=0)
    model.to(device).train()
    forward = make_forward_fn(model)
    optimizer = build_optimizer(model, 1e-3)
    scheduler = build_lr_scheduler(optimizer, warmup_steps=max(1, args.steps // 10), total_steps=args.steps)
    scaler = plan.make_scaler()
    timer = StepTimer(device)
    timer.start()
    for step, batch in enumerate(loader):
        if step == args.steps:
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


def library_loop_step_times(model, config, args, device) -> list[float]:
    results = tier3.test_fine_tuning(
        model, config, n_epochs=1, learning_rate=1e-3, batch_size=args.batch_size,
        use_amp=args.precision == "auto", precision=args.precision, device=device, max_steps=args.steps,
        seq_len=args.seq_len, max_corpus_bytes=args.corpus_bytes, max_val_batches=1, progress=False,
    )  # fmt: skip
    return results["step_times_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus-bytes", type=int, default=400_000)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (fewer threads, less noise)")
    parser.add_argument("--out", type=Path, default=Path("loop_overhead.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model, config = tiny_gpt(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
                             max_seq_len=args.seq_len)  # fmt: skip
    initial = copy.deepcopy(model.state_dict())

    rounds = []
    for r in range(args.rounds):
        order = [("bare", bare_loop_step_times), ("loop", library_loop_step_times)]
        medians = {}
        for name, run in order if r % 2 == 0 else reversed(order):
            model.load_state_dict(initial)
            medians[name] = statistics.median(run(model, config, args, device)[args.warmup:])
        rounds.append({**medians, "overhead_pct": 100 * (medians["loop"] - medians["bare"]) / medians["bare"]})
        print(f"round {r}: bare {1000 * medians['bare']:.2f} ms, loop {1000 * medians['loop']:.2f} ms, "
              f"overhead {rounds[-1]['overhead_pct']:+.2f}%", flush=True)  # fmt: skip

    plan = resolve_precision(args.precision, use_amp=args.precision == "auto", device=device)
    summary = {
        "device": device_name(device),
        "torch": torch.__version__,
        "precision": plan.name,
        "model": f"tiny_gpt d_model={args.d_model} n_layers={args.n_layers} seq_len={args.seq_len}",
        "batch_size": args.batch_size,
        "cpu_threads": torch.get_num_threads(),
        "steps_per_run": args.steps,
        "warmup_steps": args.warmup,
        "bare_step_ms": 1000 * statistics.median(r["bare"] for r in rounds),
        "loop_step_ms": 1000 * statistics.median(r["loop"] for r in rounds),
        "overhead_pct": statistics.median(r["overhead_pct"] for r in rounds),
        "rounds": rounds,
    }
    print()
    print("| device | precision | bare loop (ms/step) | test_fine_tuning (ms/step) | overhead |")
    print("|---|---|---|---|---|")
    print(f"| {summary['device']} | {summary['precision']} | {summary['bare_step_ms']:.2f} | "
          f"{summary['loop_step_ms']:.2f} | {summary['overhead_pct']:+.2f}% |")  # fmt: skip
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
