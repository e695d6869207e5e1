"""The W&B run config: one flat, JSON-friendly dict describing the model, the precision and the settings.

Example:
    >>> wandb_config = build_wandb_config(model, config, precision=plan.name, learning_rate=3e-4)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from utils.model_family import detect_model_type
from utils.model_helpers import count_parameters, get_config_value, model_device, validate_model
from utils.records import environment_record, to_jsonable
from utils.training.precision import PRECISION_NAMES

_CONFIG_SIZE_FIELDS = ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads")
# The part of utils.records.environment_record a run config has always carried.
_ENVIRONMENT_FIELDS = ("device", "device_name", "torch_version", "cuda_version", "python_version")


# --------------------------------------------------------------------------- run config


def build_wandb_config(model: nn.Module, config: Any, *, precision: str, **hyperparams: Any) -> dict[str, Any]:
    """One flat, JSON-friendly dict describing the run, for ``wandb.init(config=...)``.

    Args:
        model: the model being trained or tested.
        config: its config (dataclass, dict, namespace or HF config), or None to
            use ``model.config``.
        precision: the precision that really runs: pass the resolved
            ``PrecisionPlan.name`` ('fp32', 'fp16' or 'bf16'), not what was requested.
        **hyperparams: anything else to record (learning_rate, batch_size, ...).
            Nested dicts are flattened to 'outer.inner' keys; tensors and numpy
            scalars become numbers, NaN and infinity None, and any other object
            (a list, a dtype) its string form.

    Returns:
        A flat dict: model_type, model_class, params_total, params_trainable,
        vocab_size, max_seq_len, d_model, n_layers, n_heads, mixed_precision,
        amp_enabled, device, device_name, torch_version, cuda_version,
        python_version, and every hyperparameter.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: on an unknown ``precision``, or a hyperparameter whose name
            clashes with a key this function sets itself.

    Example:
        >>> build_wandb_config(model, config, precision=plan.name, learning_rate=3e-4, batch_size=8)
    """
    validate_model(model)
    _validate_precision(precision)
    if config is None:
        config = getattr(model, "config", None)
    environment = environment_record(model_device(model))
    run_config = {
        **_describe_model(model, config),
        "mixed_precision": precision,
        "amp_enabled": precision != "fp32",
        **{name: environment[name] for name in _ENVIRONMENT_FIELDS},
    }
    extra = _flatten_hyperparams(hyperparams)
    clashes = sorted(set(extra) & set(run_config))
    if clashes:
        raise ValueError(
            f"hyperparameter(s) {clashes} clash with keys build_wandb_config sets itself; "
            "rename them (the real precision goes in precision=plan.name)"
        )
    return {**run_config, **extra}


def _validate_precision(precision: Any) -> None:
    if precision not in PRECISION_NAMES:
        raise ValueError(
            f"precision must be one of {PRECISION_NAMES} (the precision that really runs), "
            f"got {precision!r}; pass the resolved PrecisionPlan.name, e.g. "
            "precision=resolve_precision(...).name"
        )


def _describe_model(model: nn.Module, config: Any) -> dict[str, Any]:
    counts = count_parameters(model)
    sizes = {name: json_scalar(get_config_value(config, name)) for name in _CONFIG_SIZE_FIELDS}
    return {
        "model_type": detect_model_type(model, config),
        "model_class": type(model).__name__,
        "params_total": counts["total"],
        "params_trainable": counts["trainable"],
        **sizes,
    }


def _flatten_hyperparams(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten_hyperparams(value, prefix=f"{name}."))
        else:
            flat[name] = json_scalar(value)
    return flat


def json_scalar(value: Any) -> str | int | float | bool | None:
    """``to_jsonable``'s answer where it is a scalar; a list or tuple as its text, since W&B configs here are flat."""
    converted = to_jsonable(value)
    return str(value) if isinstance(converted, (list, dict)) else converted
