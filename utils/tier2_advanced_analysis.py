"""Tier 2: what the model attends to, which tokens drive it, and how fragile it is.

Like Tier 1, each ``test_*`` function takes ``(model, config, ...)``,
validates before any work, and returns a dict with ``table``, ``status``
('pass'/'warn'/'fail'), ``summary`` and ``figure``.

* ``test_attention_patterns``: per-head entropy, specialization and collapsed heads.
* ``test_attribution_analysis``: integrated gradients on the token embeddings.
* ``test_robustness``: predictions under Gaussian noise on the embeddings.

Attention weights come from ``output_attentions=True`` (the built-in models,
Hugging Face models; an SDPA-only HF model is switched to eager attention for
the call) or from hooks on ``nn.MultiheadAttention`` (``nn.TransformerEncoder``
and hand-written models). Integrated gradients and the noise test hook the
token ``nn.Embedding``, so the model needs no ``inputs_embeds`` argument.

Example:
    >>> from utils.models import tiny_gpt
    >>> model, config = tiny_gpt(n_layers=2, d_model=32)
    >>> result = test_attention_patterns(model, config)
    >>> result["table"].query("collapsed")
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from utils.checks import (
    check_bool,
    check_int,
    check_non_negative_int,
    check_non_negative_number,
    check_number_in_range,
    check_positive_int,
    check_positive_number,
    is_collection,
)
from utils.model_helpers import (
    ModelProbe,
    find_token_embedding,
    forward_accepts,
    model_mode,
    model_output_tensor,
    probe_model,
    random_input_ids,
    replaced_output,
    result_status,
)
from utils.progress import progress_bar

# ---------------------------------------------------------------------------
# test_attention_patterns
# ---------------------------------------------------------------------------


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
        weights were captured), ``attentions`` (per layer ``(B, nh, T, T)``, on
        CPU), ``status`` (warn if any head collapsed), ``summary``,
        ``figure`` (heatmaps of the first sequence) and ``entropy_figure``.

    Raises:
        TypeError, ValueError, RuntimeError: bad model or config (see ``probe_model``).
        ValueError: an argument is out of range, or the model exposes no attention weights
            (see the message for how to add them).
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
    input_ids = _resolve_input_ids(probe, input_ids, batch_size, probe.seq_len(seq_len, 32))
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


def _resolve_input_ids(
    probe: ModelProbe, input_ids: torch.Tensor | None, batch_size: int, seq_len: int
) -> torch.Tensor:
    """The user's ``input_ids`` checked and moved to the model, or random ones."""
    if input_ids is None:
        return random_input_ids(batch_size, seq_len, probe.vocab_size, probe.device)
    _check_input_ids(input_ids, probe)
    return input_ids.to(probe.device)


def _check_input_ids(input_ids: Any, probe: ModelProbe) -> None:
    """Token ids the model can embed: an integer (B, T) tensor, T within max_seq_len, ids in [0, vocab_size)."""
    integer = isinstance(input_ids, torch.Tensor) and input_ids.dtype in (torch.int64, torch.int32)
    if not integer or input_ids.ndim != 2 or input_ids.numel() == 0:
        raise ValueError(
            f"input_ids must be a non-empty torch.long tensor of shape (batch, seq), got {input_ids!r:.80}; "
            "e.g. torch.tensor([[5, 6, 7]])"
        )
    if probe.max_seq_len and input_ids.shape[1] > probe.max_seq_len:
        raise ValueError(
            f"input_ids has {input_ids.shape[1]} tokens per sequence, more than max_seq_len={probe.max_seq_len}; "
            "truncate it"
        )
    low, high = int(input_ids.min()), int(input_ids.max())  # deliberate sync, once, at the edge
    if low < 0 or high >= probe.vocab_size:
        raise ValueError(
            f"input_ids holds token ids from {low} to {high}, outside the vocabulary [0, {probe.vocab_size}); "
            "check the tokenizer against config.vocab_size"
        )


