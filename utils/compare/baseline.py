"""The baseline of a comparison: the built-in GPT of your model's size, a module you pass, or an 'hf:' model.

``default_baseline`` sizes ``utils.models.tiny_gpt`` to a model's parameter count, with its
vocabulary and sequence length. An 'hf:NAME' baseline is built from a Hugging Face config in
the local cache only (``hub_offline``), with fresh weights. ``resolve_baseline`` applies one
rule to modules and 'hf:' names alike: a baseline that cannot read the same token ids at the
same length is refused with the reason.

Example:
    >>> from utils.models import tiny_gpt
    >>> model, config = tiny_gpt()
    >>> baseline, baseline_config = default_baseline(model, config)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from utils.causality import encoder_decoder_reason
from utils.checks import check_positive_int
from utils.model_copy import private_copy
from utils.model_helpers import config_size, count_parameters, detect_vocab_size, is_encoder_decoder, validate_model
from utils.models import ModelConfig, TinyTransformer

# The default baseline's parameter count is within this share of the user's whenever some shape
# of the built-in GPT gets there; a note says so when none does.
PARAMETER_TOLERANCE = 0.05
# Among shapes this close to the best count (as a share of the target), the one nearest the
# user's d_model and n_layers wins, so the baseline looks like the user's model where it can.
SHAPE_SLACK = 0.005
BASELINE_D_MODELS = tuple(range(16, 4097, 16))
BASELINE_LAYERS = tuple(range(1, 49))
# tiny_gpt's own aspect (d_model 128 over 4 layers): the shape preferred when the config gives none.
DEFAULT_WIDTH_PER_LAYER = 32

HF_PREFIX = "hf:"


@dataclass(frozen=True)
class Contender:
    """One side of the comparison.

    Attributes:
        model: what is trained: a baseline built here, or in place of a user's module its private copy
            (``training_arms``).
        config: its config, as the engine reads it.
        vocab_size: its vocabulary (config, else the output width).
        description: how it came to be, for the report.
    """

    model: nn.Module
    config: Any
    vocab_size: int
    description: dict[str, Any]


def check_baseline_argument(baseline: Any) -> None:
    """The baseline's form: None, a (module, config) pair, or an 'hf:NAME' string."""
    if baseline is None:
        return
    if isinstance(baseline, str):
        if not baseline.startswith(HF_PREFIX) or not baseline[len(HF_PREFIX) :].strip():
            raise ValueError(
                f"baseline={baseline!r}: a string baseline must be 'hf:NAME' (a Hugging Face model in the local "
                "cache, e.g. 'hf:gpt2', or a local folder 'hf:/path'); pass baseline=None for the built-in GPT"
            )
        return
    if isinstance(baseline, nn.Module):
        raise TypeError("baseline must be a (module, config) tuple, not a bare module; pass baseline=(module, config)")
    if not isinstance(baseline, (tuple, list)) or len(baseline) != 2 or not isinstance(baseline[0], nn.Module):
        raise TypeError(
            f"baseline must be None, a (module, config) tuple or 'hf:NAME', got {type(baseline).__name__}; "
            "e.g. baseline=tiny_gpt(d_model=64)"
        )


@contextlib.contextmanager
def training_copy(module: nn.Module, name: str, *, probe_len: int = 2) -> Iterator[nn.Module]:
    """What to train in the caller's place: a private copy, proved independent (``utils.model_copy``).

    When no independent copy can be made (a closure still calls the caller's modules, or
    deepcopy fails), a warning says so and the caller's own module trains, its weights, buffers,
    modes and gradients restored when the block ends.
    """
    with private_copy(module, name, probe_len=probe_len) as trainee:
        yield trainee


@contextlib.contextmanager
def training_arms(
    model: nn.Module, config: Any, vocab_size: int, rival: Contender, seq_len: int
) -> Iterator[dict[str, Contender]]:
    """Both sides of the comparison, each training in place of a module the caller owns (``training_copy``)."""
    probe_len = min(seq_len, 8)
    with contextlib.ExitStack() as stack:
        yours = stack.enter_context(training_copy(model, "your model", probe_len=probe_len))
        if rival.description["kind"] == "module":  # built by the caller: train it in its place too
            rival = dataclasses.replace(
                rival, model=stack.enter_context(training_copy(rival.model, "the baseline module", probe_len=probe_len))
            )
        yield {"yours": Contender(yours, config, vocab_size, {"name": type(model).__name__}), "baseline": rival}


