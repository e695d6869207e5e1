"""Tests for utils.causality: one causal probe, never wrong, and the encoder-decoder message."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from outside_models import MinGPT, MinGPTConfig, build_outside
from tiny_models import token_ids

from utils import causality


def _padded(batch=3, seq_len=12, lengths=(12, 7, 4), high=256):
    """Right-padded ids (pad id 0) and their mask, as the engine's collate makes them."""
    ids = token_ids(batch, seq_len, high=high)
    mask = torch.zeros(batch, seq_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return ids.masked_fill(mask == 0, 0), mask


class AlwaysDropout(nn.Module):
    """A causal model whose dropout ignores eval mode: its output changes between identical calls."""

    def __init__(self, vocab_size=32):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, 8)
        self.head = nn.Linear(8, vocab_size)

    def forward(self, input_ids):
        return self.head(F.dropout(self.emb(input_ids), 0.5, training=True))


class RecordingMinGPT(MinGPT):
    """minGPT that records what arrives in its ``targets`` slot."""

    def __init__(self):
        super().__init__(MinGPTConfig())
        self.targets_seen = []

    def forward(self, idx, targets=None):
        self.targets_seen.append(targets)
        return super().forward(idx, targets)


@pytest.mark.parametrize("padded", [False, True])
def test_a_causal_model_is_causal_padded_or_not(tiny_gpt, padded):
    model, _ = tiny_gpt
    ids, mask = _padded() if padded else (token_ids(2, 12), None)
    verdict = causality.probe_causality(model, ids, mask)
    assert verdict.causal is True and verdict.warning is None
    assert model.training  # the mode is restored


@pytest.mark.parametrize("padded", [False, True])
def test_a_bidirectional_model_is_not_causal_padded_or_not(tiny_encoder, padded):
    model, _ = tiny_encoder
    ids, mask = _padded() if padded else (token_ids(2, 12), None)
    verdict = causality.probe_causality(model, ids, mask)
    assert verdict.causal is False
    assert verdict.warning == causality.NOT_CAUSAL_WARNING
    assert verdict.warning.startswith("the model is not causal")  # the engine's text, which tests match


def test_padded_rows_are_judged_at_their_last_real_token(tiny_encoder):
    # Only the short row is real up to position 3; changing a pad there would prove nothing.
    model, _ = tiny_encoder
    ids, mask = _padded(batch=1, lengths=(4,))
    assert causality.probe_causality(model, ids, mask).causal is False


@pytest.mark.parametrize("padded", [False, True])
def test_a_mingpt_forward_never_gets_the_mask_as_targets(padded):
    # minGPT's forward is (idx, targets=None): a mask passed positionally would land in targets.
    torch.manual_seed(0)
    model = RecordingMinGPT()
    ids, mask = _padded() if padded else (token_ids(2, 12), None)
    verdict = causality.probe_causality(model, ids, mask)
    assert verdict.causal is True
    assert model.targets_seen and all(t is None for t in model.targets_seen)


def test_a_model_whose_output_changes_between_identical_calls_is_never_called_not_causal():
    torch.manual_seed(0)
    model = AlwaysDropout()
    rng = torch.get_rng_state()
    verdict = causality.probe_causality(model, token_ids(2, 8, high=32))
    assert verdict.causal is None and verdict.reason == causality.NONDETERMINISTIC_REASON
    assert verdict.warning.startswith("could not judge whether the model is causal: cannot tell")
    assert torch.equal(torch.get_rng_state(), rng)  # the probe leaves the caller's random stream alone


def test_a_mingpt_deep_copy_that_still_runs_the_originals_dropout_gets_no_false_verdict():
    # The bug: deepcopy keeps minGPT's mlpf closure, so the copy runs the user's MLP, in train mode
    # with dropout; the old probe read the dropout noise as "not causal".
    model, _ = build_outside("mingpt")
    model.train()
    twin = copy.deepcopy(model)
    verdict = causality.probe_causality(twin, token_ids(2, 12))
    assert verdict.causal is None and verdict.reason == causality.NONDETERMINISTIC_REASON
    model.eval()  # once nothing shared is in train mode, the same copy is judged correctly
    assert causality.probe_causality(twin, token_ids(2, 12)).causal is True


def test_single_tokens_and_non_finite_outputs_cannot_be_judged(tiny_gpt):
    model, _ = tiny_gpt
    assert causality.probe_causality(model, token_ids(2, 1)).causal is None

    class NaNModel(nn.Module):
        def forward(self, input_ids):
            return torch.full((*input_ids.shape, 8), float("nan"))

    verdict = causality.probe_causality(NaNModel(), token_ids(2, 4, high=8))
    assert verdict.causal is None and "not finite" in verdict.reason and verdict.warning is None


def test_an_encoder_decoder_gets_the_one_message():
    model, config = build_outside("hf_t5")
    verdict = causality.probe_causality(model, token_ids(2, 8), config=config)
    assert verdict.causal is None and "encoder-decoder" in verdict.reason
    with pytest.raises(ValueError) as raised:
        causality.refuse_encoder_decoder(model, config, "training")
    message = str(raised.value)
    assert message.startswith("training: T5ForConditionalGeneration is an encoder-decoder model")
    assert "not a next-token causal language model" in message
    assert "the Tier 1 checks" in message and "seq_len=" in message  # what works, and how
    assert "test_fine_tuning" in message and "comparison" in message and "attention" in message  # what does not


def test_decoder_only_models_are_not_refused(tiny_gpt):
    model, config = tiny_gpt
    causality.refuse_encoder_decoder(model, config, "training")  # no error
