"""What an export says about itself: ``config.json``, ``metadata.json``, ``tokenizer.json`` and the model card.

``export_state_dict`` (``utils.training.export``) writes all three from what is
built here: the config as plain JSON (``config_to_dict``), the metadata
(versions, parameter count, precision, final metrics, the environment record,
the tokenizer and the reload check) and the card, which shows the metrics, the
reload check and the Python lines that rebuild the model from ``config.json``
(the reverse of ``config_to_dict``), load ``model.safetensors`` and the
``tokenizer.json``, and make the model speak.

Example:
    >>> metadata = export_metadata(model, results, config, parity)
    >>> text = model_card_text(model, config, metadata)
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from utils._version import __version__
from utils.checks import is_number
from utils.model_helpers import count_parameters, detect_vocab_size, model_device
from utils.records import environment_record, to_jsonable
from utils.training.text_tokenizer import TOKENIZER_FILE, TextTokenizer
from utils.training.tokenization import resolve_tokenizer

FORMAT_VERSION = 1  # of metadata.json and the folder layout
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
CARD_FILE = "README.md"


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config as plain JSON data: a Hugging Face config (``to_dict()``), a dataclass, a dict or a SimpleNamespace.

    Raises:
        TypeError: naming ``config``, for any other type.
    """
    if callable(getattr(config, "to_dict", None)) and not isinstance(config, Mapping):
        data = config.to_dict()  # before the dataclass test: Hugging Face configs are dataclasses too
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        data = dataclasses.asdict(config)
    elif isinstance(config, Mapping):
        data = dict(config)
    elif isinstance(config, types.SimpleNamespace):
        data = vars(config)
    else:
        raise TypeError(
            f"config must be a dataclass, dict, SimpleNamespace or Hugging Face config (with to_dict()), "
            f"got {type(config).__name__}; pass the config the model was built from"
        )
    return to_jsonable(data)


def model_card_text(model: nn.Module, config: Any, metadata: Mapping[str, Any]) -> str:
    """The export's README.md: what it is, the reload check, the metrics and how to load it.

    Args:
        model: the exported model.
        config: its config, for the snippet that rebuilds the model.
        metadata: what ``export_metadata`` returned (the reload check included).
    """
    parity = metadata["parity"]
    reason = parity["reason"][:1].upper() + parity["reason"][1:]
    if parity["status"] == "ok":
        check = f"Reload check: **ok**. {reason}."
    else:
        check = f"> **Warning: the reload check failed.** {reason}. Do not use these weights until you know why."
    lines = [
        f"# {type(model).__name__}",
        "",
        f"Exported by `utils` {metadata['utils_version']} with torch {metadata['torch_version']} and "
        f"safetensors {metadata['safetensors_version']}: {metadata['parameter_count']:,} parameters, "
        f"precision {metadata['precision'] or 'not recorded'}.",
        "",
        check,
        "",
        "## Metrics",
        "",
        *_metrics_table(metadata["metrics"]),
        "",
        "## Load the weights",
        "",
        "```python",
        *_load_snippet(
            model, config, rebuild_from_config=parity["built_from"] == "config" and parity["status"] == "ok"
        ),
        "```",
        "",
        f"`{WEIGHTS_FILE}` holds tensors only (no pickled code); tied weights are stored once and "
        "re-tied by `load_model`. `metadata.json` records the versions, the environment and the reload check.",
        *_tokenizer_section(metadata.get("tokenizer")),
    ]
    return "\n".join(lines) + "\n"


def _tokenizer_section(tokenizer: Mapping[str, Any] | None) -> list[str]:
    """How to load ``tokenizer.json`` (with Hugging Face ``tokenizers``, or ``utils``) and hear the model."""
    if not tokenizer:
        return []
    return [
        "",
        "## Load the tokenizer and generate",
        "",
        f"The model was trained on text encoded by `{TOKENIZER_FILE}` ({tokenizer['name']}, "
        f"{tokenizer['vocab_size']} ids).",
        "",
        "```python",
        "from tokenizers import Tokenizer",
        "",
        f'tokenizer = Tokenizer.from_file("{TOKENIZER_FILE}")',
        'ids = tokenizer.encode("def main():", add_special_tokens=False).ids',
        "",
        "import utils  # or, with this library: sample from the model loaded above",
        "",
        f'print(utils.generate(model, "def main():", tokenizer="{TOKENIZER_FILE}", max_new_tokens=60).text)',
        "```",
    ]


def export_tokenizer(spec: Any, model: nn.Module, config: Any) -> TextTokenizer | None:
    """The tokenizer an export writes: a ``TextTokenizer`` as it is, or one resolved from a name or path.

    Raises:
        ValueError: a tokenizer that does not fit the model, or 'bpe' (which only a training run makes).
    """
    if spec is None or isinstance(spec, TextTokenizer):
        return spec
    return resolve_tokenizer(spec, detect_vocab_size(model, config))


