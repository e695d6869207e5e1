"""Weights & Biases helpers: name the model family, build a flat run config, open and close runs.

``wandb`` is optional: it is imported inside the functions that need it, so
``import utils.wandb_helpers`` works without it. Runs never prompt for a
login: without an API key they are written offline and can be uploaded later
with ``wandb sync <dir>``.

Example:
    >>> plan = resolve_precision("auto", use_amp=True)
    >>> wandb_config = build_wandb_config(model, config, precision=plan.name, learning_rate=3e-4)
    >>> run = initialize_wandb_run(name="amp-bf16", config=wandb_config)
    >>> run.log({"train/loss": 2.3})
    >>> finish_wandb_run(run)
"""

from __future__ import annotations

import netrc
import os
import platform
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
import torch.nn as nn

from utils.model_helpers import count_parameters, device_name, get_config_value, model_device, validate_model

WANDB_MODES = ("online", "offline", "disabled")
PRECISION_NAMES = ("fp32", "fp16", "bf16")
DEFAULT_WANDB_HOST = "https://api.wandb.ai"
_CONFIG_SIZE_FIELDS = ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads")

# Legacy WANDB_MODE values that wandb itself still accepts.
_ENV_MODE_ALIASES = {"dryrun": "offline", "run": "online"}

# Hugging Face ``model_type`` values, normalized with _normalize_type ('-' -> '_').
_SEQ2SEQ_MODEL_TYPES = frozenset({
    "t5", "mt5", "umt5", "longt5", "t5gemma", "switch_transformers", "bart", "mbart", "plbart", "mvp",
    "pegasus", "pegasus_x", "bigbird_pegasus", "marian", "fsmt", "m2m_100", "nllb_moe", "led",
    "prophetnet", "xlm_prophetnet", "blenderbot", "blenderbot_small", "encoder_decoder",
    "speech_encoder_decoder", "vision_encoder_decoder", "whisper", "seamless_m4t", "seq2seq",
})  # fmt: skip
_DECODER_MODEL_TYPES = frozenset({
    "gpt", "gpt2", "openai_gpt", "gpt_neo", "gpt_neox", "gptj", "gpt_bigcode", "codegen", "ctrl",
    "llama", "mistral", "mixtral", "opt", "bloom", "falcon", "mpt", "phi", "phi3", "qwen2", "qwen3",
    "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "stablelm", "starcoder2", "biogpt", "persimmon",
    "cohere", "granite", "deepseek_v2", "deepseek_v3", "mamba", "rwkv", "jamba", "smollm3",
})  # fmt: skip
_ENCODER_MODEL_TYPES = frozenset({
    "bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta_v2", "xlm_roberta",
    "xlm_roberta_xl", "camembert", "flaubert", "xlm", "mpnet", "ernie", "funnel", "longformer",
    "big_bird", "megatron_bert", "mobilebert", "squeezebert", "convbert", "rembert", "roformer",
    "nezha", "luke", "canine", "ibert", "data2vec_text", "modernbert", "esm", "layoutlm",
})  # fmt: skip

# Lower-case substrings of class names (or unknown model_type strings), checked
# family by family in this order: 'encoderdecoder' must win before 'decoder' does.
_NAME_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("t5", ("t5", "bart", "pegasus", "marian", "seq2seq", "encoderdecoder", "encoder_decoder")),
    ("gpt", ("gpt", "causallm", "decoder", "llama", "mistral")),
    ("bert", ("bert", "encoder", "maskedlm", "electra")),
)


# --------------------------------------------------------------------------- model family


def detect_model_type(model: nn.Module, config: Any = None) -> str:
    """Name the model family: 'gpt' (decoder-only), 'bert' (encoder), 't5' (encoder-decoder) or 'custom'.

    Checked in order: the config's ``is_encoder_decoder`` and ``model_type``;
    the module structure (an ``nn.Transformer``, or both an encoder and a
    decoder stack, means 't5'); the config's ``is_decoder``/``causal`` flags;
    then class names, seq2seq names first. So an encoder-decoder is never
    reported as 'gpt' unless its config says so.

    Args:
        model: the model. Its ``.config`` is used when ``config`` is None.
        config: a dataclass, dict, namespace or Hugging Face config, or None.

    Returns:
        'gpt', 'bert', 't5' or 'custom'.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.

    Example:
        >>> detect_model_type(*tiny_gpt())
        'gpt'
    """
    validate_model(model)
    if config is None:
        config = getattr(model, "config", None)
    return (
        _family_from_config_type(config)
        or ("t5" if _has_encoder_and_decoder(model) else None)
        or _family_from_causal_flag(config)
        or _family_from_class_names(model)
        or "custom"
    )


