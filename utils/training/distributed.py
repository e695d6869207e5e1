"""Data-parallel training under torchrun: one process per device, DDP or FSDP, side effects on rank 0.

``torchrun --nproc_per_node=N script.py`` sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` for each process. ``setup_distributed`` reads them, joins (or
reuses) the process group, and picks this rank's device. In a plain
``python`` run, it returns a single-process context and nothing changes.

Example:
    >>> ctx, device = setup_distributed("auto")
    >>> ctx.world_size, ctx.is_main
    (1, True)
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from utils.device import resolve_device
from utils.training.fsdp_api import is_sharded

_GLOO_DRAIN_S = 0.2  # see _destroy_process_group


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a data-parallel run (a single process is rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 does the logging, W&B, progress bars and file writing."""
        return self.rank == 0


def launched_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's global rank (0 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def setup_distributed(
    device: str | torch.device | None = "auto", *, process_group: bool = False
) -> tuple[DistributedContext, torch.device]:
    """Join the process group torchrun describes, and choose this rank's device.

    Under torchrun, 'auto' and 'cuda' mean ``cuda:LOCAL_RANK`` (NCCL), and
    'cpu' means CPU with gloo. The group is created once per process, reused
    if the caller already made one, and destroyed at exit. ``process_group=True``
    makes a 1-rank group in a plain process too (FSDP needs one).

    Raises:
        ValueError: when a fixed GPU index is asked for under torchrun, where
            each rank must use its own GPU.
    """
    world_size = launched_world_size()
    if world_size == 1:
        resolved = resolve_device(device)
        if process_group and not dist.is_initialized():
            # One rank needs no rendezvous: an in-memory store, no port, no environment variables. Where
            # there is a GPU, the group serves both devices, so a later run on the other one can reuse it.
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
            atexit.register(_destroy_process_group)
        return DistributedContext(), resolved
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        if resolved.index is not None and resolved.index != local_rank:
            raise ValueError(
                f"device={device!r} under torchrun: each rank uses its own GPU (cuda:LOCAL_RANK); "
                "pass device='cuda' or 'auto'"
            )
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
        atexit.register(_destroy_process_group)
    return DistributedContext(dist.get_rank(), local_rank, dist.get_world_size()), resolved


def _destroy_process_group() -> None:
    if not dist.is_initialized():
        return
    if "gloo" in str(dist.get_backend()):
        # A gloo worker thread frees its last collective's tensors just after the collective completes,
        # and needs the GIL to do so; if the interpreter is already finalizing (a rank that exits right
        # after its last FSDP all-gather, on a busy CPU), the thread dies inside C++ and the process
        # aborts ("terminate called without an active exception"). Let the threads finish first.
        time.sleep(_GLOO_DRAIN_S)
    dist.destroy_process_group()


def wrap_data_parallel(model: nn.Module, ctx: DistributedContext, device: torch.device) -> nn.Module:
    """The module to call in training: ``DistributedDataParallel(model)`` under torchrun, else ``model``.

    Buffers are not broadcast on every forward: transformer buffers (masks,
    rotary tables) are constants, and a broadcast per call would add a
    collective to validation, where ranks may run different batch counts.
    """
    if not ctx.enabled or is_sharded(model):  # an FSDP model is its own data-parallel wrapper
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    ddp_parameters = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    # Newer torch renames the switch (and still syncs buffers once, at init, which is what we want).
    no_forward_sync = {
        "forward_sync_buffers" if "forward_sync_buffers" in ddp_parameters else "broadcast_buffers": False
    }
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **no_forward_sync)


def gradient_sync(module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """No gradient communication for micro-batches that do not end an accumulation group, else a no-op.

    Gradients then stay local until the last micro-batch, which all-reduces (DDP) or
    reduce-scatters (FSDP) them once.
    """
    if sync:
        return contextlib.nullcontext()
    if isinstance(module, nn.parallel.DistributedDataParallel):
        return module.no_sync()
    if is_sharded(module):
        return _fsdp_accumulate(module)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_accumulate(module: nn.Module) -> Iterator[None]:
    """FSDP's no_sync: keep whole gradients locally, and keep the gathered parameters for the next micro-batch.

    Until the group's last backward, each rank holds every block's unsharded gradients (and, between
    micro-batches, its parameters), as DDP does; the sharded AdamW state stays 1/N.
    """
    module.set_requires_gradient_sync(False)
    module.set_reshard_after_backward(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)
        module.set_reshard_after_backward(True)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place, and return it (a no-op in a single process)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (gloo has no AVG, so sum then divide)."""
    return all_reduce_sum(tensor, ctx) / ctx.world_size if ctx.enabled else tensor


def barrier(ctx: DistributedContext) -> None:
    """Wait for every rank (a no-op in a single process)."""
    if ctx.enabled:
        dist.barrier()


def sum_host_values(values: list[float], ctx: DistributedContext, device: torch.device) -> list[float]:
    """Sum a few host numbers over ranks: one small collective, for end-of-run totals."""
    if not ctx.enabled:
        return list(values)
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=device), ctx).tolist()


def max_host_value(value: int, ctx: DistributedContext, device: torch.device) -> int:
    """The largest of one host int over ranks (the value itself in a single process)."""
    if not ctx.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())
