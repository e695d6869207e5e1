"""Name a model's family: 'gpt' (decoder-only), 'bert' (encoder), 't5' (encoder-decoder) or 'custom'.

The answer comes from the config first (``is_encoder_decoder``, ``model_type``),
then the module structure, then the config's causal flags, then class names.

Example:
    >>> model, config = tiny_gpt()
    >>> detect_model_type(model, config)
    'gpt'
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from utils.model_helpers import get_config_value, validate_model

# Hugging Face ``model_type`` values, space-separated and normalized with _normalize_type ('-' -> '_').
_SEQ2SEQ_MODEL_TYPES = frozenset(
    (
        "t5 mt5 umt5 longt5 t5gemma switch_transformers bart mbart plbart mvp pegasus pegasus_x "
        "bigbird_pegasus marian fsmt m2m_100 nllb_moe led prophetnet xlm_prophetnet blenderbot "
        "blenderbot_small encoder_decoder speech_encoder_decoder vision_encoder_decoder whisper seamless_m4t "
        "seq2seq"
    ).split()
)
_DECODER_MODEL_TYPES = frozenset(
    (
        "gpt gpt2 openai_gpt gpt_neo gpt_neox gptj gpt_bigcode codegen ctrl llama mistral mixtral opt bloom "
        "falcon mpt phi phi3 qwen2 qwen3 gemma gemma2 gemma3_text olmo olmo2 stablelm starcoder2 biogpt "
        "persimmon cohere granite deepseek_v2 deepseek_v3 mamba rwkv jamba smollm3"
    ).split()
)
_ENCODER_MODEL_TYPES = frozenset(
    (
        "bert roberta distilbert albert electra deberta deberta_v2 xlm_roberta xlm_roberta_xl camembert "
        "flaubert xlm mpnet ernie funnel longformer big_bird megatron_bert mobilebert squeezebert convbert "
        "rembert roformer nezha luke canine ibert data2vec_text modernbert esm layoutlm"
    ).split()
)

# Lower-case substrings of class names (or unknown model_type strings), checked
# family by family in this order: 'encoderdecoder' must win before 'decoder' does.
_NAME_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("t5", ("t5", "bart", "pegasus", "marian", "seq2seq", "encoderdecoder", "encoder_decoder")),
    ("gpt", ("gpt", "causallm", "decoder", "llama", "mistral")),
    ("bert", ("bert", "encoder", "maskedlm", "electra")),
)


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
