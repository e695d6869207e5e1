"""Built-in tiny transformers: the default model for every tier, no downloads.

``tiny_gpt`` is a decoder-only causal LM and ``tiny_encoder`` a BERT-like
bidirectional encoder with a token-prediction head. Both use
``F.scaled_dot_product_attention`` and both can return their attention
weights (``output_attentions=True``) so Tier 2 can inspect them.

Example:
    >>> model, config = tiny_gpt(d_model=64, n_layers=2)
    >>> logits = model(torch.randint(0, config.vocab_size, (2, 16)))  # (B, T, V)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.checks import check_bool, check_non_negative_int, check_number_in_range, check_positive_int, check_str


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a built-in model. ``vocab_size=256`` fits the byte tokenizer."""

    vocab_size: int = 256
    max_seq_len: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None  # None means 4 * d_model
    dropout: float = 0.0
    causal: bool = True
    pad_token_id: int = 0
    model_type: str = "gpt"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads"):
            check_positive_int(getattr(self, name), name)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}); "
                f"try n_heads={math.gcd(self.d_model, self.n_heads)}"
            )
        check_positive_int(self.d_ff, "d_ff", allow_none=True)  # None means 4 * d_model
        check_number_in_range(self.dropout, "dropout", 0.0, 1.0, high_inclusive=False)
        check_non_negative_int(self.pad_token_id, "pad_token_id")
        if self.pad_token_id >= self.vocab_size:
            raise ValueError(
                f"pad_token_id ({self.pad_token_id}) must be below vocab_size ({self.vocab_size}); "
                "it is a token id the data loader pads with"
            )
        check_bool(self.causal, "causal")
        check_str(self.model_type, "model_type")

    @property
    def ffn_dim(self) -> int:
        return self.d_ff or 4 * self.d_model


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.causal = config.causal
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.shape
        # (B, T, 3C) -> 3 x (B, nh, T, hs)
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            # The explicit path, only when weights are asked for: SDPA never returns them.
            mask = _attention_mask(key_padding_mask, T, self.causal, x.device)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, T, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = F.dropout(scores.softmax(dim=-1), dropout_p, self.training)
            y = weights @ v
        elif key_padding_mask is None:
            # No mask tensor, so SDPA may pick its flash or memory-efficient kernel.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=self.causal)
        else:
            mask = _attention_mask(key_padding_mask, T, self.causal, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y), weights


def _attention_mask(
    key_padding_mask: torch.Tensor | None, T: int, causal: bool, device: torch.device
) -> torch.Tensor | None:
    """Boolean mask, True where attention is allowed, broadcastable to (B, nh, T, T)."""
    if key_padding_mask is None and not causal:
        return None
    mask = torch.ones(T, T, dtype=torch.bool, device=device)
    if causal:
        mask = mask.tril()
    mask = mask.view(1, 1, T, T)
    if key_padding_mask is not None:
        # key_padding_mask is (B, T) with 1 for real tokens; padded keys are never attended.
        mask = mask & key_padding_mask.bool().view(-1, 1, 1, T)
        # A fully padded query row would softmax over nothing; let it see itself.
        mask = mask | torch.eye(T, dtype=torch.bool, device=device).view(1, 1, T, T)
    return mask


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, config.ffn_dim),
            nn.GELU(),
            nn.Linear(config.ffn_dim, config.d_model),
            nn.Dropout(config.dropout),
        )

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out, weights = self.attn(self.ln_1(x), key_padding_mask, need_weights)
        x = x + attn_out
        x = x + self.mlp(self.ln_2(x))
        return x, weights


class TinyTransformer(nn.Module):
    """Token + position embeddings, ``n_layers`` blocks, a final norm and an LM head.

    The LM head shares its weight with the token embedding (as in GPT-2).
    ``forward`` returns logits ``(B, T, V)``, or a dict with ``logits`` and
    ``attentions`` (one ``(B, nh, T, T)`` tensor per layer) when
    ``output_attentions=True``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]:
        B, T = input_ids.shape
        if T > self.config.max_seq_len:
            raise ValueError(
                f"sequence length {T} exceeds max_seq_len={self.config.max_seq_len}; "
                "truncate the input or build the model with a larger max_seq_len"
            )
        positions = torch.arange(T, device=input_ids.device)
        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(positions))  # (B, T, C)
        attentions = []
        for block in self.blocks:
            x, weights = block(x, attention_mask, output_attentions)
            attentions.append(weights)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        if output_attentions:
            return {"logits": logits, "attentions": attentions}
        return logits


def tiny_gpt(**overrides) -> tuple[TinyTransformer, ModelConfig]:
    """A small decoder-only causal LM. Returns ``(model, config)``.

    Example:
        >>> model, config = tiny_gpt(n_layers=2, d_model=32)
    """
    config = _build_config(ModelConfig(), overrides, causal=True, model_type="gpt")
    return TinyTransformer(config), config


def tiny_encoder(**overrides) -> tuple[TinyTransformer, ModelConfig]:
    """A small BERT-like bidirectional encoder with a token head. Returns ``(model, config)``."""
    config = _build_config(ModelConfig(), overrides, causal=False, model_type="bert")
    return TinyTransformer(config), config


def _build_config(base: ModelConfig, overrides: dict, **fixed) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)} - set(fixed)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown model option(s) {unknown}; valid options are {sorted(known)}")
    return dataclasses.replace(base, **overrides, **fixed)