def resolve_baseline(
    baseline: Any, your_model: nn.Module, your_config: Any, your_vocab: int, seq_len: int, seed: int
) -> Contender | str:
    """The baseline to train, or the reason it cannot be compared (the same rule for modules and 'hf:' names)."""
    if baseline is None:
        # The user's max_seq_len when the config gives one: position embeddings are part of its count.
        max_seq_len = config_size(your_config, "max_seq_len") or seq_len
        model, config = default_baseline(your_model, your_config, max_seq_len=max_seq_len, seed=seed)
        description = {"kind": "default", "name": "tiny_gpt", **dataclasses.asdict(config)}
        return Contender(model, config, your_vocab, description)
    if isinstance(baseline, str):
        name = baseline[len(HF_PREFIX) :].strip()
        loaded = _load_hf_baseline(name, seed)
        if isinstance(loaded, str):
            return loaded
        (model, config), kind = loaded, "hf"
    else:
        (model, config), kind, name = baseline, "module", type(baseline[0]).__name__
    if is_encoder_decoder(model, config):
        return f"the {kind} baseline {name!r} cannot be compared: {encoder_decoder_reason(model, config)}"
    vocab_size = detect_vocab_size(model, config, seq_len=min(8, seq_len))
    misfit = _baseline_misfit(vocab_size, config_size(config, "max_seq_len"), your_vocab, seq_len)
    if misfit is not None:
        return f"the {kind} baseline {name!r} cannot be compared: {misfit}"
    description = {"kind": kind, "name": name, "class": type(model).__name__, "vocab_size": vocab_size}
    if kind == "hf":
        description["weights"] = "fresh, drawn under seed from the cached config (pretrained weights unused)"
    return Contender(model, config, vocab_size, description)


def _baseline_misfit(vocab_size: int, max_seq_len: int | None, your_vocab: int, seq_len: int) -> str | None:
    """Why the baseline cannot train on the same token ids at the same length, or None when it can."""
    if vocab_size < your_vocab:
        return (
            f"its vocabulary ({vocab_size}) is smaller than your model's ({your_vocab}), so it cannot read the "
            f"same token ids; pass a baseline with vocab_size >= {your_vocab}, or baseline=None"
        )
    if max_seq_len is not None and max_seq_len < seq_len:
        return (
            f"it takes at most {max_seq_len} positions, fewer than seq_len={seq_len}; pass seq_len<={max_seq_len} "
            "or a baseline with more positions"
        )
    return None


