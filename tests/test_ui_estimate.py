"""The measurements (utils/ui/estimate.py): the engine's own training step, timed on a copy, and the duration text."""

from __future__ import annotations

import pytest
import torch

from utils.training import loop
from utils.training.precision import resolve_precision
from utils.ui import estimate

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_the_timed_steps_are_the_engines_training_step_on_a_copy(tiny_gpt, monkeypatch):
    model, _ = tiny_gpt
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    calls = []
    engine_step = loop.training_step

    def counting_step(parts, batch, group_targets, update):
        calls.append((parts.model is not model, tuple(batch["input_ids"].shape), group_targets, update))
        return engine_step(parts, batch, group_targets, update)

    monkeypatch.setattr(loop, "training_step", counting_step)
    plan = resolve_precision("fp32", False, torch.device("cpu"))
    torch.manual_seed(123)
    expected_next = torch.rand(())
    torch.manual_seed(123)
    seconds = estimate.time_training_steps(model, 256, 16, 2, plan, torch.device("cpu"), timed_steps=3)
    assert seconds > 0
    assert calls == [(True, (2, 16), 32, True)] * 4  # one warm-up, three timed: each an update, on the copy
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # the user's weights stay
    assert torch.equal(torch.rand(()), expected_next)  # and so does the caller's random stream


def test_timed_steps_must_be_a_positive_int(tiny_gpt):
    model, _ = tiny_gpt
    plan = resolve_precision("fp32", False, torch.device("cpu"))
    with pytest.raises(ValueError, match="timed_steps"):
        estimate.time_training_steps(model, 256, 16, 2, plan, torch.device("cpu"), timed_steps=0)


def test_the_memory_estimate_scales_activations_with_the_batch(tiny_gpt):
    model, config = tiny_gpt
    one = estimate.estimate_training_memory(model, config, seq_len=16, batch_size=1)
    four = estimate.estimate_training_memory(model, config, seq_len=16, batch_size=4)
    assert one["static_mb"] == four["static_mb"] > 0
    assert four["estimate_mb"] - four["static_mb"] == pytest.approx(4 * four["activation_mb_per_sequence"])
    assert four["method"].startswith("estimate: Tier 1 memory check at batch 1 x 16 tokens")


def test_available_memory_on_cpu_is_a_number_and_says_what_it_is():
    free_mb, what = estimate.available_memory_mb(torch.device("cpu"))
    assert free_mb is None or free_mb > 0
    assert "RAM" in what or "unknown" in what


@pytest.mark.parametrize(
    "seconds, text",
    [(0.36, "0.36 s"), (9.99, "10 s"), (42.4, "42 s"), (89.0, "89 s"), (450.0, "7.5 min"), (5400.0, "1.5 h")],
)
def test_format_duration(seconds, text):
    assert estimate.format_duration(seconds) == text
