"""Models nobody here wrote, as test clients: the shapes other projects give the library.

- ``MinGPT``: karpathy's minGPT, rewritten here in our own words with its two quirks kept:
  ``forward(idx, targets=None)`` returns ``(logits, loss)``, and each block's ``mlpf`` is a
  lambda over its MLP, so ``copy.deepcopy`` gives a copy that still runs the original's MLP.
- ``ExportedTransformer``: a module written the way a visual builder exports one: flat layer
  names, its own softmax attention over ``(B*H, T, T)`` scores and an additive causal mask.
- ``x-transformers``' ``TransformerWrapper`` decoder (skipped when the package is missing).
- Hugging Face Llama (grouped-query attention), Qwen2, Mistral, GPT-NeoX and T5, built from
  tiny configs (no download).

Every model is 2 layers, 32 wide, vocabulary 256 (the comparison's byte corpus), 16 positions
where it has positions, and deterministic in eval mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, WIDTH, LAYERS, HEADS, POSITIONS = 256, 32, 2, 2, 16
# The eight families of the report, in its order; 'hf_t5' is the encoder-decoder.
OUTSIDE_KINDS = ("hf_llama", "hf_qwen2", "hf_mistral", "hf_gpt_neox", "hf_t5", "mingpt", "xtransformers", "builder")
CAUSAL_KINDS = tuple(kind for kind in OUTSIDE_KINDS if kind != "hf_t5")


@dataclass
class MinGPTConfig:
    """minGPT's configuration names: block_size is its max_seq_len, n_embd its width."""

    vocab_size: int = VOCAB
    block_size: int = POSITIONS
    n_layer: int = LAYERS
    n_head: int = HEADS
    n_embd: int = WIDTH
    embd_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    attn_pdrop: float = 0.1