def capture_attentions(model: nn.Module, probe: ModelProbe, input_ids: torch.Tensor) -> tuple[list[torch.Tensor], str]:
    """Attention weights per layer, each ``(B, nh, T, T)`` float32 on CPU, and how they were got.

    Raises:
        ValueError: when neither ``output_attentions`` nor ``nn.MultiheadAttention`` gives weights.
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
    raise ValueError(
        "test_attention_patterns cannot capture attention weights: the model neither returns them for "
        "output_attentions=True nor uses nn.MultiheadAttention. Make forward(input_ids, output_attentions=True) "
        "return {'logits': ..., 'attentions': [one (B, n_heads, T, T) tensor per layer]}"
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
    with torch.no_grad():
        output = model(input_ids, output_attentions=True)
    attentions = getattr(output, "attentions", None)
    if attentions is None and isinstance(output, Mapping):
        attentions = output.get("attentions")
    return [a.detach().float().cpu() for a in (attentions or ()) if isinstance(a, torch.Tensor)]


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


# ---------------------------------------------------------------------------
# test_attribution_analysis
# ---------------------------------------------------------------------------


def test_attribution_analysis(
    model: nn.Module,
    config: Any,
    *,
    input_ids: torch.Tensor | None = None,
    n_samples: int = 2,
    seq_len: int | None = None,
    n_steps: int = 50,
    position: int = -1,
    target_token: int | None = None,
    steps_per_batch: int = 25,
    delta_tolerance: float = 0.05,
    progress: bool = True,
) -> dict[str, Any]:
    """Integrated gradients on the token embeddings, in plain PyTorch.

    The path runs from a zero embedding (the baseline) to the real one. A
    forward hook on the token ``nn.Embedding`` (see ``find_token_embedding``)
    swaps in the interpolated embeddings, so the model needs no
    ``inputs_embeds``. The integral uses Gauss-Legendre quadrature with
    ``n_steps`` points. The target is the logit of ``target_token`` (default:
    the predicted token) at ``position``; for an encoder returning hidden
    states, the hidden state there projected on a fixed random unit direction
    (its norm would not do: a final LayerNorm makes it constant).

    Completeness says the attributions sum to ``F(input) - F(baseline)``;
    ``delta`` is how far they miss, and ``relative_delta`` is ``|delta|``
    over ``|F(input) - F(baseline)|`` (floored at 1e-3 of ``|F(input)|``, so
    a target the input barely moves does not look bad). Raise ``n_steps`` if
    it is large.

    Args:
        model: the model (eval mode; its ``.grad`` values are untouched).
        config: its config; needs ``vocab_size``.
        input_ids: optional real inputs ``(B, T)``; random tokens otherwise.
        n_samples: sequences, for random inputs.
        seq_len: tokens, for random inputs; default ``min(16, max_seq_len)``.
        n_steps: quadrature points along the path.
        position: the token position whose output is explained.
        target_token: the token whose logit is explained (logits models only).
        steps_per_batch: path points per forward pass (memory vs speed).
        delta_tolerance: warn when |delta| / |F(input) - F(baseline)| is above this.
        progress: show a progress bar.

    Returns:
        dict with ``table`` (sample, position, token_id, attribution,
        abs_share), ``completeness`` (per sample: target, f_input, f_baseline,
        attribution_sum, delta, relative_delta), ``attributions`` (B, T, C)
        tensor, ``status``, ``summary`` and ``figure``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or its output holds no logits or hidden states.
        ValueError: ``config`` lacks ``vocab_size``, no token embedding has ``vocab_size``
            rows, or an argument (``position``, ``target_token``, ...) is out of range.
        RuntimeError: the model fails on a probe batch.
    """
    for value, name in ((n_samples, "n_samples"), (n_steps, "n_steps"), (steps_per_batch, "steps_per_batch")):
        check_positive_int(value, name)
    check_positive_int(seq_len, "seq_len", allow_none=True)
    check_int(position, "position")
    check_non_negative_int(target_token, "target_token", allow_none=True)
    check_positive_number(delta_tolerance, "delta_tolerance")
    check_bool(progress, "progress")
    probe = probe_model(model, config, "test_attribution_analysis")
    embedding = find_token_embedding(model, probe.vocab_size)
    input_ids = _resolve_input_ids(probe, input_ids, n_samples, probe.seq_len(seq_len, 16))
    with model_mode(model, False):
        target = _attribution_target(probe, input_ids, position, target_token)
        ig = _integrated_gradients(probe, embedding, input_ids, target, n_steps, steps_per_batch, progress)
    return _attribution_result(ig, input_ids, target, delta_tolerance)


def _attribution_target(probe: ModelProbe, input_ids: torch.Tensor, position: int, target_token: int | None) -> dict:
    """What to explain: a position and, for logits, one token id per sample."""
    seq_len = input_ids.shape[1]
    if not -seq_len <= position < seq_len:
        raise ValueError(f"position={position} is outside the sequence of length {seq_len}")
    if probe.output_kind != "logits":
        if target_token is not None:
            raise ValueError(
                f"target_token={target_token} needs a model that returns logits; this one returns hidden states "
                f"of width {probe.output_dim}, so leave target_token=None (a fixed direction is explained instead)"
            )
        direction = torch.randn(probe.output_dim, generator=torch.Generator().manual_seed(0))
        return {"position": position, "tokens": None, "direction": (direction / direction.norm()).to(probe.device)}
    if target_token is not None:
        if not 0 <= target_token < probe.output_dim:
            raise ValueError(f"target_token={target_token} is outside the vocabulary [0, {probe.output_dim})")
        return {"position": position, "tokens": torch.full((len(input_ids),), target_token, device=probe.device)}
    with torch.no_grad():
        logits, _ = model_output_tensor(probe.forward(input_ids))
    return {"position": position, "tokens": logits[:, position].argmax(-1)}


def _target_score(output: Any, target: dict) -> torch.Tensor:
    """The scalar being explained, one per sequence."""
    tensor, _ = model_output_tensor(output)
    at_position = tensor[:, target["position"]].float()  # (n, V) or (n, H)
    if target["tokens"] is None:
        return at_position @ target["direction"]
    tokens = target["tokens"].repeat(len(at_position) // len(target["tokens"]))
    return at_position.gather(1, tokens.view(-1, 1)).squeeze(1)


def _gauss_legendre(n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points and weights on [0, 1] (the weights sum to 1)."""
    import numpy as np

    points, weights = np.polynomial.legendre.leggauss(n_steps)
    return torch.tensor((points + 1) / 2), torch.tensor(weights / 2)


