"""Export a trained model as a folder anyone can load: safetensors weights, config, metadata and a model card.

The folder holds:

- ``model.safetensors``: the weights, written by ``safetensors.torch.save_model``
  (tensors only, never pickled code; tied weights such as a shared embedding and
  LM head are stored once and re-tied on load);
- ``config.json``: the model's configuration;
- ``metadata.json``: versions, parameter count, precision, final metrics, the
  environment record and the result of the reload check;
- ``tokenizer.json``: the tokenizer the model was trained with, when the results (or
  ``tokenizer=``) name one; ``tokenizers.Tokenizer.from_file`` loads it;
- ``README.md``: a model card with the metrics and how to load the weights and the tokenizer.

It is written atomically through ``utils.folders`` (complete or absent, an
earlier export replaced only with ``overwrite=True``); the metadata and the
card's text are built in ``utils.training.model_card``. Before the folder is
swapped into place the export is reloaded, with ``strict=True``, into a freshly
built model whose logits are compared with the original's: an export that does
not reload exactly is reported as ``status='fail'``, never as fine.

Example:
    >>> result = export_state_dict(model, "exports/run-1", config=config)
    >>> result["parity"]["status"]
    'ok'
    >>> load_exported_weights(TinyTransformer(config), "exports/run-1")
"""

from __future__ import annotations

import copy
import math
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from utils.checks import check_bool, check_path
from utils.folders import check_target_folder, staged_folder, write_json_atomic
from utils.model_copy import independent_copy
from utils.model_helpers import (
    config_size,
    detect_vocab_size,
    extract_logits,
    make_forward_fn,
    model_device,
    model_mode,
    random_input_ids,
    validate_model,
)
from utils.optional import import_optional
from utils.records import to_jsonable
from utils.training.fsdp_api import is_sharded
from utils.training.model_card import (
    CARD_FILE,
    CONFIG_FILE,
    METADATA_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    export_metadata,
    export_tokenizer,
    model_card_text,
)
from utils.training.model_card import FORMAT_VERSION as FORMAT_VERSION  # re-exported: the layout's version
from utils.training.model_card import config_to_dict as config_to_dict  # re-exported: callers import it from here

# Every export has these; overwrite=True replaces only a folder that holds them, never any other folder.
_EXPORT_FILES = (WEIGHTS_FILE, METADATA_FILE)

# The reload check's tolerance on logits, by their dtype. Same weights, code and device give equal
# logits in practice; the slack only absorbs a kernel's nondeterministic reduction order.
PARITY_ATOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 1e-2, torch.float16: 1e-3}
_PROBE_SHAPE = (2, 8)  # (batch, tokens); tokens are cut to the config's max_seq_len