class MinGPTAttention(nn.Module):
    """Causal self-attention written out: scores, a lower-triangular buffer as the mask, softmax, dropout."""

    def __init__(self, config: MinGPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        size = config.block_size
        self.register_buffer("bias", torch.tril(torch.ones(size, size)).view(1, 1, size, size))
        self.n_head, self.n_embd = config.n_head, config.n_embd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MinGPTBlock(nn.Module):
    def __init__(self, config: MinGPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = MinGPTAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.ModuleDict(
            dict(
                c_fc=nn.Linear(config.n_embd, 4 * config.n_embd),
                c_proj=nn.Linear(4 * config.n_embd, config.n_embd),
                act=nn.GELU(approximate="tanh"),
                dropout=nn.Dropout(config.resid_pdrop),
            )
        )
        m = self.mlp
        # The quirk under test: a closure over this block's MLP, which deepcopy copies by reference.
        self.mlpf = lambda x: m.dropout(m.c_proj(m.act(m.c_fc(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlpf(self.ln_2(x))


class MinGPT(nn.Module):
    """minGPT's GPT: ``forward(idx, targets=None) -> (logits, loss)``; the loss is None without targets."""

    def __init__(self, config: MinGPTConfig) -> None:
        super().__init__()
        self.block_size = config.block_size
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.embd_pdrop),
                h=nn.ModuleList([MinGPTBlock(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        t = idx.size(1)
        assert t <= self.block_size, f"Cannot forward sequence of length {t}, block size is only {self.block_size}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device).unsqueeze(0)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


class ExportedTransformer(nn.Module):
    """What a visual builder exports: flat numbered layers and attention computed by hand.

    The scores are ``(B*H, T, T)`` from ``torch.bmm``, masked by an additive upper-triangular
    ``-inf`` buffer and normalised with ``torch.softmax``; no ``nn.MultiheadAttention``, no
    ``output_attentions``.
    """

    def __init__(self, vocab_size: int = VOCAB, dim: int = WIDTH, heads: int = HEADS, length: int = POSITIONS):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.embedding_1 = nn.Embedding(vocab_size, dim)
        self.positional_1 = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        for i in range(LAYERS):
            self.add_module(f"norm_{i}", nn.LayerNorm(dim))
            self.add_module(f"qkv_{i}", nn.Linear(dim, 3 * dim))
            self.add_module(f"out_{i}", nn.Linear(dim, dim))
            self.add_module(f"dense_{i}", nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim)))
        self.output_1 = nn.Linear(dim, vocab_size)
        self.register_buffer("causal_mask", torch.triu(torch.full((length, length), float("-inf")), diagonal=1))

    def attention(self, i: int, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.heads
        q, k, v = getattr(self, f"qkv_{i}")(x).chunk(3, dim=-1)
        q, k, v = (
            t.reshape(B, T, self.heads, hs).permute(0, 2, 1, 3).reshape(B * self.heads, T, hs) for t in (q, k, v)
        )
        scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(hs) + self.causal_mask[:T, :T]  # (B*H, T, T)
        weights = torch.softmax(scores, dim=-1)
        y = torch.bmm(weights, v).reshape(B, self.heads, T, hs).permute(0, 2, 1, 3).reshape(B, T, C)
        return getattr(self, f"out_{i}")(y)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding_1(input_ids) + self.positional_1[:, : input_ids.size(1)]
        for i in range(LAYERS):
            x = x + self.attention(i, getattr(self, f"norm_{i}")(x))
            x = x + getattr(self, f"dense_{i}")(x)
        return self.output_1(x)


def x_transformers_decoder():
    """x-transformers' decoder-only ``TransformerWrapper``; skips the test when the package is missing."""
    x_transformers = pytest.importorskip("x_transformers")
    decoder = x_transformers.Decoder(dim=WIDTH, depth=LAYERS, heads=HEADS)
    model = x_transformers.TransformerWrapper(num_tokens=VOCAB, max_seq_len=POSITIONS, attn_layers=decoder)
    return model, {"vocab_size": VOCAB, "max_seq_len": POSITIONS}


def hf_outside_model(kind: str):
    """A tiny Hugging Face model built from its config: Llama, Qwen2, Mistral, GPT-NeoX or T5."""
    transformers = pytest.importorskip("transformers")
    decoder = dict(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=POSITIONS,
    )
    if kind == "hf_llama":  # one key/value head for two query heads: grouped-query attention
        config = transformers.LlamaConfig(**decoder, num_key_value_heads=1)
        return transformers.LlamaForCausalLM(config), config
    if kind == "hf_qwen2":
        config = transformers.Qwen2Config(**decoder, num_key_value_heads=HEADS)
        return transformers.Qwen2ForCausalLM(config), config
    if kind == "hf_mistral":
        config = transformers.MistralConfig(**decoder, num_key_value_heads=HEADS, sliding_window=None)
        return transformers.MistralForCausalLM(config), config
    if kind == "hf_gpt_neox":
        config = transformers.GPTNeoXConfig(**decoder)
        return transformers.GPTNeoXForCausalLM(config), config
    if kind == "hf_t5":  # relative positions: the config has no max_seq_len of any name
        config = transformers.T5Config(
            vocab_size=VOCAB, d_model=WIDTH, d_kv=WIDTH // HEADS, d_ff=2 * WIDTH, num_layers=LAYERS, num_heads=HEADS
        )
        config.decoder_start_token_id = 0
        return transformers.T5ForConditionalGeneration(config), config
    raise ValueError(f"unknown Hugging Face kind {kind!r}")


def build_outside(kind: str):
    """(model, config) with fixed initial weights, for each kind in ``OUTSIDE_KINDS``."""
    torch.manual_seed(0)
    if kind == "mingpt":
        config = MinGPTConfig()
        return MinGPT(config), config
    if kind == "builder":
        return ExportedTransformer(), {"vocab_size": VOCAB, "max_seq_len": POSITIONS}
    if kind == "xtransformers":
        return x_transformers_decoder()
    return hf_outside_model(kind)
