"""Tests for utils.training.generation: utils.generate for any model, seeded, greedy at 0, within max_seq_len."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY, TorchEncoderLM

import utils
from utils import models
from utils.training import generation
from utils.training.generation import generate, pick_next_token

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest


def test_generate_is_the_top_level_utils_generate():
    assert utils.generate is generate


def test_seeded_sampling_repeats_exactly_and_leaves_the_global_random_state(tiny_gpt):
    model, _ = tiny_gpt
    state = torch.random.get_rng_state()
    first = generate(model, "def ", max_new_tokens=20, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = generate(model, "def ", max_new_tokens=20, seed=3)
    other = generate(model, "def ", max_new_tokens=20, seed=4)
    assert first == again and first.new_ids != other.new_ids
    assert first.text.startswith("def ") and first.ids[:4] == list(b"def ") and len(first.new_ids) == 20
    assert str(first) == first.text


def test_temperature_zero_is_greedy_and_top_k_one_agrees(tiny_gpt):
    model, _ = tiny_gpt
    greedy = generate(model, "x = ", max_new_tokens=12, temperature=0)
    assert generate(model, "x = ", max_new_tokens=12, temperature=0, seed=99) == greedy
    assert generate(model, "x = ", max_new_tokens=12, top_k=1, seed=5).new_ids == greedy.new_ids
    assert generate(model, "x = ", max_new_tokens=12, top_p=1e-6, seed=5).new_ids == greedy.new_ids
    with torch.no_grad():  # the first greedy token is the argmax of the model's own next-token logits
        logits = model.eval()(torch.tensor([list(b"x = ")]))
    assert greedy.new_ids[0] == int(logits[0, -1].argmax())


def test_top_k_and_top_p_keep_only_the_likeliest_tokens():
    logits = torch.tensor([4.0, 3.0, 2.0, -10.0])
    draws = {
        pick_next_token(logits, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(s)) for s in range(50)
    }
    assert draws == {0, 1}
    # p = [0.71, 0.26, 0.04, 0]: top_p 0.8 keeps the first two, the ones before the mass reaches 0.8.
    draws = {
        pick_next_token(logits, temperature=1.0, top_p=0.8, generator=torch.Generator().manual_seed(s))
        for s in range(50)
    }
    assert draws == {0, 1}


def test_the_context_slides_past_the_models_max_seq_len(tiny_gpt):
    model, config = tiny_gpt
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    out = generate(model, "a" * 30, max_new_tokens=10, temperature=0)
    assert len(out.ids) == 40 and max(seen) == config.max_seq_len == 32


def test_any_model_the_library_trains_speaks_through_the_forward_adapter():
    torch.manual_seed(0)
    model = TorchEncoderLM(vocab_size=256)  # forward(input_ids) -> logits, no config attribute
    out = generate(model, "hi", max_new_tokens=5, config={"vocab_size": 256, "max_seq_len": 32})
    assert len(out.new_ids) == 5 and not out.used_cache


def test_a_model_with_a_kv_cache_uses_it_and_gives_the_greedy_text_of_a_full_recompute(monkeypatch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config)
    cached = generate(model, "def ", max_new_tokens=12, temperature=0)
    assert cached.used_cache
    monkeypatch.setattr(generation, "cache_keyword", lambda model: None)  # no cache: recompute each step
    full = generate(model, "def ", max_new_tokens=12, temperature=0)
    assert not full.used_cache and full.new_ids == cached.new_ids


def test_a_cached_model_past_its_max_length_slides_without_the_cache():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=256, n_positions=8, bos_token_id=0, eos_token_id=0
    )
    out = generate(transformers.GPT2LMHeadModel(config), "abcdef", max_new_tokens=6, temperature=0)
    assert len(out.ids) == 12


def test_a_device_moves_the_model_and_auto_leaves_it(tiny_gpt):
    model, _ = tiny_gpt
    assert generate(model, "a", max_new_tokens=1, device="cpu").new_ids
    assert next(model.parameters()).device.type == "cpu" and model.training  # its mode is restored


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompt": ""}, "prompt holds no token"),
        ({"prompt": [300]}, r"token ids \[300\] outside the model's vocabulary \[0, 255\]"),
        ({"prompt": 3}, "prompt must be a string or a list of token ids"),
        ({"temperature": -1}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"tokenizer": "bpe"}, "trains a BPE on the training text"),
    ],
)
def test_bad_arguments_are_named(tiny_gpt, kwargs, match):
    model, _ = tiny_gpt
    kwargs = {"prompt": "a", **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        generate(model, kwargs.pop("prompt"), **kwargs)


def test_a_model_with_a_larger_vocabulary_decodes_only_its_byte_ids():
    torch.manual_seed(0)
    model, _ = models.tiny_gpt(**{**TINY, "vocab_size": 300})
    out = generate(model, "ab", max_new_tokens=30, seed=1)
    assert out.text.startswith("ab") and len(out.new_ids) == 30
