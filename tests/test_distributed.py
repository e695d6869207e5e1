"""Tests for utils.training.distributed, and test_fine_tuning under a real 2-process torchrun (gloo, CPU).

The torchrun test launches ``tests/distributed_worker.py`` on two processes and
compares it with the same worker's ``train`` run here in one process with twice
the per-rank batch: the optimizer steps see the same rows, so the loss,
gradient-norm and learning-rate histories and the validation metrics must agree
to float32 reduction-order tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import distributed_worker
import pytest
import torch
import torch.nn as nn

from utils.training import checkpoint, distributed

WORKER = Path(distributed_worker.__file__)
REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest


def test_a_plain_process_is_rank_0_of_1(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx, device = distributed.setup_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    assert device == torch.device("cpu")


def test_single_process_helpers_are_no_ops():
    ctx = distributed.DistributedContext()
    model = nn.Linear(2, 2)
    assert distributed.wrap_data_parallel(model, ctx, torch.device("cpu")) is model
    values = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(values, ctx) is values
    torch.testing.assert_close(distributed.all_reduce_mean(values, ctx), torch.tensor([1.0, 2.0]))
    assert distributed.sum_host_values([3, 4.5], ctx, torch.device("cpu")) == [3, 4.5]
    with distributed.gradient_sync(model, sync=False):  # a plain module has no no_sync: a no-op
        pass


@pytest.mark.requires_cuda
def test_a_fixed_gpu_index_under_torchrun_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match=r"each rank uses its own GPU \(cuda:LOCAL_RANK\); pass device='cuda'"):
        distributed.setup_distributed("cuda:1")


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(tmp_path):
    out = tmp_path / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))  # finds utils
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(WORKER),
        str(out),
        "--wandb",
        f"--checkpoint-dir={tmp_path / 'ckpt'}",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ddp = json.loads(out.read_text())
    single = distributed_worker.train(batch_size=4)  # one process, 2 x the per-rank batch of 2

    assert (ddp["world_size"], single["world_size"]) == (2, 1)
    # 40 rows, 8 per optimizer step (2 ranks x 2 rows x 2 micro-batches), 2 epochs: set_epoch reshuffles.
    assert ddp["optimizer_steps"] == single["optimizer_steps"] == 10
    assert ddp["samples_seen"] == pytest.approx(single["samples_seen"]) == 80
    for key in ("loss_history", "grad_norm_history", "logged_steps"):
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-5, msg=key)
    assert ddp["lr_history"] == pytest.approx(single["lr_history"])
    # Validation is sharded unevenly (6 and 5 rows) and summed over ranks: every row counts once.
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)
    assert ddp["val_accuracy"] == pytest.approx(single["val_accuracy"], abs=1e-9)
    train_losses = [row["train/loss"] for row in ddp["epochs"]]
    assert train_losses == pytest.approx([row["train/loss"] for row in single["epochs"]], rel=1e-5)
    assert train_losses[1] < train_losses[0]  # it learned
    # W&B and checkpoints on rank 0 only: one offline run for two processes, one last.pt and one best.pt.
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["best.pt", "last.pt"]
    saved = checkpoint.load_checkpoint(tmp_path / "ckpt")
    assert saved["epoch"] == 1 and saved["optimizer_step"] == 10
    assert not any(name.startswith("module.") for name in saved["model"])  # the plain model's keys, not DDP's
