"""Helpers shared by every tier: config access, calling a model, reading its output.

Users bring models in many shapes: hand-written modules, exports from visual
builders, Hugging Face models. This module is the one place that knows how to
call them and how to get logits and sizes out of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

# Each canonical config field and the names other libraries use for it.
CONFIG_ALIASES: dict[str, tuple[str, ...]] = {
    "vocab_size": ("vocab_size", "n_vocab", "num_tokens"),
    "max_seq_len": ("max_seq_len", "max_position_embeddings", "n_positions", "n_ctx", "seq_len", "block_size"),
    "d_model": ("d_model", "hidden_size", "n_embd", "dim", "embed_dim"),
    "n_layers": ("n_layers", "num_hidden_layers", "n_layer", "num_layers"),
    "n_heads": ("n_heads", "num_attention_heads", "n_head", "num_heads"),
    "pad_token_id": ("pad_token_id",),
}

ForwardFn = Callable[[torch.Tensor, "torch.Tensor | None"], Any]


def get_config_value(config: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from a dataclass, namespace, dict or HF config, trying known aliases.

    Example:
        >>> get_config_value({"hidden_size": 64}, "d_model")
        64
    """
    for alias in CONFIG_ALIASES.get(name, (name,)):
        if isinstance(config, Mapping):
            value = config.get(alias)
        else:
            value = getattr(config, alias, None)
        if value is not None:
            return value
    return default


def require_config_values(config: Any, names: tuple[str, ...], purpose: str) -> dict[str, Any]:
    """Return the named config values, or raise one error listing every missing field."""
    values = {name: get_config_value(config, name) for name in names}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        hints = ", ".join(_field_with_aliases(n) for n in missing)
        raise ValueError(f"config is missing {hints}, needed for {purpose}; add it to your config")
    return values


def _field_with_aliases(name: str) -> str:
    aliases = CONFIG_ALIASES.get(name, (name,))[1:]
    return f"{name} (or {'/'.join(aliases)})" if aliases else name


def validate_model(model: Any) -> nn.Module:
    """Raise a clear error unless ``model`` is an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; "
            "pass the model instance (not its class or a tuple like (model, config))"
        )
    return model


def extract_logits(output: Any) -> torch.Tensor:
    """Get the logits tensor out of whatever a model's forward returned.

    Accepts a tensor, a tuple or list with logits first (``(logits, loss)``
    included), a dict with ``"logits"``, or an object with a ``.logits``
    attribute (Hugging Face outputs).
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), torch.Tensor):
            return output["logits"]
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"cannot find logits in the model output of type {type(output).__name__}; "
        "return a tensor, a tuple/list with logits first, a dict with a 'logits' key, "
        "or an object with a .logits attribute"
    )


def make_forward_fn(model: nn.Module) -> ForwardFn:
    """Decide once how to call ``model`` with ``input_ids`` (and ``attention_mask``).

    Returns ``forward(input_ids, attention_mask)``. The mask is passed only
    when the model's forward accepts it and a batch really has padding.
    """
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # some compiled or C++ modules hide their signature
        params = {}
    takes_var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepts_mask = "attention_mask" in params or takes_var_kwargs
    first = next(iter(params.values()), None)
    positional = first is not None and first.kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )
    keyword = "input_ids" in params and params["input_ids"].kind is not inspect.Parameter.POSITIONAL_ONLY

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        kwargs = {"attention_mask": attention_mask} if accepts_mask and attention_mask is not None else {}
        if not positional and (keyword or takes_var_kwargs):
            return model(input_ids=input_ids, **kwargs)
        return model(input_ids, **kwargs)

    return forward


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def detect_vocab_size(model: nn.Module, config: Any, seq_len: int = 8) -> int:
    """The vocabulary size: ``config.vocab_size`` if set, else the width of the model's output.

    It never guesses from the first embedding found: a position or type
    embedding there would give a wrong answer.
    """
    vocab_size = get_config_value(config, "vocab_size")
    if vocab_size is not None:
        return int(vocab_size)
    device = model_device(model)
    probe = torch.zeros(1, seq_len, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = extract_logits(make_forward_fn(model)(probe))
    finally:
        model.train(was_training)
    if logits.ndim != 3:
        raise ValueError(
            f"cannot infer vocab_size: the model's output has shape {tuple(logits.shape)}, "
            "expected (batch, seq, vocab); set config.vocab_size"
        )
    return int(logits.shape[-1])


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts (shared weights counted once)."""
    params = list(model.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``'auto'``/``None``/a name into a usable ``torch.device``, or explain why not."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a device name; use 'auto', 'cpu' or 'cuda'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use device='cpu' or 'auto'")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS is not available here; use device='cpu' or 'auto'")
    return resolved


def device_name(device: torch.device) -> str:
    """A human-readable device name for reports, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def synchronize(device: torch.device) -> None:
    """Wait for queued device work. A deliberate sync: call it only at timing edges."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