def _normalize_type(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _family_from_config_type(config: Any) -> str | None:
    """The family named by ``is_encoder_decoder`` or ``model_type``, or None when the config does not say."""
    if get_config_value(config, "is_encoder_decoder") is True:
        return "t5"
    model_type = get_config_value(config, "model_type")
    if isinstance(model_type, str) and model_type.strip():
        return _family_of_model_type(_normalize_type(model_type))
    return None


def _family_from_causal_flag(config: Any) -> str | None:
    """'gpt' for a causal config, 'bert' for ``causal=False``; checked after the structure."""
    # HF configs default is_decoder to False for every model, so only True is a signal.
    if get_config_value(config, "is_decoder") is True or get_config_value(config, "causal") is True:
        return "gpt"
    if get_config_value(config, "causal") is False:
        return "bert"
    return None


def _family_of_model_type(model_type: str) -> str | None:
    for family, known in (("t5", _SEQ2SEQ_MODEL_TYPES), ("gpt", _DECODER_MODEL_TYPES), ("bert", _ENCODER_MODEL_TYPES)):
        if model_type in known:
            return family
    return _family_of_name(model_type)


def _family_of_name(name: str) -> str | None:
    """Match one class name or type string against the family patterns, seq2seq first."""
    lowered = name.lower()
    for family, patterns in _NAME_PATTERNS:
        if any(pattern in lowered for pattern in patterns):
            return family
    return None


def _family_from_class_names(model: nn.Module) -> str | None:
    """The family suggested by the model's class name, else by its submodules' class names."""
    top_level = _family_of_name(type(model).__name__)
    if top_level is not None:
        return top_level
    families = {_family_of_name(type(module).__name__) for module in model.modules()}
    for family in ("t5", "gpt", "bert"):
        if family in families:
            return family
    return None


def _has_encoder_and_decoder(model: nn.Module) -> bool:
    """True for an ``nn.Transformer`` or a model with both an encoder and a decoder stack.

    A stack is a submodule with children whose attribute name ends in
    'encoder'/'decoder', or a built-in ``nn.TransformerEncoder``/``Decoder``.
    A bare layer named 'decoder' (BERT's output projection is one) does not count.
    """
    has_encoder = has_decoder = False
    for name, module in model.named_modules():
        if isinstance(module, nn.Transformer):
            return True
        leaf = name.rsplit(".", 1)[-1].lower()
        is_stack = next(module.children(), None) is not None
        has_encoder |= isinstance(module, nn.TransformerEncoder) or (is_stack and leaf.endswith("encoder"))
        has_decoder |= isinstance(module, nn.TransformerDecoder) or (is_stack and leaf.endswith("decoder"))
    return has_encoder and has_decoder


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
            Nested dicts are flattened to 'outer.inner' keys; values that are not
            str/int/float/bool/None are stored as their string form.

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
    run_config = {
        **_describe_model(model, config),
        "mixed_precision": precision,
        "amp_enabled": precision != "fp32",
        **_describe_environment(model_device(model)),
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
    sizes = {name: _to_json_value(get_config_value(config, name)) for name in _CONFIG_SIZE_FIELDS}
    return {
        "model_type": detect_model_type(model, config),
        "model_class": type(model).__name__,
        "params_total": counts["total"],
        "params_trainable": counts["trainable"],
        **sizes,
    }


def _describe_environment(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
    }


def _flatten_hyperparams(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten_hyperparams(value, prefix=f"{name}."))
        else:
            flat[name] = _to_json_value(value)
    return flat


def _to_json_value(value: Any) -> str | int | float | bool | None:
    """Keep JSON scalars; unwrap one-element tensors and numpy scalars; stringify the rest."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()  # a sync, but this runs once per run, not per step
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        return item()
    return str(value)


# --------------------------------------------------------------------------- runs


def initialize_wandb_run(
    project: str = "utils-transformer-tests",
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    group: str | None = None,
    tags: Sequence[str] | None = None,
    mode: str | None = None,
    dir: str | os.PathLike | None = None,
    **init_kwargs: Any,
) -> Any:
    """Start a W&B run that never prompts for a login.

    The mode is ``mode`` if given, else ``WANDB_MODE``, else 'online'. An
    online run without an API key (no ``WANDB_API_KEY`` and no netrc entry for
    the W&B host) is written offline instead, with one warning that says where
    and how to upload it later (``wandb sync <dir>``).

    Args:
        project: the W&B project.
        name: the run's display name (offline runs may show None until synced).
        config: a flat dict, e.g. from ``build_wandb_config``.
        group: optional run group, e.g. one sweep or benchmark.
        tags: optional list of string tags.
        mode: None, 'online', 'offline' or 'disabled'.
        dir: folder under which wandb writes ``wandb/<run folder>``; created if
            missing. Default: ``WANDB_DIR`` as it is now, else the current directory.
        **init_kwargs: passed on to ``wandb.init`` (``settings`` replaces the
            default silent settings).

    Returns:
        The ``wandb`` Run (a no-op run for mode 'disabled').

    Raises:
        ValueError: on a bad ``mode``, ``WANDB_MODE``, ``project`` or ``tags``.
        TypeError: if ``config`` is not a mapping.
        ImportError: if wandb is not installed.

    Example:
        >>> run = initialize_wandb_run(name="baseline", config=wandb_config, mode="offline")
    """
    requested = _requested_mode(mode)
    _validate_run_args(project, config, tags)
    wandb = _import_wandb()
    no_key = requested == "online" and not has_wandb_api_key()
    # wandb reads WANDB_DIR once per process; pass it each time so a later change is honoured.
    dir = dir if dir is not None else os.environ.get("WANDB_DIR")
    if dir is not None:
        Path(dir).mkdir(parents=True, exist_ok=True)  # wandb warns about a missing dir
    init_kwargs.setdefault("settings", wandb.Settings(silent=True))
    run = wandb.init(
        project=project,
        name=name,
        config=dict(config) if config is not None else None,
        group=group,
        tags=list(tags) if tags is not None else None,
        mode="offline" if no_key else requested,
        dir=str(dir) if dir is not None else None,
        **init_kwargs,
    )
    if no_key:
        sync_dir = run.settings.sync_dir
        warnings.warn(
            f"W&B: no API key found (WANDB_API_KEY or a netrc entry for {_wandb_host()}), so this run is "
            f"logged offline to {sync_dir}; upload it later with `wandb sync {sync_dir}`",
            stacklevel=2,
        )
    return run


def _requested_mode(mode: str | None) -> str:
    """The mode asked for by the argument, else ``WANDB_MODE``, else 'online'."""
    if mode is not None:
        if mode not in WANDB_MODES:
            raise ValueError(f"mode must be None or one of {WANDB_MODES}, got {mode!r}")
        return mode
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    env_mode = _ENV_MODE_ALIASES.get(env_mode, env_mode)
    if not env_mode:
        return "online"
    if env_mode not in WANDB_MODES:
        raise ValueError(
            f"WANDB_MODE={os.environ['WANDB_MODE']!r} is not a W&B mode; set it to one of {WANDB_MODES} "
            "or pass mode= explicitly"
        )
    return env_mode


def _validate_run_args(project: Any, config: Any, tags: Any) -> None:
    if not isinstance(project, str) or not project.strip():
        raise ValueError(f"project must be a non-empty string, got {project!r}")
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(
            f"config must be a dict (e.g. from build_wandb_config), got {type(config).__name__}"
        )
    if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str) for t in tags)):
        raise ValueError(f"tags must be a list of strings, got {tags!r}; e.g. tags=['amp', 'bf16']")


def start_run_unless_active(
    model: nn.Module,
    config: Any,
    *,
    precision: str,
    project: str = "utils-transformer-tests",
    name: str | None = None,
    **hyperparams: Any,
) -> Any:
    """Log to the active W&B run if there is one; else start one and return it.

    Returns:
        The run started here, which the caller must finish, or None when a
        run was already active (the caller leaves that one alone).
    """
    import wandb

    if wandb.run is not None:
        return None
    wandb_config = build_wandb_config(model, config, precision=precision, **hyperparams)
    return initialize_wandb_run(project=project, name=name, config=wandb_config)


def has_wandb_api_key() -> bool:
    """True if wandb could log in without asking: ``WANDB_API_KEY``, an identity token, or a netrc entry.

    Reads the environment and the netrc file only; it never contacts a server.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(_wandb_host()).netloc
    for path in _netrc_paths():
        try:
            credentials = netrc.netrc(path).authenticators(host)
        except (FileNotFoundError, netrc.NetrcParseError, OSError):
            continue
        if credentials and credentials[2]:
            return True
    return False


def _wandb_host() -> str:
    return os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_HOST).rstrip("/")


def _netrc_paths() -> list[Path]:
    # Same search order as wandb: $NETRC wins, then ~/.netrc, then ~/_netrc.
    if os.environ.get("NETRC"):
        return [Path(os.environ["NETRC"]).expanduser()]
    return [Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()]


def describe_wandb_run(run: Any = None) -> dict[str, Any]:
    """The run's name, id, project, mode, local folder and summary metrics, as a JSON-friendly dict.

    Read it before ``run.finish()``: wandb empties ``run.summary`` once the run is finished.
    Metrics logged with an explicit ``step=`` reach the summary when the next step
    is logged (``finish_wandb_run`` commits the last one).

    Args:
        run: a wandb Run; None means the active ``wandb.run``.

    Returns:
        A dict with keys name, id, project, mode, dir and summary (metric -> last value;
        wandb's own '_step'/'_runtime'/'_timestamp' left out).

    Raises:
        RuntimeError: if ``run`` is None and no run is active.
    """
    run = _resolve_run(run)
    summary = {key: _summary_value(value) for key, value in dict(run.summary).items() if not key.startswith("_")}
    return {
        "name": run.name,
        "id": run.id,
        "project": run.project,
        "mode": run.settings.mode,
        "dir": str(run.settings.sync_dir),
        "summary": summary,
    }


def _summary_value(value: Any) -> str | int | float | bool | None:
    """A scalar as is; a logged media object (histogram, table ...) as '<its type>'; a nested dict as text."""
    if not callable(getattr(value, "keys", None)):
        return _to_json_value(value)
    nested = {key: value[key] for key in value.keys()}  # wandb's SummarySubDict is not a Mapping
    return f"<{nested['_type']}>" if isinstance(nested.get("_type"), str) else str(nested)


def print_wandb_summary(run: Any = None) -> dict[str, Any]:
    """Print a short summary of a W&B run and return it (see ``describe_wandb_run``).

    Args:
        run: a wandb Run; None means the active ``wandb.run``.

    Returns:
        The dict from ``describe_wandb_run``.

    Raises:
        RuntimeError: if ``run`` is None and no run is active.

    Example:
        >>> info = print_wandb_summary(run)
        W&B run 'baseline' (id 1a2b3c4d, offline) in utils-transformer-tests
    """
    info = describe_wandb_run(run)
    print(f"W&B run {info['name']!r} (id {info['id']}, {info['mode']}) in {info['project']}")
    print(f"  local dir: {info['dir']}")
    for key, value in sorted(info["summary"].items()):
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    return info


def finish_wandb_run(run: Any = None, *, exit_code: int | None = None) -> dict[str, Any]:
    """Finish a W&B run and return its description, read just before finishing.

    Args:
        run: a wandb Run; None means the active ``wandb.run``.
        exit_code: passed to ``run.finish``; non-zero marks the run as failed.

    Returns:
        The dict from ``describe_wandb_run``, taken before wandb clears the summary.

    Raises:
        RuntimeError: if ``run`` is None and no run is active, or the run is already finished.
    """
    run = _resolve_run(run)
    wandb = _import_wandb()
    try:
        # A row logged with an explicit step= waits for the next step; commit it so the summary is final.
        run.log({}, commit=True)
    except wandb.errors.UsageError as err:  # what wandb raises for a finished run
        raise RuntimeError(f"W&B run {run.id} is already finished; there is nothing left to finish") from err
    info = describe_wandb_run(run)
    run.finish(exit_code=exit_code)
    return info


def _resolve_run(run: Any) -> Any:
    if run is not None:
        return run
    wandb = _import_wandb()
    if wandb.run is None:
        raise RuntimeError(
            "there is no active W&B run; start one with initialize_wandb_run(...) or pass run="
        )
    return wandb.run


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as err:
        raise ImportError(
            "W&B logging needs the 'wandb' package; install it with `pip install wandb`, "
            "or run without W&B logging"
        ) from err
    return wandb
