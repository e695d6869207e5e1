"""Integrated gradients on an RMSNorm model (a Llama from a config): the steps come from the measured gap."""

from __future__ import annotations

import pytest
import torch

from utils.diagnostics import attribution


@pytest.fixture
def tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(config), config


def test_fixed_steps_that_leave_a_gap_say_that_more_steps_close_it(tiny_llama):
    model, config = tiny_llama
    result = attribution.test_attribution_analysis(model, config, n_steps=50, progress=False)
    assert result["status"] == "warn" and result["n_steps"] == 50  # measured: a 5.1% gap at 50 points
    assert "more steps close the gap: pass n_steps above 50" in result["summary"]


def test_by_default_the_steps_are_raised_until_the_gap_closes(tiny_llama):
    model, config = tiny_llama
    result = attribution.test_attribution_analysis(model, config, progress=False)
    assert result["status"] == "pass"
    assert attribution.AUTO_START_STEPS < result["n_steps"] <= attribution.MAX_AUTO_STEPS
    assert result["completeness"]["relative_delta"].max() <= 0.05
    assert f"{result['n_steps']} steps" in result["summary"]


def test_a_model_that_passes_at_the_first_steps_keeps_them(tiny_gpt):
    model, config = tiny_gpt
    result = attribution.test_attribution_analysis(model, config, progress=False)
    assert result["status"] == "pass" and result["n_steps"] == attribution.AUTO_START_STEPS
