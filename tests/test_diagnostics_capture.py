"""Tests for utils.diagnostics.capture: attention weights read from the computation match the model's own.

Tolerances: the captured weights are float32 softmaxes of the same scores the model computes,
so they agree to float32 rounding (atol 1e-6 on weights in [0, 1]); a recomputed SDPA goes
through a different kernel than the fused one, so ``weights @ v`` is held to atol 1e-5.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import hf_model, token_ids

from utils.diagnostics.capture import SDPA_RECOMPUTED, SOFTMAX_CAPTURE, AttentionCapture, capture_from_computation
from utils.model_helpers import make_forward_fn

WEIGHTS_TOL = dict(rtol=0, atol=1e-6)


def _own_weights(model, ids, mask=None):
    """The weights a model returns itself for output_attentions=True, float32."""
    with torch.no_grad():
        output = model(ids, attention_mask=mask, output_attentions=True)
    attentions = output["attentions"] if isinstance(output, dict) else output.attentions
    return [a.float() for a in attentions]


@pytest.mark.parametrize("padded", [False, True])
def test_tiny_gpt_sdpa_weights_recomputed_equal_its_explicit_weights(tiny_gpt, padded):
    model, _ = tiny_gpt
    model.eval()
    ids = token_ids(2, 12)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 7:] = 0  # the SDPA call then takes a boolean attn_mask instead of is_causal
    captured, method = capture_from_computation(lambda x: model(x, attention_mask=mask if padded else None), ids)
    assert method == SDPA_RECOMPUTED
    own = _own_weights(model, ids, mask if padded else None)
    assert len(captured) == len(own) == 2
    for got, expected in zip(captured, own, strict=True):
        torch.testing.assert_close(got, expected, **WEIGHTS_TOL)


@pytest.mark.parametrize("kind", ["hf_gpt2", "hf_llama"])
def test_hugging_face_sdpa_weights_recomputed_equal_its_eager_weights(kind):
    if kind == "hf_gpt2":
        model, _ = hf_model("hf_gpt2")
    else:
        from outside_models import build_outside

        model, _ = build_outside("hf_llama")  # one key/value head for two query heads
    model.eval()
    ids = token_ids(2, 12)
    captured, method = capture_from_computation(make_forward_fn(model), ids)  # default: SDPA attention
    assert method == SDPA_RECOMPUTED
    model.set_attn_implementation("eager")
    own = _own_weights(model, ids)
    captured_eager, eager_method = capture_from_computation(make_forward_fn(model), ids)
    assert eager_method == SOFTMAX_CAPTURE
    assert len(captured) == len(own) == len(captured_eager) == 2
    for got, eager, expected in zip(captured, captured_eager, own, strict=True):
        torch.testing.assert_close(got, expected, **WEIGHTS_TOL)
        torch.testing.assert_close(eager, expected, **WEIGHTS_TOL)


def test_x_transformers_softmax_capture_equals_the_weights_it_returns():
    from outside_models import build_outside

    model, _ = build_outside("xtransformers")
    model.eval()
    ids = token_ids(2, 12)
    captured, method = capture_from_computation(make_forward_fn(model), ids)
    with torch.no_grad():
        _, own = model(ids, return_attn=True)
    assert method == SOFTMAX_CAPTURE and len(captured) == len(own) == 2
    for got, expected in zip(captured, own, strict=True):
        torch.testing.assert_close(got, expected.float(), **WEIGHTS_TOL)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"is_causal": True},
        {"is_causal": True, "scale": 0.3},
        {"attn_mask": "bool"},
        {"attn_mask": "float"},
        {"enable_gqa": True},
    ],
)
def test_recomputed_sdpa_weights_reproduce_its_output(options):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 8, generator=generator)
    kv_heads = 2 if options.get("enable_gqa") else 4
    k, v = (torch.randn(2, kv_heads, 6, 8, generator=generator) for _ in range(2))
    options = dict(options)
    if options.get("attn_mask") == "bool":
        options["attn_mask"] = torch.rand(2, 1, 6, 6, generator=generator) > 0.3
        options["attn_mask"] |= torch.eye(6, dtype=torch.bool)  # every query sees at least itself
    elif options.get("attn_mask") == "float":
        options["attn_mask"] = torch.randn(1, 1, 6, 6, generator=generator)
    capture = AttentionCapture(batch_size=2, seq_len=6)
    with capture:
        out = F.scaled_dot_product_attention(q, k, v, **options)
    assert capture.methods == [SDPA_RECOMPUTED]
    (weights,) = capture.weights
    assert weights.shape == (2, 4, 6, 6)
    values = v.repeat_interleave(4 // kv_heads, dim=1)
    torch.testing.assert_close(weights @ values, out, rtol=0, atol=1e-5)


def test_only_softmax_over_the_key_axis_of_square_token_scores_is_recorded():
    capture = AttentionCapture(batch_size=2, seq_len=5)
    scores = torch.randn(2 * 3, 5, 5)  # (B*H, T, T), as torch.bmm code builds it
    with capture:
        torch.softmax(scores, dim=-1)
        scores.softmax(dim=1)  # over the queries: not attention
        F.softmax(torch.randn(2, 5, 7), dim=-1)  # not square over the tokens (a vocabulary, say)
        F.softmax(torch.randn(3, 2, 5, 5), dim=-1)  # another batch size
    assert capture.methods == [SOFTMAX_CAPTURE]
    torch.testing.assert_close(capture.weights[0], scores.softmax(-1).view(2, 3, 5, 5), rtol=0, atol=0)


def test_nothing_seen_gives_no_weights_and_no_method():
    weights, method = capture_from_computation(lambda ids: ids.float() * 2, token_ids(2, 4))
    assert weights == [] and method == ""
