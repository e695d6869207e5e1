"""Where the model lives while it trains: one device, DDP replicas, or FSDP2 shards, and its whole state dicts.

``strategy='fsdp'`` uses PyTorch's own FSDP2 (``torch.distributed.fsdp.fully_shard``): each
block (see ``training.blocks``) and then the root are sharded over a 1-D device mesh made for
the run's device (``init_device_mesh('cpu', ...)`` on CPU, so nothing moves to CUDA). Each
rank keeps 1/N of the parameters, gradients and AdamW moments, and gathers one block's
parameters at a time for its forward and backward. In bf16, FSDP's ``MixedPrecisionPolicy``
gathers bf16 parameters and reduces gradients in fp32, over fp32 sharded master weights;
fp16 is refused (its loss scaler would need an inf check over every shard).

With one process, 'fsdp' runs on a 1-rank group and mesh: the same code path, for tests and
for a single GPU. The checkpoints are the same files under every strategy: whole tensors,
gathered to rank 0 (``full_state_dict`` and ``full_optimizer_state_dict``), that resume into
FSDP or into one process.

Example:
    >>> placement = place_model(model, find_blocks(model), strategy="fsdp", activation_checkpointing=False,
    ...                         ctx=ctx, device=device, plan=plan, weights=None)
    >>> placement.record()["fsdp"]["sharded_modules"]
    ['blocks.0', 'blocks.1', '(root)']
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from utils.training.blocks import checkpoint_activations, release_activation_checkpointing
from utils.training.data import IGNORE_INDEX
from utils.training.distributed import DistributedContext, max_host_value
from utils.training.fsdp_api import FSDPModule, MixedPrecisionPolicy, fully_shard, is_dtensor, is_sharded
from utils.training.precision import PrecisionPlan

STRATEGIES = ("auto", "ddp", "fsdp")  # 'auto': DDP under torchrun with more than one rank, else one process
FSDP_DEVICE_TYPES = ("cuda", "cpu")  # NCCL and gloo
ROOT = "(root)"  # how the results name the root module among the sharded ones


@dataclass(frozen=True)
class ModelPlacement:
    """How the model was placed for training; ``record()`` is what the results say about it."""

    strategy: str  # 'single', 'ddp' or 'fsdp'
    checkpointed_modules: tuple[str, ...] = ()
    sharded_modules: tuple[str, ...] = ()
    block_classes: tuple[str, ...] = ()
    mesh: str | None = None
    param_dtype: str | None = None

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"

    def record(self) -> dict[str, Any]:
        """``strategy``, ``fsdp`` (None unless sharded) and ``activation_checkpointing`` (module names)."""
        fsdp = None
        if self.sharded:
            fsdp = {
                "sharded_modules": list(self.sharded_modules),
                "block_classes": list(self.block_classes),
                "mesh": self.mesh,
                "param_dtype": self.param_dtype,
                "reduce_dtype": "float32",
            }
        return {"strategy": self.strategy, "fsdp": fsdp, "activation_checkpointing": list(self.checkpointed_modules)}


def resolve_strategy(requested: str, world_size: int) -> str:
    """'fsdp' when asked for (with any number of ranks); else 'ddp' under torchrun with N > 1, else 'single'."""
    if requested == "fsdp":
        return "fsdp"
    return "ddp" if world_size > 1 else "single"


def place_model(
    model: nn.Module,
    blocks: list[tuple[str, nn.Module]],
    *,
    strategy: str,
    activation_checkpointing: bool,
    ctx: DistributedContext,
    device: torch.device,
    plan: PrecisionPlan,
    weights: dict[str, torch.Tensor] | None,
) -> ModelPlacement:
    """Move the model to ``device`` (or shard it there), load ``weights``, and checkpoint the blocks' activations.

    Raises:
        ValueError: a model an earlier FSDP run sharded, under another strategy; fp16 under FSDP.
    """
    name = resolve_strategy(strategy, ctx.world_size)
    if name != "fsdp":
        if is_sharded(model):
            raise ValueError(
                "this model was sharded by an earlier strategy='fsdp' run; train it with strategy='fsdp' again, "
                "or load full_state_dict(model) into a freshly built model"
            )
        model.to(device)
        if weights is not None:
            model.load_state_dict(weights)
        checkpointed = checkpoint_activations(blocks) if activation_checkpointing else ()
        return ModelPlacement(name, checkpointed_modules=checkpointed)
    check_fsdp_precision(plan)
    if weights is not None:  # into the whole model, before it is cut into shards
        load_full_state_dict(model, weights)
    checkpointed = checkpoint_activations(blocks) if activation_checkpointing else ()
    mesh = _shard(model, blocks, device, ctx.world_size, plan)
    return ModelPlacement(
        "fsdp",
        checkpointed_modules=checkpointed,
        sharded_modules=(*(block_name for block_name, _ in blocks), ROOT),
        block_classes=tuple(dict.fromkeys(_class_name(block) for _, block in blocks)),
        mesh=mesh,
        param_dtype="bfloat16" if plan.name == "bf16" else "float32",
    )


def check_fsdp_precision(plan: PrecisionPlan) -> None:
    """Refuse fp16 under FSDP (the settings refuse an explicit 'fp16'; 'auto' reaches it on an older GPU)."""
    if plan.use_scaler:
        raise ValueError(
            f"strategy='fsdp' does not train in fp16 ({plan.reason}): its loss scaler would need an inf/NaN check "
            "over every rank's shard. Pass precision='fp32', use a GPU with native bf16, or strategy='ddp' for fp16"
        )


def _shard(
    model: nn.Module, blocks: list[tuple[str, nn.Module]], device: torch.device, world_size: int, plan: PrecisionPlan
) -> str:
    """``fully_shard`` each block, then the root, over a mesh made for ``device``; returns the mesh in words."""
    if is_sharded(model):  # a second run on the same model: its shards stay as they are
        mesh = next(p for p in model.parameters() if is_dtensor(p)).device_mesh
    else:
        from torch.distributed.device_mesh import init_device_mesh

        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # the mesh uses the current CUDA device
        # Made explicitly for the device: without a mesh, fully_shard would pick CUDA.
        mesh = init_device_mesh(device.type, (world_size,))
        policy = mixed_precision_policy(plan)
        for _, block in blocks:  # bottom-up: each block is one all-gather unit, the root holds the rest
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
    return f"{mesh.device_type} x {mesh.size()}"


def reshard(model: nn.Module) -> None:
    """Register every FSDP module's shards again (a no-op for a plain model).

    FSDP keeps the root's gathered parameters after a forward without a backward (the
    setup's probe, validation); an optimizer built then would hold those temporary whole
    tensors instead of the shards, and its steps would be lost at the next gather.
    """
    for module in model.modules():
        if is_sharded(module):
            module.reshard()


def release_model(model: nn.Module) -> None:
    """At the end of training: each block's own forward back; under FSDP, the shards registered again.

    The model stays sharded after an FSDP run (``full_state_dict`` gathers it), but its parameters
    are then the fp32 shards, never the last forward's gathered (bf16) root.
    """
    release_activation_checkpointing(model)
    reshard(model)


def mixed_precision_policy(plan: PrecisionPlan) -> MixedPrecisionPolicy:
    """bf16: gather bf16 parameters and reduce gradients in fp32; fp32: FSDP casts nothing."""
    if plan.name == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def _class_name(module: nn.Module) -> str:
    """The block's own class name (FSDP puts an 'FSDP' subclass in front of it)."""
    cls = type(module)
    if is_sharded(module):
        cls = next(c for c in cls.__mro__[1:] if c is not FSDPModule and not issubclass(c, FSDPModule))
    return cls.__name__


