"""Tests for utils.model_copy: a private copy proved independent, or the model itself saved and restored."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
from outside_models import build_outside
from tiny_models import token_ids, weights_changed, weights_of

from utils.model_copy import SavedState, private_copy


def _no_warnings():
    return warnings.catch_warnings(record=True)


class ShallowCopied(nn.Module):
    """Its deepcopy is a shallow copy: the copy's parameter table is the original's."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)

    def forward(self, input_ids):
        return self.emb(input_ids)

    def __deepcopy__(self, memo):
        return copy.copy(self)


class ClosureOverWeight(nn.Module):
    """A closure over a parameter (not a module): only the backward pass shows the sharing."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.scale = nn.Parameter(torch.ones(8))
        scale = self.scale
        self.scaled = lambda x: x * scale

    def forward(self, input_ids):
        return self.scaled(self.emb(input_ids))


class Uncopyable(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.stream = (i for i in range(3))  # generators cannot be deep-copied

    def forward(self, input_ids):
        return self.emb(input_ids)


def test_an_independent_copy_is_yielded_and_the_model_keeps_its_gradients(tiny_gpt):
    model, _ = tiny_gpt
    model.tok_emb.weight.grad = torch.full_like(model.tok_emb.weight, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a real copy
        with private_copy(model) as twin:
            assert twin is not model
            assert not {id(p) for p in twin.parameters()} & {id(p) for p in model.parameters()}
            assert all(p.grad is None for p in twin.parameters())  # the copy starts clean
            assert twin.lm_head.weight is twin.tok_emb.weight  # ties inside the copy survive
    torch.testing.assert_close(model.tok_emb.weight.grad, torch.full_like(model.tok_emb.weight, 0.5))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "tok_emb.weight")


@pytest.mark.parametrize(
    "build, reason",
    [
        (lambda: build_outside("mingpt")[0], "a forward pass of the copy runs 8 of your modules"),
        (ShallowCopied, "of the copy's parameters and buffers are still yours"),
        (ClosureOverWeight, "a backward pass of the copy gives 1 of your parameters a .grad"),
        (Uncopyable, "copy.deepcopy failed with TypeError"),
    ],
)
def test_a_copy_that_is_not_independent_falls_back_to_the_model_with_a_warning(build, reason):
    torch.manual_seed(0)
    model = build()
    with pytest.warns(UserWarning, match="would not be independent") as caught:
        with private_copy(model, "model") as trainee:
            assert trainee is model
    message = str(caught[0].message)
    assert reason in message and "restored afterwards" in message
    assert all(p.grad is None for p in model.parameters())  # the probe left no gradient behind


def test_the_fallback_restores_weights_buffers_flags_modes_gradients_and_device():
    model, _ = build_outside("mingpt")
    model.train()
    before = weights_of(model)
    params = list(model.parameters())
    first = params[0]
    first.grad = torch.ones_like(first)
    frozen = model.lm_head.weight
    frozen.requires_grad_(False)
    with pytest.warns(UserWarning, match="would not be independent"):
        with private_copy(model) as trainee:
            assert first.grad is None  # training starts from no gradient
            trainee.double().eval()  # everything a training run might change
            for p in trainee.parameters():
                p.requires_grad_(True)
            out, _ = trainee(token_ids(2, 8))
            out.double().sum().backward()
            with torch.no_grad():
                for p in trainee.parameters():
                    p.add_(1.0)
            trainee.transformer.h[0].attn.bias.zero_()
    assert not weights_changed(before, model)
    assert list(model.parameters()) == params and all(p.dtype == torch.float32 for p in params)
    assert all(m.training for m in model.modules())
    assert frozen.requires_grad is False
    torch.testing.assert_close(first.grad, torch.ones_like(first))
    assert all(p.grad is None for p in params[1:])


def test_the_fallback_restores_even_when_training_fails():
    model, _ = build_outside("mingpt")
    before = weights_of(model)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="boom"):
        with private_copy(model) as trainee:
            with torch.no_grad():
                next(trainee.parameters()).zero_()
            raise RuntimeError("boom")
    assert not weights_changed(before, model)


def test_saved_state_keeps_tied_weights_tied(tiny_gpt):
    model, _ = tiny_gpt
    saved = SavedState.of(model)
    with torch.no_grad():
        model.tok_emb.weight.mul_(0.0)
    saved.restore()
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.tok_emb.weight.abs().sum() > 0
