"""The one seam to PyTorch's FSDP2 and DTensor, so that the engine imports on every torch it supports.

``fully_shard``, ``FSDPModule`` and ``MixedPrecisionPolicy`` are public in
``torch.distributed.fsdp`` from torch 2.6; torch 2.4 and 2.5 have them in
``torch.distributed._composable.fsdp``, and a torch built without
``torch.distributed`` has none. There every model is unsharded, and
``require_fsdp2`` explains why ``strategy='fsdp'`` cannot run.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

FSDPModule: Any = None
MixedPrecisionPolicy: Any = None
fully_shard: Any = None
DTensor: Any = None
try:
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
except ImportError:  # torch 2.4 and 2.5 (or no torch.distributed at all)
    try:
        from torch.distributed._composable.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    except ImportError:
        pass
try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch 2.4
    try:
        from torch.distributed._tensor import DTensor
    except ImportError:
        pass


def fsdp2_available() -> bool:
    """True when this torch has FSDP2 (``fully_shard``) and DTensor."""
    return fully_shard is not None and DTensor is not None and torch.distributed.is_available()


def require_fsdp2() -> None:
    """Raise unless ``strategy='fsdp'`` can run on this torch.

    Raises:
        ValueError: no FSDP2 here, naming the torch version.
    """
    if not fsdp2_available():
        raise ValueError(
            f"strategy='fsdp' needs PyTorch's FSDP2 (fully_shard, torch >= 2.4 built with torch.distributed); "
            f"this is torch {torch.__version__}. Use strategy='ddp', or install a newer torch"
        )


def is_sharded(module: nn.Module) -> bool:
    """True for a module ``fully_shard`` has wrapped (its parameters are DTensor shards)."""
    return FSDPModule is not None and isinstance(module, FSDPModule)


def is_dtensor(value: Any) -> bool:
    return DTensor is not None and isinstance(value, DTensor)


__all__ = [
    "DTensor",
    "FSDPModule",
    "MixedPrecisionPolicy",
    "fsdp2_available",
    "fully_shard",
    "is_dtensor",
    "is_sharded",
    "require_fsdp2",
]
