"""Helpers shared by every tier: config access, calling a model, reading its output.

Users bring models in many shapes: hand-written modules, exports from visual
builders, Hugging Face models. This module is the one place that knows how to
call them and how to get logits and sizes out of them. It also holds what the
tiers share around that: a one-time probe pass (``probe_model``), reproducible
inputs, context managers that leave the user's model as they found it, the
token embedding lookup, argument checks and the pass/warn/fail verdict.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from utils.checks import check_positive_int as check_positive_int  # re-exported for the tiers
from utils.checks import check_positive_number as check_positive_number

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


# Config sizes that must be positive integers wherever a config gives them.
SIZE_FIELDS = ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads")


def config_size(config: Any, name: str) -> int | None:
    """A size field of the config (``vocab_size``, ``max_seq_len`` ...), checked: None when absent.

    Raises:
        ValueError: the config gives it, but not as a positive integer ('256', True, 2.5, NaN, 0).
    """
    value = get_config_value(config, name)
    check_positive_int(value, f"config.{name}", allow_none=True)
    return value if value is None else int(value)


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


def _forward_parameters(model: nn.Module) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # some compiled or C++ modules hide their signature
        return {}


def forward_accepts(model: nn.Module, name: str) -> bool:
    """True when ``model.forward`` takes the keyword ``name`` (by name, or through ``**kwargs``)."""
    params = _forward_parameters(model)
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def is_encoder_decoder(model: nn.Module, config: Any = None) -> bool:
    """True for an encoder-decoder (T5, BART): ``is_encoder_decoder`` set in ``config`` or ``model.config``,
    or a forward that requires ``decoder_input_ids``."""
    for source in (config, getattr(model, "config", None)):
        if get_config_value(source, "is_encoder_decoder") is True:
            return True
    decoder_ids = _forward_parameters(model).get("decoder_input_ids")
    return decoder_ids is not None and decoder_ids.default is inspect.Parameter.empty


def make_forward_fn(model: nn.Module, call: Callable[..., Any] | None = None) -> ForwardFn:
    """Decide once how to call ``model`` with ``input_ids`` (and ``attention_mask``).

    Returns ``forward(input_ids, attention_mask)``. The mask is passed only
    when the model's forward accepts it and a batch really has padding, and
    always by name, never in a second positional slot (minGPT's is ``targets``).
    An encoder-decoder also gets ``decoder_input_ids=input_ids`` (teacher forcing),
    so that the Tier 1 checks can run it. ``call`` is what to invoke instead of
    ``model`` itself, such as its DDP or ``torch.compile`` wrapper, whose own
    signature is just ``*args, **kwargs``.
    """
    call = model if call is None else call
    params = _forward_parameters(model)
    takes_var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepts_mask = forward_accepts(model, "attention_mask")
    feeds_decoder = is_encoder_decoder(model) and forward_accepts(model, "decoder_input_ids")
    first = next(iter(params.values()), None)
    positional = first is not None and first.kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )
    keyword = "input_ids" in params and params["input_ids"].kind is not inspect.Parameter.POSITIONAL_ONLY

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        kwargs = {"attention_mask": attention_mask} if accepts_mask and attention_mask is not None else {}
        if feeds_decoder:
            kwargs["decoder_input_ids"] = input_ids
        if not positional and (keyword or takes_var_kwargs):
            return call(input_ids=input_ids, **kwargs)
        return call(input_ids, **kwargs)

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
    vocab_size = config_size(config, "vocab_size")
    if vocab_size is not None:
        return vocab_size
    device = model_device(model)
    probe = torch.zeros(1, seq_len, dtype=torch.long, device=device)
    with model_mode(model, training=False), torch.no_grad():
        logits = extract_logits(make_forward_fn(model)(probe))
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


# ---------------------------------------------------------------------------
# Argument checks and verdicts shared by the tiers
# ---------------------------------------------------------------------------


def result_status(failed: bool, warned: bool = False) -> str:
    """'fail', 'warn' or 'pass', in that order of precedence."""
    return "fail" if failed else "warn" if warned else "pass"


# ---------------------------------------------------------------------------
# Model outputs and inputs
# ---------------------------------------------------------------------------


def model_output_tensor(output: Any) -> tuple[torch.Tensor, str]:
    """The main tensor of a model output and its kind, ``'logits'`` or ``'hidden'``.

    Tries ``extract_logits`` first, then ``last_hidden_state`` (Hugging Face
    base models such as ``BertModel``). The kind is refined by ``probe_model``.

    Raises:
        TypeError: when the output holds neither logits nor hidden states.
    """
    try:
        return extract_logits(output), "logits"
    except TypeError as err:
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is None and isinstance(output, Mapping):
            hidden = output.get("last_hidden_state")
        if isinstance(hidden, torch.Tensor):
            return hidden, "hidden"
        raise TypeError(f"{err} (an encoder may instead return an object with .last_hidden_state)") from err


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every floating-point tensor at the top level of a model output."""
    if isinstance(output, torch.Tensor):
        values = [output]
    elif isinstance(output, Mapping):
        values = list(output.values())
    elif isinstance(output, (tuple, list)):
        values = list(output)
    else:
        values = [model_output_tensor(output)[0]]
    return [v for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()]


def random_input_ids(
    batch_size: int, seq_len: int, vocab_size: int, device: torch.device, seed: int = 0
) -> torch.Tensor:
    """Reproducible random token ids ``(batch_size, seq_len)`` on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator).to(device)


# ---------------------------------------------------------------------------
# Context managers that leave the user's model as they found it
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put ``model`` in train or eval mode for a block, then restore its mode."""
    was_training = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def preserved_grads(model: nn.Module) -> Iterator[None]:
    """Start the block with no gradients and give the user's ``.grad`` back afterwards."""
    params = list(model.parameters())
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for p, grad in zip(params, saved, strict=True):
            p.grad = grad


@contextlib.contextmanager
def replaced_output(module: nn.Module, hook: Any) -> Iterator[None]:
    """Register ``hook(module, args, output) -> new output`` for the block only."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ---------------------------------------------------------------------------
# The token embedding
# ---------------------------------------------------------------------------

_TOKEN_EMBEDDING_NAMES = ("tok", "word", "wte", "embed_tokens", "token")


def find_token_embedding(model: nn.Module, vocab_size: int) -> nn.Embedding:
    """The token embedding: ``model.get_input_embeddings()`` when it has one, else
    the ``nn.Embedding`` with ``num_embeddings == vocab_size``.

    Never the first embedding found: a position embedding may come first. When
    several embeddings have ``vocab_size`` rows, one whose name says token
    (tok, word, wte, embed_tokens) wins.

    Raises:
        ValueError: no embedding with ``vocab_size`` rows exists.
    """
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        with contextlib.suppress(NotImplementedError, AttributeError):
            embedding = getter()
            if isinstance(embedding, nn.Embedding):
                return embedding
    candidates = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding) and m.num_embeddings == vocab_size
    ]
    if not candidates:
        found = {n: m.num_embeddings for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
        raise ValueError(
            f"no nn.Embedding with num_embeddings == vocab_size ({vocab_size}) in the model (found {found}); "
            "check config.vocab_size or define model.get_input_embeddings()"
        )
    named = [c for c in candidates if any(key in c[0].lower() for key in _TOKEN_EMBEDDING_NAMES)]
    return (named or candidates)[0][1]


# ---------------------------------------------------------------------------
# The probe pass every Tier 1 and Tier 2 check starts with
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelProbe:
    """What one probe forward pass learned about a model.

    Attributes:
        forward: ``forward(input_ids, attention_mask=None)`` from ``make_forward_fn``.
        device: where the model's parameters live; inputs are built there.
        vocab_size: from the config.
        max_seq_len: from the config, or None when the config has none.
        output_kind: ``'logits'`` for (B, T, V) outputs, ``'hidden'`` for (B, T, H).
        output_dim: the last dimension of the output (V or H).
    """

    forward: ForwardFn
    device: torch.device
    vocab_size: int
    max_seq_len: int | None
    output_kind: str
    output_dim: int

    def seq_len(self, seq_len: int | None, cap: int) -> int:
        """``seq_len`` checked, or by default ``cap`` shortened to the model's ``max_seq_len``."""
        if seq_len is not None:
            check_positive_int(seq_len, "seq_len")
            return seq_len
        return min(cap, self.max_seq_len) if self.max_seq_len else cap


def probe_model(model: Any, config: Any, purpose: str, required: tuple[str, ...] = ("vocab_size",)) -> ModelProbe:
    """Validate ``model`` and ``config`` and run one tiny forward pass, before any real work.

    Example:
        >>> probe = probe_model(model, config, "my_check")
        >>> probe.output_kind, probe.output_dim
        ('logits', 256)

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or its output holds no usable tensor.
        ValueError: ``config`` lacks a field in ``required``, or the output is not 3-D.
        RuntimeError: the model fails on a (1, 4) batch of token ids.
    """
    validate_model(model)
    require_config_values(config, tuple(dict.fromkeys(("vocab_size", *required))), purpose)
    vocab_size = config_size(config, "vocab_size")
    max_seq_len = config_size(config, "max_seq_len")
    device, forward = model_device(model), make_forward_fn(model)
    input_ids = random_input_ids(1, min(4, max_seq_len or 4), vocab_size, device)
    with model_mode(model, False), torch.no_grad():
        try:
            output = forward(input_ids)
        except Exception as err:
            raise RuntimeError(
                f"{purpose}: calling the model on input_ids of shape {tuple(input_ids.shape)} failed with "
                f"{type(err).__name__}: {err}; forward must accept (input_ids, attention_mask=None)"
            ) from err
    try:
        tensor, kind = model_output_tensor(output)
    except TypeError as err:
        raise TypeError(f"{purpose}: the model's output is unusable: {err}") from err
    if tensor.ndim != 3 or tuple(tensor.shape[:2]) != tuple(input_ids.shape):
        raise ValueError(
            f"{purpose}: for input_ids of shape {tuple(input_ids.shape)} the model returned shape "
            f"{tuple(tensor.shape)}; expected (batch, seq, vocab) logits or (batch, seq, hidden) states"
        )
    kind = "logits" if kind == "logits" and tensor.shape[-1] == vocab_size else "hidden"
    return ModelProbe(forward, device, vocab_size, max_seq_len, kind, int(tensor.shape[-1]))
