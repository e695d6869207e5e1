"""One training run for the FSDP tests: ``torchrun --nproc_per_node=2 tests/fsdp_worker.py OUT.json [flags]``.

Not a test module (pytest collects ``test_*.py`` only). ``train`` is also called in-process by
``tests/test_fsdp.py`` for the one-process reference. The data are fixed rows of real text (the
standard library's source): 24 training rows, so that 2 ranks x 2 rows x 2 micro-batches make
3 optimizer steps an epoch with no sampler padding, and 5 validation rows, split 3 and 2, so
that rank 0 has one validation batch more than rank 1 (FSDP must still run in step).

Flags: ``--strategy=fsdp``, ``--activation-checkpointing``, ``--checkpoint-dir=DIR``, ``--resume-from=FILE``,
``--kill-at-epoch=K`` (every rank SIGKILLs itself at the end of epoch K, before that epoch's checkpoint),
and ``--gathered=FILE`` (rank 0 writes the whole weights and the sharded model's logits there).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

from utils import tier3_training_utilities as tier3  # the launching test puts the repository on PYTHONPATH
from utils.models import tiny_gpt
from utils.training.data import load_stdlib_corpus
from utils.training.fsdp import full_state_dict

SEQ_LEN = 16
TRAIN_ROWS, VAL_ROWS = 24, 5
N_EPOCHS = 3
PROBE = torch.arange(2 * SEQ_LEN).view(2, SEQ_LEN) % 97  # token ids for the export's logits check


def text_rows() -> tuple[torch.Tensor, torch.Tensor]:
    n = (TRAIN_ROWS + VAL_ROWS) * SEQ_LEN
    ids = torch.frombuffer(bytearray(load_stdlib_corpus(n)[:n]), dtype=torch.uint8).long().view(-1, SEQ_LEN)
    return ids[:TRAIN_ROWS], ids[TRAIN_ROWS:]


class KillAtEpoch:
    """SIGKILL this process at the end of ``epoch``: the epoch before has its checkpoint on disk, this one not."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state, row) -> None:
        if state.epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def build_model():
    torch.manual_seed(0)
    return tiny_gpt(d_model=32, n_layers=2, n_heads=2, max_seq_len=SEQ_LEN)


def train(batch_size: int, *, model=None, callbacks=(), **options) -> tuple[dict, torch.nn.Module]:
    """Three epochs with accumulation 2: each optimizer step sees 2 * batch_size * world_size rows."""
    if model is None:
        model, _ = build_model()
    train_rows, val_rows = text_rows()
    results = tier3.test_fine_tuning(
        model,
        model.config,
        train_rows,
        val_rows,
        n_epochs=N_EPOCHS,
        learning_rate=3e-3,
        batch_size=batch_size,
        gradient_accumulation_steps=2,
        precision="fp32",
        device="cpu",
        log_every=2,
        max_val_batches=None,
        progress=False,
        load_best=options.get("checkpoint_dir") is not None,
        callbacks=callbacks,
        **options,
    )
    keep = ("loss_history", "grad_norm_history", "lr_history", "val_loss", "val_accuracy", "optimizer_steps")
    out = {key: results[key] for key in keep}
    out.update(
        {key: results[key] for key in ("world_size", "strategy", "fsdp", "activation_checkpointing", "parameters")}
    )
    out["epochs"] = results["metrics_summary"].to_dict("records")
    out["best_loaded"] = results["best_loaded"]
    return out, model


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(arg.lstrip("-").split("=", 1) if "=" in arg else (arg.lstrip("-"), "") for arg in argv)


if __name__ == "__main__":
    torch.set_num_threads(1)
    flags = _flags(sys.argv[2:])
    options = {
        "strategy": flags.get("strategy", "fsdp"),
        "activation_checkpointing": "activation-checkpointing" in flags,
    }
    for flag in ("checkpoint-dir", "resume-from"):
        if flag in flags:
            options[flag.replace("-", "_")] = flags[flag]
    kill = [KillAtEpoch(int(flags["kill-at-epoch"]))] if "kill-at-epoch" in flags else []
    results, model = train(batch_size=2, callbacks=kill, **options)
    weights = full_state_dict(model)  # a collective: every rank takes part; rank 0 gets the whole weights
    with torch.no_grad():
        logits = model.eval()(PROBE)  # every rank runs the sharded forward (its all-gathers are collectives)
    if torch.distributed.get_rank() == 0:
        Path(sys.argv[1]).write_text(json.dumps(results))
        if "gathered" in flags:
            torch.save({"model": weights, "logits": logits}, flags["gathered"])
