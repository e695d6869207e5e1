"""Tier 2: which input tokens drive the output, by integrated gradients on the token embeddings.

The path is swapped in by a hook on the token ``nn.Embedding``, so the model
needs no ``inputs_embeds`` argument.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from utils.causality import encoder_decoder_reason
from utils.checks import check_bool, check_int, check_non_negative_int, check_positive_int, check_positive_number
from utils.diagnostics.common import resolve_input_ids
from utils.model_helpers import (
    ModelProbe,
    find_token_embedding,
    is_encoder_decoder,
    model_mode,
    model_output_tensor,
    probe_model,
    replaced_output,
    result_status,
)
from utils.progress import progress_bar

# Steps picked from the measured gap (n_steps=None): start here, double while the gap exceeds the tolerance.
# An RMSNorm model (Llama-style) showed a 21-28% gap at 50 points and 0.8% at 200.
AUTO_START_STEPS = 50
MAX_AUTO_STEPS = 400


def test_attribution_analysis(
    model: nn.Module,
    config: Any,
    *,
    input_ids: torch.Tensor | None = None,
    n_samples: int = 2,
    seq_len: int | None = None,
    n_steps: int | None = None,
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
    a target the input barely moves does not look bad). The quadrature error
    falls as steps are added (RMSNorm models need more than LayerNorm ones), so
    by default the steps are picked from the measured gap: 50, then doubled
    until the gap is within ``delta_tolerance`` (or ``MAX_AUTO_STEPS``).

    Args:
        model: the model (eval mode; its ``.grad`` values are untouched).
        config: its config; needs ``vocab_size``.
        input_ids: optional real inputs ``(B, T)``; random tokens otherwise.
        n_samples: sequences, for random inputs.
        seq_len: tokens, for random inputs; default ``min(16, max_seq_len)``.
        n_steps: quadrature points along the path; None (default) picks them from the
            measured completeness gap, starting at ``AUTO_START_STEPS``.
        position: the token position whose output is explained.
        target_token: the token whose logit is explained (logits models only).
        steps_per_batch: path points per forward pass (memory vs speed).
        delta_tolerance: warn when |delta| / |F(input) - F(baseline)| is above this.
        progress: show a progress bar.

    Returns:
        dict with ``table`` (sample, position, token_id, attribution,
        abs_share), ``completeness`` (per sample: target, f_input, f_baseline,
        attribution_sum, delta, relative_delta), ``attributions`` (B, T, C)
        tensor, ``n_steps`` (the steps used), ``status``, ``summary`` and ``figure``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or its output holds no logits or hidden states.
        ValueError: ``config`` lacks ``vocab_size``, no token embedding has ``vocab_size``
            rows, or an argument (``position``, ``target_token``, ...) is out of range.
        RuntimeError: the model fails on a probe batch.
    """
    for value, name in ((n_samples, "n_samples"), (steps_per_batch, "steps_per_batch")):
        check_positive_int(value, name)
    check_positive_int(n_steps, "n_steps", allow_none=True)
    check_positive_int(seq_len, "seq_len", allow_none=True)
    check_int(position, "position")
    check_non_negative_int(target_token, "target_token", allow_none=True)
    check_positive_number(delta_tolerance, "delta_tolerance")
    check_bool(progress, "progress")
    probe = probe_model(model, config, "test_attribution_analysis")
    if is_encoder_decoder(model, config):  # two stacks read the tokens: one embedding swap cannot say which
        raise ValueError(f"test_attribution_analysis: {encoder_decoder_reason(model, config)}")
    embedding = find_token_embedding(model, probe.vocab_size)
    input_ids = resolve_input_ids(probe, input_ids, n_samples, probe.seq_len(seq_len, 16))
    with model_mode(model, False):
        target = _attribution_target(probe, input_ids, position, target_token)
        steps = n_steps or AUTO_START_STEPS
        while True:
            ig = _integrated_gradients(probe, embedding, input_ids, target, steps, steps_per_batch, progress)
            result = _attribution_result(ig, input_ids, target, delta_tolerance, steps, auto=n_steps is None)
            if n_steps is not None or result["status"] != "warn" or steps * 2 > MAX_AUTO_STEPS:
                return result
            steps *= 2  # the gap is quadrature error: more points close it


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


def _attribution_result(
    ig: dict, input_ids: torch.Tensor, target: dict, tolerance: float, n_steps: int, *, auto: bool
) -> dict[str, Any]:
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
    summary = f"max |delta| {completeness['delta'].abs().max():.2g} ({worst:.1%} of F(x)-F(baseline)), {n_steps} steps"
    if worst > tolerance:
        summary += (
            f"; the gap is quadrature error, still above {tolerance:.0%} at the most steps tried: "
            f"pass n_steps above {n_steps} to close it"
            if auto
            else f"; more steps close the gap: pass n_steps above {n_steps} (or None to pick them from the gap)"
        )
    return {
        "table": table,
        "completeness": completeness,
        "attributions": ig["attributions"].cpu(),
        "n_steps": n_steps,
        "status": result_status(not math.isfinite(worst), worst > tolerance),
        "summary": summary,
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