def default_baseline(
    model: nn.Module, config: Any, *, max_seq_len: int | None = None, seed: int = 0
) -> tuple[TinyTransformer, ModelConfig]:
    """The built-in GPT with ``model``'s vocabulary and sequence length, sized to its parameter count.

    Every shape with ``d_model`` in ``BASELINE_D_MODELS`` and ``n_layers`` in ``BASELINE_LAYERS`` is
    counted (exactly, without building it). The closest count wins; among shapes within
    ``SHAPE_SLACK`` of it, the one nearest the config's ``d_model`` and ``n_layers`` (or, when it
    gives neither, nearest tiny_gpt's 32 channels per layer). The count does not depend on
    ``n_heads``: the config's head count is kept where it divides ``d_model``, else heads of 32
    (or 16) channels. The weights are drawn under ``seed``; the global RNG is left as it was.

    Args:
        model: the model to match; its total parameter count (shared weights once) is the target.
        config: its config: ``vocab_size`` (else the output width), ``max_seq_len``, and the
            optional ``d_model``, ``n_layers`` and ``n_heads`` the shape leans towards.
        max_seq_len: the baseline's ``max_seq_len``; default the config's.
        seed: seeds the baseline's initial weights.

    Example:
        >>> baseline, baseline_config = default_baseline(model, config)
        >>> count_parameters(baseline)["total"] / count_parameters(model)["total"]
    """
    validate_model(model)
    check_positive_int(max_seq_len, "max_seq_len", allow_none=True)
    max_seq_len = max_seq_len or config_size(config, "max_seq_len")
    if max_seq_len is None:
        raise ValueError("config has no max_seq_len (or n_positions/max_position_embeddings); pass max_seq_len=")
    vocab_size = detect_vocab_size(model, config, seq_len=min(8, max_seq_len))
    preferred = (config_size(config, "d_model"), config_size(config, "n_layers"))
    d_model, n_layers = _closest_shape(count_parameters(model)["total"], vocab_size, max_seq_len, preferred)
    n_heads = config_size(config, "n_heads")
    if not n_heads or d_model % n_heads:
        n_heads = d_model // 32 if d_model % 32 == 0 else d_model // 16
    sizes = ModelConfig(
        vocab_size=vocab_size, max_seq_len=max_seq_len, d_model=d_model, n_layers=n_layers, n_heads=n_heads
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyTransformer(sizes), sizes


def gpt_parameter_count(vocab_size: int, max_seq_len: int, d_model: int, n_layers: int) -> int:
    """Parameters of ``tiny_gpt`` with these sizes (the LM head shares the token embedding)."""
    # Per block: two LayerNorms (4d), qkv (3d^2 + 3d), proj (d^2 + d), MLP (8d^2 + 5d).
    block = 12 * d_model**2 + 13 * d_model
    return (vocab_size + max_seq_len) * d_model + n_layers * block + 2 * d_model  # + the final LayerNorm


def _closest_shape(
    target: int, vocab_size: int, max_seq_len: int, preferred: tuple[int | None, int | None]
) -> tuple[int, int]:
    """(d_model, n_layers) with the count closest to ``target``, nearest the preferred shape among near-ties."""
    counts = {
        (d, n): gpt_parameter_count(vocab_size, max_seq_len, d, n) for d in BASELINE_D_MODELS for n in BASELINE_LAYERS
    }
    errors = {shape: abs(count - target) / target for shape, count in counts.items()}
    best = min(errors.values())
    near = [shape for shape, error in errors.items() if error <= best + SHAPE_SLACK]
    return min(near, key=lambda shape: (_shape_distance(shape, preferred), errors[shape]))


def _shape_distance(shape: tuple[int, int], preferred: tuple[int | None, int | None]) -> float:
    """How far (d_model, n_layers) is from the preferred one, on a log scale."""
    (d_model, n_layers), (want_d, want_n) = shape, preferred
    if want_d is None and want_n is None:
        return abs(math.log(d_model / n_layers / DEFAULT_WIDTH_PER_LAYER))
    return sum(abs(math.log(have / want)) for have, want in ((d_model, want_d), (n_layers, want_n)) if want)


def _load_hf_baseline(name: str, seed: int) -> tuple[nn.Module, Any] | str:
    """A causal LM built from a locally cached Hugging Face config, or the reason it cannot be."""
    try:
        import transformers
    except ImportError:
        return f"'hf:{name}' needs the 'transformers' package; install it with `pip install transformers`"
    with hub_offline():
        try:
            config = transformers.AutoConfig.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError) as err:
            return (
                f"'hf:{name}' is not in the local Hugging Face cache ({type(err).__name__}), and this comparison "
                f"never downloads. Fetch it once where there is a network (`hf download {name} config.json`), "
                "pass a local folder as 'hf:/path/to/folder', or baseline=None for the built-in GPT"
            )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return transformers.AutoModelForCausalLM.from_config(config), config
    except (ValueError, KeyError) as err:
        return f"'hf:{name}' ({type(config).__name__}) has no causal-LM head to train: {err}"


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hold the Hugging Face Hub offline for a block, then restore what was set.

    ``local_files_only=True`` alone is not enough: ``huggingface_hub`` still fetches a registry
    for its user-agent header unless its ``constants.HF_HUB_OFFLINE`` is set, and that constant is
    read from the environment once, at import. So both the environment and the constant are set
    here (the one place this module touches ``huggingface_hub``'s internals).
    """
    from huggingface_hub import constants

    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
