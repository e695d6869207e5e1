"""Is the model causal? One probe, never wrong, for every place that judges it; and what an encoder-decoder is.

A next-token language model must not see the token it predicts: the logits at
position ``t`` may depend on tokens ``0..t`` only. ``probe_causality`` changes
the last real token of each sequence and compares the logits at every earlier
position. It answers True, False, or None ("cannot tell"), and it is never
wrong the way a plain comparison can be: it runs in eval mode without
gradients, and first checks that two identical calls give identical logits. A
model whose output changes between identical calls (dropout still active in a
module shared with another model, say) gets None with the reason, never "not
causal". The model is called through ``make_forward_fn``, so a padding mask is
always passed by name and never lands in a second positional slot.

An encoder-decoder (T5, BART) is not a next-token causal LM at all:
``refuse_encoder_decoder`` refuses it with one message that says what the library
can do with it and what it cannot.

Example:
    >>> verdict = probe_causality(model, input_ids)
    >>> verdict.causal, verdict.reason
    (True, 'changing the last token leaves the logits at every earlier position unchanged')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from utils.model_helpers import (
    ForwardFn,
    config_size,
    is_encoder_decoder,
    make_forward_fn,
    model_mode,
    model_output_tensor,
)

# The engine's warning for a model that sees the tokens it predicts (tests and the comparison read it).
NOT_CAUSAL_WARNING = (
    "the model is not causal: changing the last token changes the logits at earlier positions, so "
    "each next-token target is visible in its input and the loss can fall by copying. Add a causal "
    "mask for language modelling, or read these results as an upper bound."
)
NONDETERMINISTIC_REASON = (
    "cannot tell: the model's output changes between identical calls in eval mode; is dropout active in a "
    "module shared with another model (a deep copy whose closure still calls the original, say)?"
)
# Two calls count as equal within this (FP32, no autocast), as the engine always compared them.
RTOL, ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class CausalVerdict:
    """What the probe found.

    Attributes:
        causal: True, False, or None when it cannot tell.
        reason: why, in words.
        warn: whether a run should warn about it (not causal, or an output that is not repeatable).
    """

    causal: bool | None
    reason: str
    warn: bool = False

    @property
    def warning(self) -> str | None:
        """The warning a training run gives for this verdict, or None."""
        if not self.warn:
            return None
        return (
            NOT_CAUSAL_WARNING
            if self.causal is False
            else f"could not judge whether the model is causal: {self.reason}"
        )


def probe_causality(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    forward: ForwardFn | None = None,
    vocab_size: int | None = None,
    config: Any = None,
) -> CausalVerdict:
    """Judge whether earlier positions' outputs depend on later tokens.

    Args:
        model: the model; run in eval mode without gradients, its mode restored after.
        input_ids: a (B, T) batch; padded rows are judged up to their last real token.
        attention_mask: (B, T), 1 for real tokens, or None.
        forward: how to call the model (default ``make_forward_fn(model)``).
        vocab_size: ids stay below it when the last token is changed (default: the output width).
        config: the model's config, to recognise an encoder-decoder.

    Returns:
        A ``CausalVerdict``: True, False, or None with the reason it cannot tell.
    """
    if is_encoder_decoder(model, config):
        return CausalVerdict(None, f"cannot tell: {encoder_decoder_reason(model, config)}")
    forward = make_forward_fn(model) if forward is None else forward
    last = _last_real_positions(input_ids, attention_mask)  # (B,)
    if int(last.max()) < 1:  # a deliberate sync, once
        return CausalVerdict(None, "cannot tell: every sequence has a single token, so there is no earlier position")
    first, again, changed = _three_calls(model, forward, input_ids, attention_mask, last, vocab_size)
    earlier = torch.arange(input_ids.size(1), device=last.device) < last[:, None]  # (B, T)
    if attention_mask is not None:
        earlier &= attention_mask.to(last.device).bool()
    first, again, changed = first[earlier], again[earlier], changed[earlier]  # (N, V)
    if not torch.isfinite(first).all():
        return CausalVerdict(None, "cannot tell: the model's logits are not finite")
    if not torch.allclose(first, again, rtol=RTOL, atol=ATOL):
        return CausalVerdict(None, NONDETERMINISTIC_REASON, warn=True)
    if not torch.allclose(first, changed, rtol=RTOL, atol=ATOL):
        diff = float((first - changed).abs().max())
        return CausalVerdict(
            False, f"changing the last token changes earlier positions' logits by up to {diff:.3g}", True
        )
    return CausalVerdict(True, "changing the last token leaves the logits at every earlier position unchanged")


def _last_real_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The index of each row's last real token (the last 1 of the mask, left or right padding alike)."""
    batch, seq_len = input_ids.shape
    if attention_mask is None:
        return torch.full((batch,), seq_len - 1, dtype=torch.long, device=input_ids.device)
    positions = torch.arange(seq_len, device=input_ids.device).expand(batch, -1)
    real = attention_mask.to(input_ids.device).bool()
    return torch.where(real, positions, torch.zeros_like(positions)).max(dim=1).values


def _three_calls(
    model: nn.Module,
    forward: ForwardFn,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    last: torch.Tensor,
    vocab_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The outputs of two identical calls and of one with each row's last real token changed, in FP32."""
    devices = [input_ids.device] if input_ids.device.type == "cuda" else []
    # Forked: dropout that stays active would otherwise move the caller's random stream.
    with model_mode(model, training=False), torch.no_grad(), torch.random.fork_rng(devices=devices):
        first = model_output_tensor(forward(input_ids, attention_mask))[0].float()
        again = model_output_tensor(forward(input_ids, attention_mask))[0].float()
        width = vocab_size or first.size(-1)
        rows = torch.arange(input_ids.size(0), device=input_ids.device)
        changed_ids = input_ids.clone()
        changed_ids[rows, last] = (changed_ids[rows, last] + 1) % width
        changed = model_output_tensor(forward(changed_ids, attention_mask))[0].float()
    return first, again, changed


def encoder_decoder_reason(model: nn.Module, config: Any = None) -> str:
    """What an encoder-decoder is to this library: what it can do with one, and what it cannot."""
    if config_size(config, "max_seq_len") is None:
        how = "its config has no max_seq_len, so pass seq_len=, e.g. run_all_tier1_tests(model, config, seq_len=32)"
    else:
        how = "e.g. run_all_tier1_tests(model, config)"
    return (
        f"{type(model).__name__} is an encoder-decoder model, not a next-token causal language model: its "
        "encoder sees the whole input, so next-token training (test_fine_tuning, the AMP benchmark, the search), "
        "the baseline comparison and the attention, attribution and causality verdicts do not apply to it. What "
        "works: the Tier 1 checks (shapes, gradient flow, output stability, initialization, memory, speed), which "
        f"feed its decoder the input tokens (decoder_input_ids=input_ids); {how}"
    )


def refuse_encoder_decoder(model: nn.Module, config: Any, purpose: str) -> None:
    """Refuse an encoder-decoder before any work, with the one message that says what to do instead.

    Raises:
        ValueError: ``model`` is an encoder-decoder (see ``is_encoder_decoder``).
    """
    if is_encoder_decoder(model, config):
        raise ValueError(f"{purpose}: {encoder_decoder_reason(model, config)}")


__all__ = [
    "NONDETERMINISTIC_REASON",
    "NOT_CAUSAL_WARNING",
    "CausalVerdict",
    "refuse_encoder_decoder",
    "encoder_decoder_reason",
    "probe_causality",
]
