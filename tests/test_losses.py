"""Tests for utils.training.losses: summed next-token loss and accuracy, with padding ignored."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from utils.training.data import IGNORE_INDEX, collate_lm_batch
from utils.training.losses import next_token_loss_sums

V = 11


def _padded_batch():
    """Two sequences of lengths 5 and 3, padded to 5 (pad id 0)."""
    batch = collate_lm_batch([torch.tensor([1, 2, 3, 4, 5]), torch.tensor([6, 7, 8])], pad_token_id=0)
    logits = torch.randn(2, 5, V, generator=torch.Generator().manual_seed(0))
    return logits, batch["labels"], batch["n_targets"]


def test_matches_shifted_cross_entropy_sum_and_argmax_count():
    logits = torch.randn(3, 6, V, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, V, (3, 6), generator=torch.Generator().manual_seed(2))
    loss_sum, n_correct = next_token_loss_sums(logits, labels)

    expected = sum(F.cross_entropy(logits[b, t], labels[b, t + 1], reduction="sum") for b in range(3) for t in range(5))
    torch.testing.assert_close(loss_sum, expected, rtol=1e-6, atol=1e-5)
    expected_correct = int((logits[:, :-1].argmax(-1) == labels[:, 1:]).sum())
    assert n_correct.item() == expected_correct
    assert loss_sum.dtype == torch.float32 and n_correct.dtype == torch.int64
    assert loss_sum.requires_grad is False  # logits had no grad; no graph is invented


def test_padded_targets_count_for_neither_loss_nor_accuracy():
    logits, labels, n_targets = _padded_batch()
    loss_sum, n_correct = next_token_loss_sums(logits, labels)
    # Row 1 has 3 real tokens: positions 0 and 1 predict real targets; 2..4 predict padding.
    changed = logits.clone()
    changed[1, 2:] = torch.randn(3, V) * 100
    changed[1, 2:, 0] = 1e4  # would predict the pad id 0 everywhere if pads counted
    changed[0, 4] = 1e3  # the last position has no next token at all
    loss_changed, correct_changed = next_token_loss_sums(changed, labels)
    torch.testing.assert_close(loss_changed, loss_sum, rtol=0, atol=0)
    assert correct_changed.item() == n_correct.item()

    # The real targets alone give the same sum.
    real = [(0, t) for t in range(4)] + [(1, 0), (1, 1)]
    expected = sum(F.cross_entropy(logits[b, t], labels[b, t + 1], reduction="sum") for b, t in real)
    torch.testing.assert_close(loss_sum, expected, rtol=1e-6, atol=1e-5)
    assert n_targets == len(real)


def test_padded_positions_get_no_gradient():
    logits, labels, _ = _padded_batch()
    logits.requires_grad_(True)
    loss_sum, _ = next_token_loss_sums(logits, labels)
    loss_sum.backward()
    assert torch.all(logits.grad[1, 2:] == 0)
    assert torch.all(logits.grad[:, -1] == 0)
    assert logits.grad[1, :2].abs().sum() > 0


def test_all_targets_ignored_gives_zero():
    logits = torch.randn(1, 4, V)
    labels = torch.tensor([[3, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    loss_sum, n_correct = next_token_loss_sums(logits, labels)
    assert loss_sum.item() == 0.0 and n_correct.item() == 0


def test_low_precision_logits_give_a_float32_sum_close_to_fp32():
    logits, labels, n_targets = _padded_batch()
    loss32, _ = next_token_loss_sums(logits, labels)
    loss16, _ = next_token_loss_sums(logits.bfloat16(), labels)
    assert loss16.dtype == torch.float32
    # bf16 keeps ~3 significant digits of each logit.
    torch.testing.assert_close(loss16 / n_targets, loss32 / n_targets, rtol=2e-2, atol=2e-2)


def test_perfect_logits_give_full_accuracy_and_near_zero_loss():
    labels = torch.tensor([[1, 2, 3, 4]])
    logits = torch.full((1, 4, V), -1e4)
    for t in range(3):
        logits[0, t, labels[0, t + 1]] = 1e4
    loss_sum, n_correct = next_token_loss_sums(logits, labels)
    assert n_correct.item() == 3
    assert math.isclose(loss_sum.item(), 0.0, abs_tol=1e-6)


@pytest.mark.parametrize("shape", [(2, 5), (2, 4, V), (3, 5, V)], ids=["2-D", "short-seq", "wrong-batch"])
def test_shape_mismatch_is_a_clear_error(shape):
    labels = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="per-token vocabulary logits"):
        next_token_loss_sums(torch.zeros(shape), labels)
