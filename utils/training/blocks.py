"""A model's transformer blocks, the units FSDP shards and activation checkpointing recomputes.

``find_blocks`` looks, in this order, for:

1. the classes ``fsdp_wrap=`` names (a class, a class name, or a tuple of them);
2. a Hugging Face model's own list of blocks it must not split, ``_no_split_modules``
   (``['GPT2Block']`` for GPT-2);
3. the largest ``nn.ModuleList`` whose items share one class: the built-in models'
   ``blocks``, ``nn.TransformerEncoder.layers``, or a user's own list of layers.

Only the outermost matches count (a block inside a block is part of it), and never the
root. A model FSDP has already sharded keeps the blocks it was sharded by.

``checkpoint_activations`` makes each block recompute its activations in the backward pass
(``torch.utils.checkpoint``, non-reentrant) instead of keeping them, and
``release_activation_checkpointing`` undoes it when training ends.

Example:
    >>> model, config = tiny_gpt(n_layers=2)
    >>> [name for name, _ in find_blocks(model)]
    ['blocks.0', 'blocks.1']
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn as nn
import torch.utils.checkpoint

from utils.training.fsdp_api import is_sharded

BlockSpec = str | type | tuple  # what fsdp_wrap= takes
_RECOMPUTES = "recomputes"  # the attribute that marks a forward made here, holding the block's own forward


def check_block_spec(spec: Any, name: str = "fsdp_wrap") -> tuple[str | type, ...] | None:
    """``fsdp_wrap`` as a tuple of classes and class names, or None.

    Raises:
        TypeError: not a class name, an ``nn.Module`` subclass, or a non-empty tuple or list of them.
    """
    if spec is None:
        return None
    items = tuple(spec) if isinstance(spec, (tuple, list)) else (spec,)
    good = all(
        (isinstance(item, str) and item.strip()) or (isinstance(item, type) and issubclass(item, nn.Module))
        for item in items
    )
    if not items or not good:
        raise TypeError(
            f"{name} must name the model's block class: a class name ('GPT2Block'), an nn.Module subclass, "
            f"or a tuple of them; got {spec!r}"
        )
    return items


def find_blocks(model: nn.Module, spec: tuple[str | type, ...] | None = None) -> list[tuple[str, nn.Module]]:
    """The model's blocks as ``(name, module)`` pairs, outermost only; ``[]`` when it has none.

    Raises:
        ValueError: ``spec`` (``fsdp_wrap``) names no class of this model; the message lists its classes.
    """
    if is_sharded(model):
        return [(name, m) for name, m in model.named_modules() if name and is_sharded(m)]
    if spec is not None:
        found = _outermost(model, lambda m: any(_is(m, item) for item in spec))
        if not found:
            classes = sorted({type(m).__name__ for m in model.modules()})
            raise ValueError(
                f"fsdp_wrap={spec if len(spec) > 1 else spec[0]!r} names no module of this model; "
                f"its module classes are {classes}"
            )
        return found
    no_split = hf_no_split_classes(model)
    found = _outermost(model, lambda m: type(m).__name__ in no_split) if no_split else []
    return found or _largest_module_list(model)


def choose_blocks(
    model: nn.Module, spec: tuple[str | type, ...] | None, *, shard: bool, checkpoint: bool
) -> list[tuple[str, nn.Module]]:
    """The blocks FSDP shards (``shard``) and activation checkpointing recomputes (``checkpoint``); else ``[]``.

    Raises:
        ValueError: ``spec`` names no class of the model, or ``checkpoint`` finds no blocks.
    """
    if not (shard or checkpoint):
        return []
    blocks = find_blocks(model, spec)
    if not blocks and checkpoint:
        raise ValueError(
            "activation_checkpointing=True found no list of transformer blocks in this model; "
            "pass fsdp_wrap= naming the block class"
        )
    if not blocks:
        warnings.warn(
            "strategy='fsdp' found no list of transformer blocks in this model, so the whole model is one FSDP "
            "unit and every rank gathers all of it at once; pass fsdp_wrap= naming the block class",
            stacklevel=5,
        )
    return blocks


def hf_no_split_classes(model: nn.Module) -> tuple[str, ...]:
    """Hugging Face's names of the classes that must stay whole on one device (``_no_split_modules``).

    ``PreTrainedModel`` subclasses set this class attribute for accelerate's device maps and
    FSDP auto-wrapping; it is read here only, and tests/test_fsdp.py pins it on GPT-2.
    """
    names = getattr(model, "_no_split_modules", None)
    if not isinstance(names, (list, tuple, set)):
        return ()
    return tuple(name for name in names if isinstance(name, str))


def _is(module: nn.Module, item: str | type) -> bool:
    return isinstance(module, item) if isinstance(item, type) else type(module).__name__ == item


def _outermost(model: nn.Module, matches: Any) -> list[tuple[str, nn.Module]]:
    """Modules (the root left out) for which ``matches`` holds, skipping those inside an earlier match."""
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    for name, module in model.named_modules():  # pre-order: a parent comes before its children
        if not name or id(module) in seen or not matches(module):
            continue
        if any(name.startswith(f"{outer}.") for outer, _ in found):
            continue
        found.append((name, module))
        seen.add(id(module))
    return found


def _largest_module_list(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The items of the ``nn.ModuleList`` of one item class that holds the most parameters."""
    best: list[tuple[str, nn.Module]] = []
    best_size = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len({type(item) for item in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            prefix = f"{name}." if name else ""
            best, best_size = [(f"{prefix}{i}", item) for i, item in enumerate(module)], size
    return best


def checkpoint_activations(blocks: list[tuple[str, nn.Module]]) -> tuple[str, ...]:
    """Make each block recompute its activations in backward instead of storing them; returns their names.

    The block's forward is replaced on the instance only, so its class, its parameters and its
    state-dict keys stay as they were (FSDP's hooks, checkpoints and exports see no wrapper).
    Without gradients (validation, the probe) the block runs as before. The RNG state is
    replayed in the recomputation, so dropout draws the same mask and the loss is unchanged.
    """
    for _, block in blocks:
        if not hasattr(vars(block).get("forward"), _RECOMPUTES):
            block.forward = _recomputing(block.forward)
    return tuple(name for name, _ in blocks)


def _recomputing(forward: Any) -> Any:
    def recomputing_forward(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)

    setattr(recomputing_forward, _RECOMPUTES, forward)
    return recomputing_forward


def release_activation_checkpointing(model: nn.Module) -> None:
    """Give every block ``checkpoint_activations`` changed its own forward back (a no-op elsewhere)."""
    for module in model.modules():
        if hasattr(vars(module).get("forward"), _RECOMPUTES):
            del module.forward


__all__ = [
    "BlockSpec",
    "check_block_spec",
    "checkpoint_activations",
    "choose_blocks",
    "find_blocks",
    "hf_no_split_classes",
    "release_activation_checkpointing",
]
