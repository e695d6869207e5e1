"""Tier 2: what each attention head looks at, how focused it is, and which heads collapsed.

Attention weights come from ``output_attentions=True`` (the built-in models,
Hugging Face models; an SDPA-only HF model is switched to eager attention for
the call), from hooks on ``nn.MultiheadAttention`` (``nn.TransformerEncoder``),
or, for a model that hands over neither (minGPT, x-transformers, exported
modules with their own attention), from the computation itself
(``utils.diagnostics.capture``). The result's ``method`` says which.

Example:
    >>> from utils.models import tiny_gpt
    >>> model, config = tiny_gpt(n_layers=2, d_model=32)
    >>> result = test_attention_patterns(model, config)
    >>> result["table"].query("collapsed")
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from utils.causality import encoder_decoder_reason
from utils.checks import check_number_in_range, check_positive_int
from utils.diagnostics.capture import capture_from_computation
from utils.diagnostics.common import resolve_input_ids
from utils.model_helpers import (
    ModelProbe,
    forward_accepts,
    is_encoder_decoder,
    model_mode,
    probe_model,
    result_status,
)


def test_attention_patterns(
    model: nn.Module,
    config: Any,
    *,
    input_ids: torch.Tensor | None = None,
    batch_size: int = 4,
    seq_len: int | None = None,
    collapse_entropy: float = 0.2,
    collapse_share: float = 0.9,
    min_visible_keys: int = 4,
    max_layers_plotted: int = 4,
    max_heads_plotted: int = 4,
) -> dict[str, Any]:
    """Capture attention weights and report per-head entropy, specialization and collapse.

    Entropy is normalized per query row by ``log(n)``, where ``n`` is the
    number of keys that row can really see (any head gives it weight > 0), so
    a causal or padding mask does not make heads look focused. Rows that see
    fewer than ``min_visible_keys`` keys are left out (a causal model's first
    rows). A head is *collapsed* when its normalized entropy is below
    ``collapse_entropy`` and at least ``collapse_share`` of its queries put
    their top weight on the same key (an attention sink). Each head also gets
    a ``pattern``: 'previous_token', 'self', 'first_token', 'uniform',
    'focused' or 'mixed'; each layer a ``head_diversity`` (mean total-variation
    distance between its heads' rows: 0 means redundant heads).

    Args:
        model: the model (run in eval mode).
        config: its config; needs ``vocab_size``.
        input_ids: optional real inputs ``(B, T)``; random tokens otherwise.
        batch_size: sequences, for random inputs.
        seq_len: tokens per sequence, for random inputs; default ``min(32, max_seq_len)``.
        collapse_entropy: normalized-entropy threshold for a collapsed head, in (0, 1].
        collapse_share: share of queries on one key for a collapsed head, in (0, 1].
        min_visible_keys: leave out query rows that see fewer keys.
        max_layers_plotted: layers in the heatmap grid.
        max_heads_plotted: heads per layer in the heatmap grid.

    Returns:
        dict with ``table`` (one row per head: layer, head, entropy_norm,
        max_weight, top_key_share, top_key, pattern, collapsed), ``layers``
        (layer, entropy_norm, head_diversity, n_collapsed), ``method`` (how
        weights were captured: 'output_attentions', 'nn.MultiheadAttention hooks',
        'softmax_capture' or 'sdpa_recomputed'), ``attentions`` (per layer ``(B, nh, T, T)``, on
        CPU), ``status`` (warn if any head collapsed), ``summary``,
        ``figure`` (heatmaps of the first sequence) and ``entropy_figure``.

    Raises:
        TypeError, ValueError, RuntimeError: bad model or config (see ``probe_model``).
        ValueError: an argument is out of range, the model is an encoder-decoder, or no attention
            weights can be seen (see the message for how to add them).
    """
    for value, name in ((collapse_entropy, "collapse_entropy"), (collapse_share, "collapse_share")):
        check_number_in_range(value, name, 0.0, 1.0, low_inclusive=False)  # both are fractions
    for value, name in (
        (batch_size, "batch_size"),
        (min_visible_keys, "min_visible_keys"),
        (max_layers_plotted, "max_layers_plotted"),
        (max_heads_plotted, "max_heads_plotted"),
    ):
        check_positive_int(value, name)
    check_positive_int(seq_len, "seq_len", allow_none=True)
    probe = probe_model(model, config, "test_attention_patterns")
    if is_encoder_decoder(model, config):
        raise ValueError(f"test_attention_patterns: {encoder_decoder_reason(model, config)}")
    input_ids = resolve_input_ids(probe, input_ids, batch_size, probe.seq_len(seq_len, 32))
    with model_mode(model, False):
        attentions, method = capture_attentions(model, probe, input_ids)
    heads, layers = [], []
    for index, weights in enumerate(attentions):
        head_rows, layer_row = _layer_attention_stats(weights, min_visible_keys, collapse_entropy, collapse_share)
        heads += [{"layer": index, **row} for row in head_rows]
        layers.append({"layer": index, **layer_row})
    import pandas as pd

    table, layer_table = pd.DataFrame(heads), pd.DataFrame(layers)
    n_collapsed = int(table["collapsed"].sum())
    return {
        "table": table,
        "layers": layer_table,
        "method": method,
        "attentions": attentions,
        "status": result_status(False, n_collapsed > 0),
        "summary": f"{n_collapsed}/{len(table)} heads collapsed; "
        f"mean entropy {table['entropy_norm'].mean():.2f} ({method})",
        "figure": _plot_attention_heatmaps(attentions, max_layers_plotted, max_heads_plotted),
        "entropy_figure": _plot_head_entropy(table),
    }


def capture_attentions(model: nn.Module, probe: ModelProbe, input_ids: torch.Tensor) -> tuple[list[torch.Tensor], str]:
    """Attention weights per layer, each ``(B, nh, T, T)`` float32 on CPU, and how they were got.

    Tried in order, never depending on the model's cooperation: the weights the model returns
    for ``output_attentions=True`` (a forward that rejects the keyword falls through, never
    raises); hooks on ``nn.MultiheadAttention``; then the computation itself
    (``utils.diagnostics.capture``: its softmax over the key axis, or SDPA's weights recomputed).

    Raises:
        ValueError: when the model computes no attention that any of the three can see.
    """
    if forward_accepts(model, "output_attentions"):
        attentions = _attentions_from_output(model, input_ids)
        if attentions:
            return attentions, "output_attentions"
    mha = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    if mha:
        attentions = _attentions_from_mha_hooks(mha, probe, input_ids)
        if attentions:
            return attentions, "nn.MultiheadAttention hooks"
    attentions, method = capture_from_computation(probe.forward, input_ids)
    if attentions:
        return attentions, method
    raise ValueError(
        "test_attention_patterns cannot capture attention weights: the model neither returns them for "
        "output_attentions=True nor uses nn.MultiheadAttention, and its forward takes no softmax over the keys "
        "of (batch, heads, T, T) scores and calls no F.scaled_dot_product_attention on them. Make "
        "forward(input_ids, output_attentions=True) return {'logits': ..., 'attentions': [one (B, n_heads, T, T) "
        "tensor per layer]}"
    )


def _attentions_from_output(model: nn.Module, input_ids: torch.Tensor) -> list[torch.Tensor]:
    set_impl = getattr(model, "set_attn_implementation", None)
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if not callable(set_impl) or current in (None, "eager"):
        return _call_with_output_attentions(model, input_ids)
    # Hugging Face SDPA/flash attention returns no weights; eager does. Switch for this call only.
    try:
        set_impl("eager")
    except (ValueError, NotImplementedError, ImportError):
        return _call_with_output_attentions(model, input_ids)
    try:
        return _call_with_output_attentions(model, input_ids)
    finally:
        set_impl(current)


def _call_with_output_attentions(model: nn.Module, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """The model's own weights, or [] when it rejects the keyword or returns none of the (B, nh, T, T) kind."""
    try:
        with torch.no_grad():
            output = model(input_ids, output_attentions=True)
    except Exception:  # e.g. x-transformers passes **kwargs on to a forward that takes no such keyword
        return []
    attentions = getattr(output, "attentions", None)
    if attentions is None and isinstance(output, Mapping):
        attentions = output.get("attentions")
    if not isinstance(attentions, (tuple, list)):
        return []
    square = (input_ids.shape[0], input_ids.shape[1], input_ids.shape[1])
    weights = [a.detach().float().cpu() for a in attentions if isinstance(a, torch.Tensor)]
    if not weights or any(w.ndim != 4 or (w.shape[0], *w.shape[2:]) != square for w in weights):
        return []
    return weights


def _attentions_from_mha_hooks(
    modules: list[nn.MultiheadAttention], probe: ModelProbe, input_ids: torch.Tensor
) -> list[torch.Tensor]:
    """Force ``need_weights=True`` (``TransformerEncoderLayer`` passes False) and keep per-head weights."""
    captured: list[torch.Tensor] = []

    def force_weights(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if len(args) > 4:  # need_weights given positionally: (query, key, value, key_padding_mask, need_weights)
            args = (*args[:4], True, *args[5:])
        else:
            kwargs["need_weights"] = True
        kwargs["average_attn_weights"] = False
        return args, kwargs

    def keep(module: nn.Module, args: tuple, output: tuple) -> None:
        if isinstance(output, tuple) and isinstance(output[1], torch.Tensor):
            captured.append(output[1].detach().float().cpu())

    handles = [
        h
        for m in modules
        for h in (m.register_forward_pre_hook(force_weights, with_kwargs=True), m.register_forward_hook(keep))
    ]
    try:
        # Grad mode keeps nn.TransformerEncoderLayer off its fused fast path, which skips the hooks.
        with torch.enable_grad():
            probe.forward(input_ids)
    finally:
        for handle in handles:
            handle.remove()
    return [w if w.ndim == 4 else w.unsqueeze(1) for w in captured]


def _layer_attention_stats(
    weights: torch.Tensor, min_keys: int, collapse_entropy: float, collapse_share: float
) -> tuple[list[dict], dict]:
    """Per-head rows and a layer row for weights ``(B, nh, Tq, Tk)``."""
    n_heads = weights.shape[1]
    visible = (weights > 0).any(dim=1, keepdim=True)  # (B, 1, Tq, Tk): keys a query can see
    n_visible = visible.sum(-1).expand(-1, n_heads, -1)  # (B, nh, Tq)
    rows = (n_visible >= min(min_keys, int(n_visible.max()))) & (n_visible > 1)
    if not rows.any():
        rows = torch.ones_like(n_visible, dtype=torch.bool)
    entropy = torch.special.entr(weights).sum(-1) / n_visible.clamp_min(2).log()  # (B, nh, Tq), in [0, 1]
    head_rows = []
    for head in range(n_heads):
        stats = _head_stats(weights[:, head], entropy[:, head], rows[:, head])
        stats["collapsed"] = stats["entropy_norm"] < collapse_entropy and stats["top_key_share"] >= collapse_share
        stats["pattern"] = _head_pattern(stats)
        head_rows.append({"head": head, **stats})
    layer_row = {
        "entropy_norm": float(sum(r["entropy_norm"] for r in head_rows) / n_heads),
        "head_diversity": _head_diversity(weights, rows[:, 0]),
        "n_collapsed": sum(r["collapsed"] for r in head_rows),
    }
    return head_rows, layer_row


def _head_stats(weights: torch.Tensor, entropy: torch.Tensor, rows: torch.Tensor) -> dict[str, Any]:
    """One head: weights ``(B, Tq, Tk)``, entropy and selected rows ``(B, Tq)``."""
    top_key = weights.argmax(-1)  # (B, Tq)
    query = torch.arange(weights.shape[1]).expand_as(top_key)[rows]
    keys = top_key[rows]
    mode_key = int(keys.mode().values)
    return {
        "entropy_norm": float(entropy[rows].mean()),
        "max_weight": float(weights.max(-1).values[rows].mean()),
        "top_key_share": float((keys == mode_key).float().mean()),
        "top_key": mode_key,
        "previous_share": float((keys == query - 1).float().mean()),
        "self_share": float((keys == query).float().mean()),
    }


def _head_pattern(stats: dict[str, Any]) -> str:
    """A one-word label for what a head does."""
    if stats["entropy_norm"] > 0.95:
        return "uniform"
    if stats["previous_share"] >= 0.5:
        return "previous_token"
    if stats["self_share"] >= 0.5:
        return "self"
    if stats["top_key_share"] >= 0.5:
        return "first_token" if stats["top_key"] == 0 else "focused"
    return "mixed"


def _head_diversity(weights: torch.Tensor, rows: torch.Tensor) -> float:
    """Mean total-variation distance between the rows of every pair of heads (0: redundant)."""
    n_heads = weights.shape[1]
    if n_heads < 2:
        return math.nan
    selected = weights.permute(1, 0, 2, 3)[:, rows]  # (nh, n_rows, Tk)
    distances = [
        0.5 * (selected[i] - selected[j]).abs().sum(-1).mean() for i in range(n_heads) for j in range(i + 1, n_heads)
    ]
    return float(torch.stack(distances).mean())


def _plot_attention_heatmaps(attentions: list[torch.Tensor], max_layers: int, max_heads: int) -> Any:
    from matplotlib.figure import Figure

    n_layers, n_heads = min(len(attentions), max_layers), min(attentions[0].shape[1], max_heads)
    fig = Figure(figsize=(2.4 * n_heads, 2.2 * n_layers), layout="constrained")
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer][head]
            ax.imshow(attentions[layer][0, head].numpy(), cmap="viridis", vmin=0, aspect="auto")
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Attention weights, first sequence (rows: queries, columns: keys)")
    return fig


def _plot_head_entropy(table: Any) -> Any:
    from matplotlib.figure import Figure

    grid = table.pivot(index="layer", columns="head", values="entropy_norm")
    fig = Figure(figsize=(1 + 0.6 * grid.shape[1], 1 + 0.5 * grid.shape[0]), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid.to_numpy(), cmap="magma", vmin=0, vmax=1, aspect="auto")
    for row in table[table["collapsed"]].itertuples():
        ax.text(row.head, row.layer, "×", ha="center", va="center", color="cyan")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("Normalized entropy (× collapsed)")
    fig.colorbar(image, ax=ax)
    return fig


test_attention_patterns.__test__ = False
