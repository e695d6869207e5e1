"""Attention weights captured from the computation itself, for models that do not hand them over.

Most hand-written and exported models compute attention themselves and return
only logits. ``capture_from_computation`` runs one forward pass under a
``torch.overrides.TorchFunctionMode`` that sees every torch call the model makes:

- a softmax over the last axis of a ``(B, H, T, T)`` tensor (or ``(B*H, T, T)``,
  as ``torch.bmm`` code builds it) whose query and key axes are the input's
  ``T`` tokens is recorded as one layer's weights (``'softmax_capture'``);
- ``F.scaled_dot_product_attention`` returns no weights, so they are recomputed
  from its own arguments, ``softmax(q k^T * scale + mask)`` with ``attn_mask``
  (boolean or additive), ``is_causal``, ``scale`` and grouped-query heads
  honoured (``'sdpa_recomputed'``). This runs in the capture pass only, never
  in training.

Example:
    >>> weights, method = capture_from_computation(probe.forward, input_ids)
    >>> method, weights[0].shape
    ('sdpa_recomputed', torch.Size([2, 4, 16, 16]))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

SOFTMAX_CAPTURE, SDPA_RECOMPUTED = "softmax_capture", "sdpa_recomputed"
# Every spelling of softmax a model may call; each reaches the mode once (inner calls run with it off).
_SOFTMAX_FUNCTIONS = frozenset((F.softmax, torch.softmax, torch.Tensor.softmax, torch.special.softmax))


class AttentionCapture(TorchFunctionMode):
    """Record attention weights ``(B, H, T, T)`` (float32, CPU) from softmax and SDPA calls, in call order.

    Args:
        batch_size: B of the input.
        seq_len: T of the input; only square ``T x T`` attention over these tokens is recorded.
    """

    def __init__(self, batch_size: int, seq_len: int) -> None:
        super().__init__()
        self.batch_size, self.seq_len = batch_size, seq_len
        self.weights: list[torch.Tensor] = []
        self.methods: list[str] = []

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        if func in _SOFTMAX_FUNCTIONS:
            self._keep(_softmax_weights(output, args, kwargs), SOFTMAX_CAPTURE)
        elif func is F.scaled_dot_product_attention:
            self._keep(_sdpa_weights(*args, **kwargs), SDPA_RECOMPUTED)
        return output

    def _keep(self, weights: torch.Tensor | None, method: str) -> None:
        if weights is None or weights.shape[-2:] != (self.seq_len, self.seq_len):
            return
        if weights.ndim == 3 and weights.shape[0] % self.batch_size == 0:  # (B*H, T, T), batch first
            weights = weights.reshape(self.batch_size, -1, self.seq_len, self.seq_len)
        if weights.ndim != 4 or weights.shape[0] != self.batch_size:
            return
        self.weights.append(weights.detach().float().cpu())
        self.methods.append(method)


def _softmax_weights(output: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The softmax's output when it was taken over the last axis, else None."""
    if not isinstance(output, torch.Tensor) or output.ndim not in (3, 4):
        return None
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    return output if dim in (-1, output.ndim - 1) else None


def _sdpa_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor | None:
    """``softmax(q k^T * scale + mask)``, the weights SDPA applies to ``value`` (dropout aside), in float32."""
    if query.ndim not in (3, 4) or key.ndim != query.ndim:
        return None
    q, k = query.float(), key.float()
    if q.ndim == 4 and k.shape[1] != q.shape[1]:  # grouped-query attention: each key head serves several queries
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else 1.0 / math.sqrt(q.size(-1)))
    if is_causal:
        scores = scores.masked_fill(~torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril(), -math.inf)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, -math.inf)
        else:
            scores = scores + attn_mask.float()
    weights = scores.softmax(dim=-1)
    return weights.nan_to_num(0.0)  # a query that may see no key: SDPA gives it no weight either


def capture_from_computation(
    forward: Callable[[torch.Tensor], Any], input_ids: torch.Tensor
) -> tuple[list[torch.Tensor], str]:
    """One forward pass under ``AttentionCapture``: the weights per layer and how they were captured.

    Returns:
        (weights, method): each ``(B, H, T, T)`` float32 on CPU; ``method`` is ``'softmax_capture'``,
        ``'sdpa_recomputed'``, both joined by '+' when a model uses both, or '' when nothing was seen.
    """
    capture = AttentionCapture(*input_ids.shape)
    with torch.no_grad(), capture:
        forward(input_ids)
    method = "+".join(dict.fromkeys(capture.methods))
    return capture.weights, method


__all__ = ["SDPA_RECOMPUTED", "SOFTMAX_CAPTURE", "AttentionCapture", "capture_from_computation"]
