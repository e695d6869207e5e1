"""Tier 2 analysis on the built-in models, nn.TransformerEncoder and tiny Hugging Face models."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from matplotlib.figure import Figure
from tiny_models import TINY, build_model

from utils import models
from utils import tier2_advanced_analysis as t2

PUBLIC_CHECKS = [t2.test_attention_patterns, t2.test_attribution_analysis, t2.test_robustness]


class ScriptedAttention(nn.Module):
    """Returns hand-made attention: head 0 is a sink on the first token, head 1 looks one token back."""

    def __init__(self, vocab_size: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab_size, 8)
        self.head = nn.Linear(8, vocab_size)

    def forward(self, input_ids, attention_mask=None, output_attentions=False):
        logits = self.head(self.emb(input_ids))
        if not output_attentions:
            return logits
        batch, seq_len = input_ids.shape
        causal = torch.ones(seq_len, seq_len).tril()
        sink = causal * 0.01 + torch.eye(seq_len, seq_len)[0].expand(seq_len, -1) * 5
        previous = causal * 0.01 + torch.eye(seq_len, seq_len).roll(-1, dims=1).tril() * 5
        heads = torch.stack([sink, previous]) * causal  # (2, T, T)
        heads = heads / heads.sum(-1, keepdim=True)
        return {"logits": logits, "attentions": [heads.expand(batch, -1, -1, -1)] * 2}


# -- test_attention_patterns -----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "method", "n_heads"),
    [
        ("gpt", "output_attentions", 2),
        ("encoder", "output_attentions", 2),
        ("torch_encoder", "nn.MultiheadAttention hooks", 2),
        ("torch_causal", "nn.MultiheadAttention hooks", 2),
        ("hf_gpt2", "output_attentions", 2),
        ("hf_bert_mlm", "output_attentions", 2),
        ("hf_bert", "output_attentions", 2),
    ],
)
def test_attention_is_captured_from_every_kind_of_model(kind, method, n_heads):
    model, config = build_model(kind)
    model.eval()  # eval mode is where nn.TransformerEncoderLayer would take its fused fast path
    result = t2.test_attention_patterns(model, config, batch_size=2, seq_len=12)
    assert result["method"] == method
    assert len(result["attentions"]) == 2 and result["attentions"][0].shape == (2, n_heads, 12, 12)
    row_sums = result["attentions"][0].sum(-1)
    torch.testing.assert_close(row_sums, torch.ones_like(row_sums), rtol=0, atol=1e-5)
    assert len(result["table"]) == 2 * n_heads
    # Random-init heads spread attention over what each query can see: nothing is collapsed.
    assert not result["table"]["collapsed"].any()
    assert result["status"] == "pass"
    assert isinstance(result["figure"], Figure) and isinstance(result["entropy_figure"], Figure)
    assert not model.training


def test_causal_masks_do_not_look_collapsed(tiny_gpt):
    model, config = tiny_gpt
    result = t2.test_attention_patterns(model, config, batch_size=2, seq_len=32)
    weights = result["attentions"][0]
    assert torch.all(weights[0, 0].triu(1) == 0)  # really causal
    # Normalizing by log(T) instead of log(visible keys) would give ~0.8 here.
    assert result["table"]["entropy_norm"].min() > 0.95
    assert result["layers"]["n_collapsed"].sum() == 0


def test_hf_attention_implementation_is_restored():
    model, config = build_model("hf_gpt2")
    before = model.config._attn_implementation
    assert t2.test_attention_patterns(model, config, batch_size=1, seq_len=8)["method"] == "output_attentions"
    assert model.config._attn_implementation == before


def test_collapsed_and_previous_token_heads_are_told_apart():
    result = t2.test_attention_patterns(
        ScriptedAttention(), {"vocab_size": 16, "max_seq_len": 16}, batch_size=2, seq_len=16
    )
    heads = result["table"].set_index(["layer", "head"])
    assert heads.loc[(0, 0), "collapsed"] and heads.loc[(0, 0), "pattern"] == "first_token"
    assert not heads.loc[(0, 1), "collapsed"] and heads.loc[(0, 1), "pattern"] == "previous_token"
    assert heads.loc[(0, 0), "entropy_norm"] < 0.2
    assert result["status"] == "warn" and result["summary"].startswith("2/4 heads collapsed")
    assert 0 < result["layers"]["head_diversity"].iloc[0] <= 1


def test_attention_needs_a_way_to_see_the_weights():
    class NoAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(16, 8)

        def forward(self, input_ids):
            return self.emb(input_ids)

    with pytest.raises(ValueError, match="cannot capture attention weights"):
        t2.test_attention_patterns(NoAttention(), {"vocab_size": 16})


# -- test_attribution_analysis -------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt", "torch_encoder", "hf_gpt2", "hf_bert"])
def test_integrated_gradients_are_complete(kind):
    model, config = build_model(kind)
    result = t2.test_attribution_analysis(model, config, n_samples=2, seq_len=8, n_steps=64, progress=False)
    completeness = result["completeness"]
    gap = torch.tensor(completeness["f_input"] - completeness["f_baseline"])
    total = torch.tensor(completeness["attribution_sum"])
    # Post-norm nn.TransformerEncoder with N(0, 1) embeddings converges slowest (~0.3% at 64 steps).
    torch.testing.assert_close(total, gap, rtol=1e-2, atol=1e-4)
    assert (gap.abs() > 1e-3).all()  # the explained output really depends on the input
    assert result["status"] == "pass"
    assert len(result["table"]) == 2 * 8
    torch.testing.assert_close(
        result["table"].groupby("sample")["abs_share"].sum().to_numpy().sum(), 2.0, rtol=1e-5, atol=1e-5
    )
    assert result["attributions"].shape[:2] == (2, 8)
    assert isinstance(result["figure"], Figure)


def test_built_in_model_completeness_delta_is_small_at_default_steps():
    model, config = models.tiny_gpt(**TINY)
    completeness = t2.test_attribution_analysis(model, config, progress=False)["completeness"]
    assert completeness["relative_delta"].max() < 1e-3


def test_too_few_steps_show_up_in_the_delta(tiny_gpt):
    model, config = tiny_gpt
    deltas = {
        steps: t2.test_attribution_analysis(model, config, n_steps=steps, progress=False)["completeness"]["delta"]
        .abs()
        .max()
        for steps in (1, 50)
    }
    assert deltas[50] < deltas[1]


def test_attribution_uses_the_given_inputs_and_target(tiny_gpt):
    model, config = tiny_gpt
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    result = t2.test_attribution_analysis(
        model, config, input_ids=input_ids, target_token=3, position=2, n_steps=16, progress=False
    )
    assert result["table"]["token_id"].tolist() == [5, 6, 7, 8, 9, 10]
    assert result["completeness"]["target"].tolist() == [3]
    # The model is causal: tokens after the explained position get no credit.
    torch.testing.assert_close(result["attributions"][0, 3:].abs().sum().item(), 0.0, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"position": 99}, "position=99"),
        ({"target_token": 999}, "target_token=999"),
        ({"n_steps": 0}, "n_steps"),
        ({"input_ids": torch.rand(2, 4)}, "input_ids"),
    ],
)
def test_attribution_rejects_bad_arguments(tiny_gpt, kwargs, message):
    model, config = tiny_gpt
    with pytest.raises(ValueError, match=message):
        t2.test_attribution_analysis(model, config, progress=False, **kwargs)


# -- test_robustness -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt", "torch_encoder", "hf_bert_mlm"])
def test_agreement_falls_as_noise_grows(kind):
    model, config = build_model(kind)
    result = t2.test_robustness(
        model, config, noise_levels=(0.0, 0.1, 1.0, 5.0), n_samples=4, seq_len=8, n_trials=2, progress=False
    )
    table = result["table"]
    assert table["noise_level"].tolist() == [0.0, 0.1, 1.0, 5.0]
    assert table["agreement"].iloc[0] == 1.0 and table["flip_rate"].iloc[0] == 0.0
    torch.testing.assert_close(table["kl_divergence"].iloc[0], 0.0, rtol=0, atol=1e-6)
    assert table["agreement"].is_monotonic_decreasing and table["agreement"].iloc[-1] < 0.9
    assert table["kl_divergence"].is_monotonic_increasing and table["kl_divergence"].iloc[-1] > 0
    assert isinstance(result["figure"], Figure)


def test_robustness_of_hidden_states_uses_cosine_similarity():
    model, config = build_model("hf_bert")
    table = t2.test_robustness(
        model, config, noise_levels=(0.0, 0.5, 5.0), n_samples=2, seq_len=8, n_trials=1, progress=False
    )["table"]
    assert table["agreement"].isna().all()
    assert table["cosine_similarity"].is_monotonic_decreasing and table["cosine_similarity"].iloc[0] > 0.999


def test_robustness_is_reproducible_and_rejects_bad_levels(tiny_gpt):
    model, config = tiny_gpt
    first = t2.test_robustness(model, config, noise_levels=(0.3,), n_samples=2, seq_len=8, progress=False)["table"]
    second = t2.test_robustness(model, config, noise_levels=(0.3,), n_samples=2, seq_len=8, progress=False)["table"]
    torch.testing.assert_close(first["kl_divergence"].item(), second["kl_divergence"].item(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="noise_levels"):
        t2.test_robustness(model, config, noise_levels=(-1.0,))


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize("check", PUBLIC_CHECKS, ids=lambda f: f.__name__)
def test_bad_models_and_configs_are_rejected(check, tiny_gpt):
    model, config = tiny_gpt
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        check((model, config), config)
    with pytest.raises(ValueError, match="vocab_size"):
        check(model, {"hidden_size": 32})


NAN, INF = float("nan"), float("inf")
LONG_IDS = torch.zeros(1, TINY["max_seq_len"] + 1, dtype=torch.long)


def _bad(check, message: str, **kwargs):
    """One bad-input case: ``check(model, config, **kwargs)`` must raise a ValueError matching ``message``."""
    shown = ",".join(f"{key}={value!r:.20}" for key, value in kwargs.items())
    return pytest.param(check, kwargs, message, id=f"{check.__name__.removeprefix('test_')}-{shown}")


BAD_INPUT_IDS = [
    [[1, 2, 3]],
    torch.rand(1, 4),
    torch.tensor([1, 2, 3]),
    torch.zeros(1, 0, dtype=torch.long),
    torch.tensor([[True, False]]),
    "hello",
]

# Found by calling every check as a new user might. Each must fail before the model runs, naming the argument.
BAD_ARGUMENTS = [
    *(_bad(t2.test_attention_patterns, "batch_size", batch_size=v) for v in (True, "4", 0)),
    *(_bad(t2.test_attention_patterns, "seq_len", seq_len=v) for v in (0, 2.5)),
    *(_bad(t2.test_attention_patterns, "min_visible_keys", min_visible_keys=v) for v in (0, True)),
    _bad(t2.test_attention_patterns, "max_layers_plotted", max_layers_plotted="4"),
    _bad(t2.test_attention_patterns, "max_heads_plotted", max_heads_plotted=-1),
    *(
        _bad(t2.test_attention_patterns, r"collapse_entropy must be a number in \(0.0, 1.0\]", collapse_entropy=v)
        for v in (NAN, INF, True, "0.2", 0, 1.5)
    ),
    *(_bad(t2.test_attention_patterns, "collapse_share", collapse_share=v) for v in (1.5, -0.1, NAN)),
    *(_bad(t2.test_attribution_analysis, "n_samples", n_samples=v) for v in (True, 0)),
    *(_bad(t2.test_attribution_analysis, "n_steps", n_steps=v) for v in ("50", NAN)),
    _bad(t2.test_attribution_analysis, "steps_per_batch", steps_per_batch=2.5),
    _bad(t2.test_attribution_analysis, "seq_len", seq_len=True),
    *(_bad(t2.test_attribution_analysis, "delta_tolerance", delta_tolerance=v) for v in (NAN, INF, "0.05", 0)),
    *(_bad(t2.test_attribution_analysis, "position must be an integer", position=v) for v in (True, "0", 1.5, NAN)),
    *(
        _bad(t2.test_attribution_analysis, "target_token must be a non-negative integer", target_token=v)
        for v in (True, "5", 1.5, NAN, -1)
    ),
    _bad(t2.test_attribution_analysis, "progress", progress="yes"),
    *(
        _bad(t2.test_robustness, "noise_levels", noise_levels=v)
        for v in ("0.1", 0.1, (NAN,), (INF,), (True,), [], ("0.1",), None)
    ),
    *(_bad(t2.test_robustness, "n_samples", n_samples=v) for v in (0, True)),
    *(_bad(t2.test_robustness, "n_trials", n_trials=v) for v in ("3", NAN)),
    _bad(t2.test_robustness, "seq_len", seq_len=0),
    *(
        _bad(t2.test_robustness, r"min_agreement must be a number in \(0.0, 1.0\]", min_agreement=v)
        for v in (NAN, INF, True, "0.9", 0, 1.5)
    ),
    *(_bad(t2.test_robustness, "seed must be an integer", seed=v) for v in (True, "0", 1.5, NAN, None)),
    _bad(t2.test_robustness, "progress", progress=1),
]


@pytest.mark.parametrize(("check", "kwargs", "message"), BAD_ARGUMENTS)
def test_bad_arguments_fail_before_the_model_runs(watched_gpt, check, kwargs, message):
    model, config, calls = watched_gpt
    with pytest.raises(ValueError, match=message):
        check(model, config, **kwargs)
    assert calls == [], "the arguments must be checked before the model is called"


@pytest.mark.parametrize("input_ids", BAD_INPUT_IDS, ids=["list", "float", "1d", "empty", "bool", "text"])
@pytest.mark.parametrize("check", [t2.test_attention_patterns, t2.test_attribution_analysis], ids=lambda f: f.__name__)
def test_bad_input_ids_are_rejected(tiny_gpt, check, input_ids):
    model, config = tiny_gpt
    with pytest.raises(ValueError, match=r"input_ids must be a non-empty torch.long tensor of shape \(batch, seq\)"):
        check(model, config, input_ids=input_ids)


@pytest.mark.parametrize(
    ("input_ids", "message"),
    [
        (torch.tensor([[1, 256]]), r"token ids from 1 to 256, outside the vocabulary \[0, 256\)"),
        (torch.tensor([[-1, 2]]), r"token ids from -1 to 2, outside the vocabulary"),
        (LONG_IDS, "33 tokens per sequence, more than max_seq_len=32"),
    ],
    ids=["above-vocab", "negative", "too-long"],
)
@pytest.mark.parametrize("check", [t2.test_attention_patterns, t2.test_attribution_analysis], ids=lambda f: f.__name__)
def test_input_ids_the_model_cannot_embed_are_rejected(tiny_gpt, check, input_ids, message):
    model, config = tiny_gpt
    with pytest.raises(ValueError, match=message):
        check(model, config, input_ids=input_ids)


def test_target_token_needs_a_model_with_logits():
    model, config = build_model("hf_bert")
    with pytest.raises(ValueError, match="target_token=3 needs a model that returns logits"):
        t2.test_attribution_analysis(model, config, target_token=3, progress=False)


def test_pytest_does_not_collect_library_checks():
    public = [name for name in dir(t2) if name.startswith("test_")]
    assert public and all(getattr(t2, name).__test__ is False for name in public)
