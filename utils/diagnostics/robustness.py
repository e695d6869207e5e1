"""Tier 2: how far the predictions move under Gaussian noise on the token embeddings.

The noise is added by a hook on the token ``nn.Embedding``, so the model
needs no ``inputs_embeds`` argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from utils.checks import (
    check_bool,
    check_int,
    check_non_negative_number,
    check_number_in_range,
    check_positive_int,
    check_sequence,
)
from utils.model_helpers import (
    ModelProbe,
    find_token_embedding,
    model_mode,
    model_output_tensor,
    probe_model,
    random_input_ids,
    replaced_output,
    result_status,
)
from utils.progress import progress_bar


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
    levels = check_sequence(
        noise_levels,
        "noise_levels",
        check_non_negative_number,
        items="numbers >= 0",
        example="(0.0, 0.1)",
        convert=float,
    )
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