def export_metadata(
    model: nn.Module,
    results: Mapping[str, Any],
    config: Any,
    parity: dict[str, Any],
    tokenizer: TextTokenizer | None = None,
) -> dict[str, Any]:
    """``metadata.json``: versions, parameter count, precision, final metrics, environment, tokenizer, reload check."""
    import safetensors  # already imported by the exporter; here only for its version

    precision = results.get("precision")
    environment = results.get("environment")
    if not isinstance(environment, Mapping):
        environment = environment_record(model_device(model), precision=precision)
    return to_jsonable(
        {
            "format_version": FORMAT_VERSION,
            "utils_version": __version__,
            "torch_version": torch.__version__,
            "safetensors_version": safetensors.__version__,
            "model_class": qualified_name(type(model)),
            "config_class": qualified_name(type(config)),
            "parameter_count": count_parameters(model)["total"],
            "precision": precision,
            "metrics": _metrics(results),
            "environment": dict(environment),
            "parity": parity,
            "tokenizer": {**tokenizer.describe(), "file": TOKENIZER_FILE} if tokenizer is not None else None,
        }
    )


def _metrics(results: Mapping[str, Any]) -> dict[str, Any]:
    """The results' top-level scalars (val_loss, best_epoch, optimizer_steps ...), in their order."""
    metrics = {}
    for name, value in results.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
            value = value.item()
        if is_number(value):
            metrics[str(name)] = value
    return metrics


def _metrics_table(metrics: Mapping[str, Any]) -> list[str]:
    if not metrics:
        return ["_No metrics were recorded: the model was exported without a results dict._"]
    rows = [f"| {name} | {'n/a' if value is None else f'{value:.6g}'} |" for name, value in metrics.items()]
    return ["| metric | value |", "|---|---|", *rows]


def _load_snippet(model: nn.Module, config: Any, *, rebuild_from_config: bool) -> list[str]:
    """Python lines that rebuild the model from config.json and load the weights with strict=True."""
    (config_module, config_name), config_expr = _config_source(config)
    model_module, model_name = _import_source(type(model))
    imports: dict[str, set[str]] = {"safetensors.torch": {"load_model"}}
    for module, name in ((config_module, config_name), (model_module, model_name)):
        if module is not None:
            imports.setdefault(module, set()).add(name.split(".")[0])
    lines = ["import json", ""] + [
        f"from {m} import {', '.join(sorted(names))}" for m, names in sorted(imports.items())
    ]
    own = [name for module, name in ((config_module, config_name), (model_module, model_name)) if module is None]
    lines += [f"# {name} is defined in your own code: run its definition first" for name in own if name != "dict"]
    lines += ["", f'with open("{CONFIG_FILE}") as f:', f"    config = {config_expr}"]
    if rebuild_from_config:
        lines.append(f"model = {model_name}(config)")
    else:
        lines.append(f"model = {model_name}(...)  # build it exactly as the exported model was built")
    lines.append(f'load_model(model, "{WEIGHTS_FILE}", strict=True)')
    return lines


def _config_source(config: Any) -> tuple[tuple[str | None, str], str]:
    """Where the config's class comes from, and the expression that rebuilds it from ``json.load(f)``."""
    if callable(getattr(config, "to_dict", None)) and not isinstance(config, Mapping):
        source = _import_source(type(config))
        if callable(getattr(type(config), "from_dict", None)):
            return source, f"{source[1]}.from_dict(json.load(f))"
        if _takes_its_own_keys(type(config), config.to_dict()):  # e.g. minGPT's CfgNode(**kwargs)
            return source, f"{source[1]}(**json.load(f))"
        # Neither way back exists: say so plainly, and hand the user the values instead of code that fails.
        return (None, "dict"), (
            f"json.load(f)  # a dict: {source[1]} has no from_dict and does not take these keys; "
            "rebuild the config from it as you built it"
        )
    if dataclasses.is_dataclass(config):
        source = _import_source(type(config))
        return source, f"{source[1]}(**json.load(f))"
    if isinstance(config, types.SimpleNamespace):
        return ("types", "SimpleNamespace"), "SimpleNamespace(**json.load(f))"
    return (None, "dict"), "json.load(f)"


def _takes_its_own_keys(cls: type, values: dict[str, Any]) -> bool:
    """True when ``cls(**values)`` is a call its signature accepts (named parameters, or ``**kwargs``)."""
    try:
        inspect.signature(cls).bind(**values)
    except (TypeError, ValueError):
        return False
    return True


def _import_source(cls: type) -> tuple[str | None, str]:
    """``(module, qualified name)`` to import a class from; module None when it lives in a notebook or a function."""
    module = cls.__module__
    if module == "__main__" or "<locals>" in cls.__qualname__:
        return None, cls.__qualname__.split(".")[-1]
    if module.startswith("transformers."):
        module = "transformers"  # Hugging Face classes are all importable from the top level
    return module, cls.__qualname__


def qualified_name(cls: type) -> str:
    """``module.QualifiedName`` of a class, as metadata.json records it."""
    return f"{cls.__module__}.{cls.__qualname__}"
