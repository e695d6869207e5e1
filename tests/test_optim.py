"""Tests for utils.training.optim: AdamW decay groups and the warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from utils.training.optim import build_lr_scheduler, build_optimizer


def _ids(params):
    return {id(p) for p in params}


def test_decay_groups_split_matrices_from_biases_and_norms(tiny_gpt):
    model, _ = tiny_gpt
    optimizer = build_optimizer(model, learning_rate=1e-3, weight_decay=0.1)
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)

    named = dict(model.named_parameters())  # tied lm_head/tok_emb weight appears once here
    assert _ids(decay["params"]) == _ids(p for n, p in named.items() if p.ndim == 2)
    assert _ids(no_decay["params"]) == _ids(p for n, p in named.items() if p.ndim < 2)
    # Spot checks by name: biases and LayerNorm weights are never decayed.
    assert id(named["blocks.0.attn.qkv.bias"]) in _ids(no_decay["params"])
    assert id(named["blocks.0.ln_1.weight"]) in _ids(no_decay["params"])
    assert id(named["ln_f.weight"]) in _ids(no_decay["params"])
    assert id(named["blocks.1.mlp.0.weight"]) in _ids(decay["params"])
    assert id(model.lm_head.weight) in _ids(decay["params"])


def test_no_parameter_twice_with_tied_embedding(tiny_gpt):
    model, _ = tiny_gpt
    assert model.lm_head.weight is model.tok_emb.weight
    optimizer = build_optimizer(model, learning_rate=1e-3)
    all_params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(all_params) == len(_ids(all_params)) == len(list(model.parameters()))


def test_frozen_parameters_are_left_out_and_all_frozen_is_an_error():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    model[0].weight.requires_grad_(False)
    optimizer = build_optimizer(model, learning_rate=1e-3)
    assert id(model[0].weight) not in _ids(p for g in optimizer.param_groups for p in g["params"])
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, learning_rate=1e-3)


def test_only_bias_like_parameters_gives_one_group():
    optimizer = build_optimizer(nn.LayerNorm(8), learning_rate=1e-3)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["weight_decay"] == 0.0


def test_fused_is_not_used_on_cpu(tiny_gpt):
    model, _ = tiny_gpt
    optimizer = build_optimizer(model, learning_rate=1e-3)
    assert not optimizer.defaults.get("fused")
    assert optimizer.defaults["lr"] == 1e-3
    assert isinstance(optimizer, torch.optim.AdamW)


def _lrs(warmup, total, n_steps, min_lr_ratio=0.1, peak=2.0):
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=peak)
    scheduler = build_lr_scheduler(optimizer, warmup, total, min_lr_ratio=min_lr_ratio)
    lrs = []
    for _ in range(n_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_min_ratio():
    peak, warmup, total, ratio = 2.0, 4, 20, 0.1
    lrs = _lrs(warmup, total, 26, ratio, peak)
    # Warmup: (step + 1) / warmup of the peak.
    torch.testing.assert_close(lrs[:warmup], [peak * (s + 1) / warmup for s in range(warmup)], rtol=1e-12, atol=0)
    for step in range(warmup, 26):
        progress = min(1.0, (step - warmup) / (total - warmup))
        expected = peak * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
        assert lrs[step] == pytest.approx(expected, rel=1e-12)
    assert lrs[warmup] == pytest.approx(peak)  # the peak right after warmup
    assert lrs[warmup + (total - warmup) // 2] == pytest.approx(peak * (ratio + (1 - ratio) / 2))
    assert lrs[total:] == pytest.approx([peak * ratio] * (26 - total))  # floor, never below
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))  # monotone decay


def test_schedule_without_warmup_starts_at_peak():
    lrs = _lrs(warmup=0, total=10, n_steps=11, min_lr_ratio=0.0, peak=1.0)
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)