# --------------------------------------------------------------------------- whole state dicts


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights: ``model.state_dict()``, or for an FSDP model the shards gathered onto rank 0's CPU.

    Under FSDP this is a collective: every rank must call it, and ranks other than 0 get ``{}``.
    The keys are the plain model's, so the result loads with ``strict=True`` into a fresh model.
    """
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_gathered())


def load_full_state_dict(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load whole weights into a plain model, or into an FSDP model's shards (every rank passes them all)."""
    if not is_sharded(model):
        model.load_state_dict(weights)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()``, whole: under FSDP gathered onto rank 0 (a collective; others get ``{}``).

    The gathered state is keyed by parameter index, as ``optimizer.state_dict()`` is in one process,
    so the same ``last.pt`` resumes under any strategy.
    """
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    gathered = get_optimizer_state_dict(model, optimizer, options=_gathered())  # keyed by parameter name
    if not gathered:
        return {}
    index = {name: i for i, name in enumerate(_parameter_names(model, optimizer))}
    return {
        "state": {index[name]: value for name, value in gathered["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]} for group in gathered["param_groups"]
        ],
    }


def load_full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a whole ``optimizer.state_dict()`` (from any strategy's ``last.pt``) into a plain or FSDP optimizer."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    names = _parameter_names(model, optimizer)
    by_name = {
        "state": {names[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]} for group in state["param_groups"]
        ],
    }
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # Every rank read the file: each keeps its own shard of every moment.
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def _gathered() -> Any:
    """Whole tensors on rank 0's CPU: the other ranks get an empty dict, and no rank holds two whole copies."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each of the optimizer's parameters, in its state-dict index order (a tied weight: its first name)."""
    names = {param: name for name, param in model.named_parameters()}  # a tied weight appears once
    return [names[param] for group in optimizer.param_groups for param in group["params"]]


def plain_tensor(value: torch.Tensor | None) -> torch.Tensor | None:
    """A DTensor result (FSDP's gradient norm) as a whole tensor on every rank (a collective); others unchanged."""
    return value.full_tensor() if is_dtensor(value) else value


# --------------------------------------------------------------------------- validation in step


def lockstep_batches(
    loader: torch.utils.data.DataLoader,
    max_batches: int | None,
    ctx: DistributedContext,
    device: torch.device,
    *,
    sharded: bool,
) -> Iterator[dict]:
    """This rank's validation batches, at most ``max_batches``; under FSDP, as many on every rank.

    Every FSDP forward gathers parameters with all ranks, but the validation split gives rank r
    the rows r, r + N, ..., so one rank may have a batch fewer. The ranks agree on the count
    first; a rank short of it runs its first batch once more with every target ignored, which
    adds nothing to the loss, accuracy or target sums.
    """
    if not (sharded and ctx.enabled):
        yield from itertools.islice(loader, max_batches)
        return
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    most = max_host_value(n_batches, ctx, device)  # one small collective per validation, before any forward
    first = None
    for batch in itertools.islice(loader, n_batches):
        first = batch if first is None else first
        yield batch
    if first is not None:  # setup refuses a rank without validation rows
        ignored = {**first, "labels": torch.full_like(first["labels"], IGNORE_INDEX), "n_targets": 0}
        if "n_target_bytes" in first:
            ignored["n_target_bytes"] = 0  # nor to the bytes scored (bits per byte)
        yield from itertools.repeat(ignored, most - n_batches)


__all__ = [
    "FSDP_DEVICE_TYPES",
    "ROOT",
    "STRATEGIES",
    "ModelPlacement",
    "check_fsdp_precision",
    "full_optimizer_state_dict",
    "full_state_dict",
    "is_sharded",
    "load_full_optimizer_state_dict",
    "load_full_state_dict",
    "lockstep_batches",
    "mixed_precision_policy",
    "place_model",
    "plain_tensor",
    "release_model",
    "reshard",
    "resolve_strategy",
]