def export_state_dict(
    results_or_model: nn.Module | Mapping[str, Any],
    output_dir: str | Path,
    *,
    config: Any = None,
    model_factory: Callable[[], nn.Module] | None = None,
    overwrite: bool = False,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Write ``output_dir`` with the model's weights, config, metadata and model card, then check it reloads.

    Args:
        results_or_model: the trained model, or a results dict holding it under ``"model"`` (and
            optionally ``"config"``, ``"precision"``, ``"environment"`` and scalar metrics such
            as ``val_loss``), as the training coordinator returns.
        output_dir: the export folder; missing parents are made.
        config: the model's config (dataclass, dict, SimpleNamespace or Hugging Face config);
            default ``results["config"]``, else ``model.config``. One of them is required.
        model_factory: builds a new model of the same architecture for the reload check;
            default ``type(model)(config)``, else a NaN-filled copy of the model.
        overwrite: replace an earlier export at ``output_dir``.
        tokenizer: the model's tokenizer (a ``TextTokenizer``, or what ``tokenizer=`` takes); default
            ``results["tokenizer"]``. It is written as ``tokenizer.json``.

    Returns:
        ``{'export_dir': Path, 'files': [names], 'parity': {...}, 'metadata': {...}}``; ``parity``
        is ``{'status': 'ok'|'fail', 'max_abs_diff', 'atol', 'built_from': 'factory'|'config'|'copy',
        'reason'}``. A failed reload check is reported there, not raised; the folder is still written.

    Raises:
        TypeError, ValueError: bad arguments, named, before anything is written.
        RuntimeError: ``model_factory()`` itself failed.
        ImportError: safetensors is not installed.
    """
    model, results = _unpack(results_or_model)
    if is_sharded(model):
        raise ValueError(
            "export_state_dict: this model is still FSDP-sharded after training. Gather it first, on every rank: "
            "weights = utils.training.fsdp.full_state_dict(model); then on rank 0 load them into a freshly built "
            "model (load_state_dict(weights, strict=True)) and export that one"
        )
    config = _resolve_config(config, results, model)
    config_json = config_to_dict(config)
    _check_factory(model_factory)
    text_tokenizer = export_tokenizer(tokenizer if tokenizer is not None else results.get("tokenizer"), model, config)
    out = check_export_target(output_dir, overwrite)
    safetensors = import_safetensors()
    fresh, built_from, note = _fresh_model(model, config, model_factory)
    with staged_folder(out) as staging:
        # "format": "pt" is the header entry Hugging Face loaders look for.
        safetensors.torch.save_model(model, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        _write_json(staging / CONFIG_FILE, config_json)
        parity = _check_reload(model, fresh, staging / WEIGHTS_FILE, config, built_from=built_from, note=note)
        metadata = export_metadata(model, results, config, parity, text_tokenizer)
        if text_tokenizer is not None:
            text_tokenizer.save(staging / TOKENIZER_FILE)
        _write_json(staging / METADATA_FILE, metadata)
        (staging / CARD_FILE).write_text(model_card_text(model, config, metadata))
        files = sorted(p.name for p in staging.iterdir())
    return {"export_dir": out.resolve(), "files": files, "parity": parity, "metadata": metadata}


def check_export_target(
    output_dir: Any, overwrite: bool, *, flag: str = "output_dir", overwrite_flag: str = "overwrite=True"
) -> Path:
    """Check, before any work, that ``output_dir`` can receive an export: new, empty, or an earlier export to replace.

    Only a folder holding an earlier export (``model.safetensors`` and ``metadata.json``) is ever replaced.
    ``flag``/``overwrite_flag`` name the arguments in the message (the CLI passes its flags).
    """
    check_path(output_dir, flag)
    check_bool(overwrite, overwrite_flag.removesuffix("=True"))
    out = Path(output_dir)
    check_target_folder(
        out, overwrite=overwrite, flag=flag, overwrite_flag=overwrite_flag, kind="export", marker_files=_EXPORT_FILES
    )
    return out


def load_exported_weights(model: nn.Module, export_dir: str | Path, *, convert_dtype: bool = False) -> nn.Module:
    """Load an export's ``model.safetensors`` into ``model``, strictly: every weight must fit, or nothing is loaded.

    Every key, shape and dtype is checked against ``model`` before a single
    weight is copied, so on any error ``model`` is left exactly as it was.
    Tied weights (stored once) fill every name they are tied to.

    Example:
        >>> model = load_exported_weights(TinyTransformer(config), "exports/run-1")
        >>> load_exported_weights(model.half(), "exports/run-1", convert_dtype=True)  # fp32 weights into fp16

    Args:
        model: a model built like the exported one (see the export's README.md).
        export_dir: the folder ``export_state_dict`` wrote, or its ``model.safetensors`` file.
        convert_dtype: convert floating-point weights whose dtype differs from the model's
            (e.g. an fp16 export into an fp32 model) instead of refusing them.

    Returns:
        ``model``, holding the exported weights (on its own devices).

    Raises:
        TypeError, ValueError: ``model`` is not a module or ``export_dir`` not a path.
        FileNotFoundError: no ``model.safetensors`` there.
        ValueError: the file is not safetensors; a weight is missing, unexpected or of another shape;
            or of another dtype than the model's (without ``convert_dtype``), naming the tensor.
    """
    validate_model(model)
    check_path(export_dir, "export_dir")
    check_bool(convert_dtype, "convert_dtype")
    path = Path(export_dir)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"export_dir {path}: no {WEIGHTS_FILE} there; pass the folder export_state_dict wrote")
    safetensors = import_safetensors()
    try:
        tensors = safetensors.torch.load_file(weights, device="cpu")
    except safetensors.SafetensorError as err:
        raise ValueError(f"export_dir {path}: {weights} is not a readable safetensors file ({err})") from err
    _check_fits(model, tensors, path, convert_dtype)
    with torch.no_grad():  # every check passed: only now is anything copied (cast and moved per tensor)
        model.load_state_dict(tensors, strict=False)  # the names left out are tied to loaded ones
    return model


def _check_fits(model: nn.Module, tensors: Mapping[str, torch.Tensor], path: Path, convert_dtype: bool) -> None:
    """Raise, naming the problem, unless ``tensors`` fill every weight of ``model`` with the right shape and dtype."""
    expected = model.state_dict(keep_vars=True)  # the tensors themselves: tied names share one object
    tied: dict[int, list[str]] = {}
    for name, tensor in expected.items():
        tied.setdefault(id(tensor), []).append(name)
    missing = [name for name, t in expected.items() if not any(n in tensors for n in tied[id(t)])]
    unexpected = [name for name in tensors if name not in expected]
    shapes = [
        f"{name}: export {tuple(t.shape)} vs model {tuple(expected[name].shape)}"
        for name, t in tensors.items()
        if name in expected and t.shape != expected[name].shape
    ]
    problems = [
        f"{label} {items[:5]}{' ...' if len(items) > 5 else ''}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if items
    ]
    if problems:
        raise ValueError(
            f"export_dir {path}: the weights do not fit this {type(model).__name__} exactly; build the model "
            f"from the export's {CONFIG_FILE} as its {CARD_FILE} shows ({'; '.join(problems)}). Nothing was loaded"
        )
    dtypes = [(n, t.dtype, expected[n].dtype) for n, t in tensors.items() if t.dtype != expected[n].dtype]
    refused = [d for d in dtypes if not (convert_dtype and d[1].is_floating_point and d[2].is_floating_point)]
    if refused:
        (name, saved, wanted), more = refused[0], f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        fix = "it cannot be converted" if convert_dtype else "pass convert_dtype=True to convert it"
        raise ValueError(
            f"export_dir {path}: tensor {name!r} is {saved} in the export but {wanted} in the model{more}; "
            f"{fix}, or build the model in the export's dtype. Nothing was loaded"
        )


def import_safetensors() -> types.ModuleType:
    """The ``safetensors`` package with its ``torch`` module loaded, or an ImportError that says how to install it."""
    import_optional("safetensors.torch", "exporting and loading weights", package="safetensors")
    return import_optional("safetensors", "exporting and loading weights")


def _check_reload(
    model: nn.Module, fresh: nn.Module | None, weights: Path, config: Any, *, built_from: str, note: str
) -> dict[str, Any]:
    """Load ``weights`` into ``fresh`` with ``strict=True`` and compare its logits with ``model``'s.

    Both run on ``model``'s device, in eval mode, without gradients, on a probe batch of
    random token ids, and are left in the mode they were found in.

    Args:
        model: the exported model.
        fresh: a newly built model of the same architecture (None when none could be built).
        weights: the exported safetensors file.
        config: the model's config, for the vocabulary size and the maximum length.
        built_from: how ``fresh`` was built ('factory', 'config' or 'copy').
        note: ``fresh`` in words, for the reason.

    Returns:
        ``{'status', 'max_abs_diff', 'atol', 'built_from', 'reason'}``; any failure is
        ``status='fail'`` with the reason, never an exception.
    """
    result = {"status": "fail", "max_abs_diff": None, "atol": None, "built_from": built_from, "reason": note}
    if fresh is None:
        return result
    device = model_device(model)
    try:
        import_safetensors().torch.load_model(fresh.to(device), weights, strict=True, device=str(device))
    except Exception as err:  # a missing, unexpected or mis-shaped weight: the export does not reload
        return {**result, "reason": f"loading the export into {note} with strict=True failed: {_describe(err)}"}
    try:
        input_ids = _probe_ids(model, config, device)
        expected, actual = _logits(model, input_ids), _logits(fresh, input_ids)
    except Exception as err:  # the model cannot run on a probe batch, so the reload cannot be confirmed
        return {**result, "reason": f"running {note} and the original on a probe batch failed: {_describe(err)}"}
    return {**result, **_compare_logits(expected, actual, note, tuple(input_ids.shape))}


# --------------------------------------------------------------------------- arguments


def _unpack(results_or_model: Any) -> tuple[nn.Module, Mapping[str, Any]]:
    """The model and the results dict it came in (empty for a bare model)."""
    if isinstance(results_or_model, nn.Module):
        return results_or_model, {}
    if isinstance(results_or_model, Mapping):
        model = results_or_model.get("model")
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"results_or_model is a results dict with no model under 'model' (found {type(model).__name__}); "
                "pass the trained model itself, or a results dict holding it under 'model'"
            )
        return model, results_or_model
    raise TypeError(
        f"results_or_model must be a torch.nn.Module or a results dict holding one under 'model', "
        f"got {type(results_or_model).__name__}; pass the model instance (not its class or a (model, config) tuple)"
    )


def _resolve_config(config: Any, results: Mapping[str, Any], model: nn.Module) -> Any:
    """``config``, else the results' config, else ``model.config`` when it is a config this module can write."""
    if config is not None:
        return config
    if results.get("config") is not None:
        return results["config"]
    found = getattr(model, "config", None)  # built-in and Hugging Face models keep theirs here
    try:
        config_to_dict(found)
    except TypeError:  # no config there, or an attribute that only happens to be called config
        raise ValueError(
            f"config is required: {type(model).__name__} has no usable .config and none was passed; pass config=... "
            "(the dataclass, dict or SimpleNamespace the model was built from) so config.json can rebuild it"
        ) from None
    return found


def _check_factory(model_factory: Any) -> None:
    if model_factory is None:
        return
    if isinstance(model_factory, nn.Module) or not callable(model_factory):
        raise TypeError(
            f"model_factory must be a function that builds a new model, got {type(model_factory).__name__}; "
            "pass e.g. model_factory=lambda: MyModel(config)"
        )


# --------------------------------------------------------------------------- the model to reload into


def _fresh_model(
    model: nn.Module, config: Any, model_factory: Callable[[], nn.Module] | None
) -> tuple[nn.Module | None, str, str]:
    """A newly built model to reload the export into: ``(model or None, built_from, note)``.

    Built before anything is written, so a broken ``model_factory`` stops the export early.
    The global RNG is forked so that building it leaves the caller's random stream as it was.
    """
    with torch.random.fork_rng(devices=[]):
        if model_factory is not None:
            return _call_factory(model_factory, model), "factory", "the model from model_factory()"
        try:
            return type(model)(config), "config", f"a new {type(model).__name__}(config)"
        except Exception as err:  # this class cannot be rebuilt from its config; fall back to a copy
            why = f"{type(model).__name__}(config) failed: {_describe(err)}"
    fresh, not_independent = independent_copy(model)  # never the user's model: NaN would be written into it
    if fresh is None:
        return None, "copy", f"no model to reload into could be built ({why}; {not_independent})"
    return _nan_filled(fresh), "copy", f"a copy of the model with every weight set to NaN ({why})"


def _call_factory(model_factory: Callable[[], nn.Module], model: nn.Module) -> nn.Module:
    try:
        fresh = model_factory()
    except Exception as err:
        raise RuntimeError(
            f"model_factory() failed with {_describe(err)}; it must build and return a new model"
        ) from err
    if not isinstance(fresh, nn.Module):
        raise TypeError(
            f"model_factory() must return a torch.nn.Module, got {type(fresh).__name__}; "
            "return the model itself (not a (model, config) tuple)"
        )
    if fresh is model:
        raise ValueError("model_factory() returned the model being exported; it must build a new, separate model")
    return fresh


def _nan_copy(model: nn.Module) -> nn.Module:
    """A deep copy (ties kept) whose every saved tensor is overwritten, so only the loaded file can make it match."""
    return _nan_filled(copy.deepcopy(model))


def _nan_filled(fresh: nn.Module) -> nn.Module:
    """``fresh`` (a private copy) with every saved tensor overwritten, so only the loaded file can make it match.

    Non-persistent buffers (causal masks, rotary tables) are not exported, so they keep their
    values: a model rebuilt from code makes them the same way.
    """
    with torch.no_grad():
        for tensor in fresh.state_dict().values():
            if tensor.is_floating_point() or tensor.is_complex():
                tensor.fill_(float("nan"))
            else:
                tensor.zero_()  # integer state cannot hold NaN; strict loading still must overwrite it
    return fresh


# --------------------------------------------------------------------------- the comparison


def _probe_ids(model: nn.Module, config: Any, device: torch.device) -> torch.Tensor:
    """Reproducible token ids below the vocabulary, a few tokens long (at most the config's max_seq_len)."""
    vocab_size = detect_vocab_size(model, config)
    batch_size, seq_len = _PROBE_SHAPE
    seq_len = min(seq_len, config_size(config, "max_seq_len") or seq_len)
    return random_input_ids(batch_size, seq_len, vocab_size, device, seed=0)


def _logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with model_mode(model, training=False), torch.no_grad():
        return extract_logits(make_forward_fn(model)(input_ids))


def _compare_logits(expected: torch.Tensor, actual: torch.Tensor, note: str, shape: tuple[int, ...]) -> dict:
    """``status``, ``max_abs_diff``, ``atol`` and ``reason`` of one logits comparison."""
    if expected.shape != actual.shape:
        reason = f"{note} returns logits of shape {tuple(actual.shape)}, the original {tuple(expected.shape)}"
        return {"status": "fail", "reason": reason}
    if not torch.isfinite(expected).all():  # one deliberate sync; the check runs once per export
        return {"status": "fail", "reason": "the original model's logits are not finite, so no reload can match them"}
    atol = PARITY_ATOL.get(expected.dtype, PARITY_ATOL[torch.float32])
    diff = (expected.double() - actual.double()).abs().max().item()  # NaN when the reload left NaN weights
    if not math.isfinite(diff):
        reason = f"{note} loaded the export, but its logits are not finite (it needs a value the export lacks)"
        return {"status": "fail", "atol": atol, "reason": reason}
    if diff <= atol:
        reason = f"{note} loaded the export with strict=True and its logits on a {shape} probe batch match"
        return {"status": "ok", "max_abs_diff": diff, "atol": atol, "reason": f"{reason} (max abs diff {diff:.3g})"}
    reason = f"{note} loaded the export, but its logits differ from the original's by {diff:.3g} (atol {atol:g})"
    return {"status": "fail", "max_abs_diff": diff, "atol": atol, "reason": reason}


def _describe(err: BaseException, limit: int = 600) -> str:
    """``Type: message``, cut short: a strict-load error can list hundreds of keys."""
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= limit else text[:limit] + " ..."


# --------------------------------------------------------------------------- what is written


def _write_json(path: Path, data: Any) -> None:
    write_json_atomic(path, to_jsonable(data), allow_nan=False)