def _integrated_gradients(
    probe: ModelProbe,
    embedding: nn.Embedding,
    input_ids: torch.Tensor,
    target: dict,
    n_steps: int,
    steps_per_batch: int,
    progress: bool,
) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        inputs = embedding(input_ids).float()  # (B, T, C)
    baseline = torch.zeros_like(inputs)
    ends = _scores_along_path(probe, embedding, input_ids, inputs, baseline, torch.tensor([0.0, 1.0]), target, False)
    alphas, weights = _gauss_legendre(n_steps)
    total = torch.zeros_like(inputs)
    chunks = list(zip(alphas.split(steps_per_batch), weights.split(steps_per_batch), strict=True))
    for alpha, weight in progress_bar(chunks, desc="integrated gradients", unit="chunk", enabled=progress):
        grads = _scores_along_path(probe, embedding, input_ids, inputs, baseline, alpha, target, True)
        total += (weight.to(grads).view(-1, 1, 1, 1) * grads).sum(0)
    attributions = (inputs - baseline) * total  # (B, T, C)
    return {"attributions": attributions, "f_baseline": ends[0], "f_input": ends[1]}


def _scores_along_path(
    probe: ModelProbe,
    embedding: nn.Embedding,
    input_ids: torch.Tensor,
    inputs: torch.Tensor,
    baseline: torch.Tensor,
    alphas: torch.Tensor,
    target: dict,
    gradients: bool,
) -> torch.Tensor:
    """Scores (k, B) at each alpha, or, with ``gradients``, d score / d embedding (k, B, T, C)."""
    k = len(alphas)
    alphas = alphas.to(inputs).view(-1, 1, 1, 1)
    path = (baseline + alphas * (inputs - baseline)).reshape(-1, *inputs.shape[1:])  # (k*B, T, C)
    path.requires_grad_(gradients)

    def swap_in_path(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if output.shape != path.shape:
            raise RuntimeError(f"the token embedding gave {tuple(output.shape)}, expected {tuple(path.shape)}")
        return path.to(output.dtype)

    with replaced_output(embedding, swap_in_path), torch.set_grad_enabled(gradients):
        scores = _target_score(probe.forward(input_ids.repeat(k, 1)), target)  # (k*B,)
        if not gradients:
            return scores.detach().view(k, -1)
        (grads,) = torch.autograd.grad(scores.sum(), path)
    return grads.view(k, *inputs.shape)


def _attribution_result(ig: dict, input_ids: torch.Tensor, target: dict, tolerance: float) -> dict[str, Any]:
    import pandas as pd

    per_token = ig["attributions"].sum(-1).cpu()  # (B, T)
    shares = per_token.abs() / per_token.abs().sum(-1, keepdim=True).clamp_min(1e-12)
    table = pd.DataFrame(
        {
            "sample": b,
            "position": t,
            "token_id": int(input_ids[b, t]),
            "attribution": float(per_token[b, t]),
            "abs_share": float(shares[b, t]),
        }
        for b in range(per_token.shape[0])
        for t in range(per_token.shape[1])
    )
    gap = (ig["f_input"] - ig["f_baseline"]).cpu()
    attribution_sum = per_token.sum(-1)
    delta = attribution_sum - gap
    completeness = pd.DataFrame(
        {
            "target": target["tokens"].cpu().tolist() if target["tokens"] is not None else "hidden_projection",
            "f_input": ig["f_input"].cpu().tolist(),
            "f_baseline": ig["f_baseline"].cpu().tolist(),
            "attribution_sum": attribution_sum.tolist(),
            "delta": delta.tolist(),
            "relative_delta": (
                delta.abs() / torch.maximum(gap.abs(), 1e-3 * ig["f_input"].cpu().abs()).clamp_min(1e-6)
            ).tolist(),
        }
    )
    worst = completeness["relative_delta"].max()
    return {
        "table": table,
        "completeness": completeness,
        "attributions": ig["attributions"].cpu(),
        "status": result_status(not math.isfinite(worst), worst > tolerance),
        "summary": f"max |delta| {completeness['delta'].abs().max():.2g} ({worst:.1%} of F(x)-F(baseline))",
        "figure": _plot_attributions(per_token, input_ids),
    }


def _plot_attributions(per_token: torch.Tensor, input_ids: torch.Tensor) -> Any:
    from matplotlib.figure import Figure

    n_samples, seq_len = per_token.shape
    fig = Figure(figsize=(min(max(6, 0.45 * seq_len), 20), min(1 + 0.6 * n_samples, 10)), layout="constrained")
    ax = fig.subplots()
    limit = float(per_token.abs().max().clamp_min(1e-12))
    image = ax.imshow(per_token.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    if seq_len <= 32:
        for b in range(n_samples):
            for t in range(seq_len):
                ax.text(t, b, str(int(input_ids[b, t])), ha="center", va="center", fontsize=7)
    ax.set_xlabel("position (token ids written in)")
    ax.set_ylabel("sample")
    ax.set_title("Integrated gradients per token")
    fig.colorbar(image, ax=ax)
    return fig


test_attribution_analysis.__test__ = False


# ---------------------------------------------------------------------------
# test_robustness
# ---------------------------------------------------------------------------


def test_robustness(
    model: nn.Module,
    config: Any,
    *,
    noise_levels: Sequence[float] = (0.0, 0.01, 0.05, 0.1, 0.5, 1.0),
    n_samples: int = 8,
    seq_len: int | None = None,
    n_trials: int = 3,
    min_agreement: float = 0.9,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Add Gaussian noise to the token embeddings and measure how the predictions move.

    A noise level is relative: the noise std is ``level`` times the std of the
    clean embeddings. For logits models: ``agreement`` (share of positions
    whose top-1 prediction is unchanged), ``kl_divergence`` (KL(clean ||
    noisy), mean per position) and ``flip_rate`` (share of sequences whose
    prediction at the last position changed). For every model:
    ``cosine_similarity`` between clean and noisy outputs.

    Args:
        model: the model (eval mode).
        config: its config; needs ``vocab_size``.
        noise_levels: relative noise levels (finite, >= 0), e.g. ``(0.0, 0.1, 1.0)``.
        n_samples: sequences.
        seq_len: tokens; default ``min(32, max_seq_len)``.
        n_trials: noise draws per level (results are averaged).
        min_agreement: warn when agreement at the smallest nonzero level is below this, in (0, 1].
        seed: seeds the inputs and the noise (an int).
        progress: show a progress bar.

    Returns:
        dict with ``table`` (noise_level, agreement, kl_divergence, flip_rate,
        cosine_similarity, non_finite), ``status``, ``summary`` and ``figure``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or its output holds no logits or hidden states.
        ValueError: ``config`` lacks ``vocab_size``, no token embedding has ``vocab_size``
            rows, or an argument is out of range.
        RuntimeError: the model fails on a probe batch.
    """
    levels = _check_noise_levels(noise_levels)
    for value, name in ((n_samples, "n_samples"), (n_trials, "n_trials")):
        check_positive_int(value, name)
    check_positive_int(seq_len, "seq_len", allow_none=True)
    check_number_in_range(min_agreement, "min_agreement", 0.0, 1.0, low_inclusive=False)  # a share of positions
    check_int(seed, "seed")
    check_bool(progress, "progress")
    probe = probe_model(model, config, "test_robustness")
    embedding = find_token_embedding(model, probe.vocab_size)
    input_ids = random_input_ids(n_samples, probe.seq_len(seq_len, 32), probe.vocab_size, probe.device, seed)
    generator = torch.Generator(device=probe.device).manual_seed(seed)

    rows = []
    with model_mode(model, False), torch.no_grad():
        clean = model_output_tensor(probe.forward(input_ids))[0].float()
        for level in progress_bar(levels, desc="robustness", unit="level", enabled=progress):
            trials = [_noisy_comparison(probe, embedding, input_ids, clean, level, generator) for _ in range(n_trials)]
            rows.append({"noise_level": level, **{k: sum(t[k] for t in trials) / n_trials for k in trials[0]}})
    return _robustness_result(rows, probe.output_kind, min_agreement)


def _check_noise_levels(noise_levels: Any) -> list[float]:
    """The sorted distinct levels, or a ValueError naming ``noise_levels``."""
    levels = list(noise_levels) if is_collection(noise_levels) else []
    if not levels:
        raise ValueError(
            f"noise_levels must be a non-empty sequence of numbers >= 0 such as (0.0, 0.1), got {noise_levels!r}"
        )
    for index, level in enumerate(levels):
        check_non_negative_number(level, f"noise_levels[{index}]")
    return sorted({float(v) for v in levels})


def _noisy_comparison(
    probe: ModelProbe,
    embedding: nn.Embedding,
    input_ids: torch.Tensor,
    clean: torch.Tensor,
    level: float,
    generator: torch.Generator,
) -> dict[str, float]:
    def add_noise(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(output.shape, generator=generator, device=output.device, dtype=output.dtype)
        return output + level * output.float().std().to(output.dtype) * noise

    with replaced_output(embedding, add_noise):
        noisy, _ = model_output_tensor(probe.forward(input_ids))
    noisy = noisy.float()
    result = {
        "cosine_similarity": float(torch.cosine_similarity(clean, noisy, dim=-1).mean()),
        "non_finite": float((~torch.isfinite(noisy)).sum()),
        "agreement": math.nan,
        "kl_divergence": math.nan,
        "flip_rate": math.nan,
    }
    if probe.output_kind == "logits":
        log_p, log_q = clean.log_softmax(-1), noisy.log_softmax(-1)
        result["kl_divergence"] = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
        result["agreement"] = float((clean.argmax(-1) == noisy.argmax(-1)).float().mean())
        result["flip_rate"] = float((clean[:, -1].argmax(-1) != noisy[:, -1].argmax(-1)).float().mean())
    return result


def _robustness_result(rows: list[dict], output_kind: str, min_agreement: float) -> dict[str, Any]:
    import pandas as pd

    table = pd.DataFrame(rows)[
        ["noise_level", "agreement", "kl_divergence", "flip_rate", "cosine_similarity", "non_finite"]
    ]
    noisy = table[table["noise_level"] > 0]
    reference = noisy.iloc[0] if not noisy.empty else table.iloc[0]
    measure = "agreement" if output_kind == "logits" else "cosine_similarity"
    return {
        "table": table,
        "status": result_status(bool((table["non_finite"] > 0).any()), bool(reference[measure] < min_agreement)),
        "summary": f"{measure} {reference[measure]:.2f} at noise {reference['noise_level']:g}, "
        f"{table[measure].iloc[-1]:.2f} at {table['noise_level'].iloc[-1]:g}",
        "figure": _plot_robustness(table),
    }


def _plot_robustness(table: Any) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.5), layout="constrained")
    ax_agree, ax_kl = fig.subplots(1, 2)
    for column in ("agreement", "flip_rate", "cosine_similarity"):
        if table[column].notna().any():
            ax_agree.plot(table["noise_level"], table[column], "o-", label=column)
    ax_agree.set_xscale("symlog", linthresh=0.01)
    ax_agree.set_xlabel("noise level (x embedding std)")
    ax_agree.set_ylim(-0.05, 1.05)
    ax_agree.legend()
    ax_agree.set_title("Prediction agreement under noise")
    if table["kl_divergence"].notna().any():
        ax_kl.plot(table["noise_level"], table["kl_divergence"], "o-", color="tab:red")
    ax_kl.set_xscale("symlog", linthresh=0.01)
    ax_kl.set_xlabel("noise level (x embedding std)")
    ax_kl.set_ylabel("KL(clean || noisy)")
    ax_kl.set_title("Divergence under noise")
    return fig


test_robustness.__test__ = False

__all__ = [
    "capture_attentions",
    "test_attention_patterns",
    "test_attribution_analysis",
    "test_robustness",
]
