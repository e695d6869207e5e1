"""One training run for the DDP test: ``torchrun --nproc_per_node=2 tests/distributed_worker.py OUT.json``.

Not a test module (pytest collects ``test_*.py`` only). ``train`` is also
called in-process by ``tests/test_distributed.py`` for the one-process
reference. The data are fixed rows of real text (the standard library's
source), so both runs see exactly the same samples: 40 training rows (an even
split over 2 ranks, no sampler padding) and 11 validation rows (6 and 5, an
uneven split).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from utils import tier3_training_utilities as tier3  # the launching test puts the repository on PYTHONPATH
from utils.models import tiny_gpt
from utils.training.data import load_stdlib_corpus

SEQ_LEN = 32
TRAIN_ROWS, VAL_ROWS = 40, 11


def text_rows() -> tuple[torch.Tensor, torch.Tensor]:
    n = (TRAIN_ROWS + VAL_ROWS) * SEQ_LEN
    ids = torch.frombuffer(bytearray(load_stdlib_corpus(n)[:n]), dtype=torch.uint8).long().view(-1, SEQ_LEN)
    return ids[:TRAIN_ROWS], ids[TRAIN_ROWS:]


def train(batch_size: int, use_wandb: bool = False, checkpoint_dir: str | None = None) -> dict:
    """Two epochs with accumulation 2: each optimizer step sees 2 * batch_size * world_size rows."""
    torch.manual_seed(0)
    model, config = tiny_gpt(d_model=32, n_layers=2, n_heads=2, max_seq_len=SEQ_LEN)
    train_rows, val_rows = text_rows()
    results = tier3.test_fine_tuning(
        model,
        config,
        train_rows,
        val_rows,
        n_epochs=2,
        learning_rate=3e-3,
        batch_size=batch_size,
        gradient_accumulation_steps=2,
        precision="fp32",
        device="cpu",
        log_every=2,
        max_val_batches=None,
        progress=False,
        use_wandb=use_wandb,
        checkpoint_dir=checkpoint_dir,
    )
    keep = (
        "loss_history",
        "grad_norm_history",
        "lr_history",
        "val_loss",
        "val_accuracy",
        "optimizer_steps",
        "world_size",
        "samples_per_second",
        "training_time_seconds",
    )
    out = {key: results[key] for key in keep}
    out["samples_seen"] = results["samples_per_second"] * results["training_time_seconds"]
    out["epochs"] = results["metrics_summary"].to_dict("records")
    out["logged_steps"] = results["step_history"]["train/loss"].tolist()
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    flags = dict(arg.lstrip("-").split("=", 1) if "=" in arg else (arg.lstrip("-"), True) for arg in sys.argv[2:])
    results = train(batch_size=2, use_wandb="wandb" in flags, checkpoint_dir=flags.get("checkpoint-dir"))
    if torch.distributed.get_rank() == 0:
        Path(sys.argv[1]).write_text(json.dumps(results))
