"""Next-token loss and accuracy, computed as device-side sums so the loop never syncs; and bits per byte."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from utils.training.data import IGNORE_INDEX
from utils.training.distributed import DistributedContext, sum_host_values


def next_token_loss_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and correct-prediction count for next-token targets.

    Position t predicts token t+1; targets equal to ``IGNORE_INDEX`` (padding)
    count for neither. Both results stay on the device: divide by the number
    of targets, counted on the host, to get means.

    Args:
        logits: (B, T, V) model outputs.
        labels: (B, T) token ids with padding set to ``IGNORE_INDEX``.

    Returns:
        (loss_sum, n_correct): a float32 scalar with grad, and an int64 scalar.
    """
    if logits.ndim != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"expected logits of shape (batch, seq, vocab) matching labels {tuple(labels.shape)}, "
            f"got {tuple(logits.shape)}; the model must return per-token vocabulary logits"
        )
    # Position t predicts token t+1; the last position has no target. Shifting the
    # (small) labels instead of slicing the (large) logits keeps the logits a view.
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # (B, T)
    # Cross-entropy in float32: under autocast the logits may be bf16/fp16.
    loss_sum = F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    with torch.no_grad():
        n_correct = ((logits.argmax(dim=-1) == targets) & (targets != IGNORE_INDEX)).sum()
    return loss_sum, n_correct


def bits_per_byte(mean_loss_nats: float, n_targets: float, n_bytes: float) -> float | None:
    """The summed next-token loss in bits over the UTF-8 bytes of the text scored: comparable across tokenizers.

    ``mean_loss_nats`` is the mean cross-entropy over ``n_targets`` targets, which stand for
    ``n_bytes`` bytes of text. For byte tokens (one byte each) it is ``mean_loss / ln 2``.
    None when no byte was scored.

    Example:
        >>> bits_per_byte(math.log(2), n_targets=100, n_bytes=100)
        1.0
    """
    if not n_bytes:
        return None
    return mean_loss_nats * n_targets / (math.log(2) * n_bytes)


def bits_per_byte_row(
    mean_loss_nats: float, n_targets: int, n_bytes: int | None, dist: DistributedContext, device: torch.device
) -> dict[str, float]:
    """``{'val/bits_per_byte': ...}`` over every rank's targets and bytes, or ``{}`` for token ids (``n_bytes`` None).

    One small collective under DDP (validation only); ``mean_loss_nats`` is already the all-rank mean.
    """
    if n_bytes is None:
        return {}
    targets, total_bytes = sum_host_values([n_targets, n_bytes], dist, device)
    return {"val/bits_per_byte": bits_per_byte(mean_loss_nats, targets, total_bytes)}
