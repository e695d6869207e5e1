"""A run stopped by ``max_steps`` inside an epoch resumes inside that epoch, at the very next batch.

Before, ``resume_training(run, ..., max_steps=30)`` after a run capped at 20 steps in its first epoch was
refused as "finished epoch 1", and the engine would have started the next epoch, skipping the rest of
the first. The tests record every training batch the model sees (a forward pre-hook in train mode).
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY, cpu_coordinator

from utils import models

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest

# Built-in corpus, 16-token rows: about 28 steps per epoch, so 6 and 10 steps both stop inside epoch 0.
RUN = dict(
    learning_rate=3e-3,
    batch_size=4,
    seq_len=16,
    max_corpus_bytes=2000,
    max_val_batches=1,
    log_every=2,
    precision="fp32",
    n_epochs=1,
)


def _watched_model():
    torch.manual_seed(0)
    model, config = models.tiny_gpt(**{**TINY, "max_seq_len": 16})
    seen: list[torch.Tensor] = []

    def record(module, args, kwargs):
        if module.training:
            ids = args[0] if args else kwargs["input_ids"]
            seen.append(ids.detach().clone())

    model.register_forward_pre_hook(record, with_kwargs=True)
    return model, config, seen


_coordinator = cpu_coordinator


def test_a_step_capped_run_continues_its_epoch_from_the_next_batch(tmp_path):
    whole_model, config, whole = _watched_model()
    _coordinator(tmp_path / "whole").train(whole_model, config, run_name="r", max_steps=10, **RUN)
    first_model, _, first = _watched_model()
    _coordinator(tmp_path / "cut").train(first_model, config, run_name="r", max_steps=6, **RUN)
    resumed_model, _, rest = _watched_model()
    results = _coordinator(tmp_path / "cut").resume_training(
        tmp_path / "cut" / "r", resumed_model, config, max_steps=10
    )
    assert len(whole) == 10 and len(first) == 6 and len(rest) == 4
    for step, (expected, got) in enumerate(zip(whole, first + rest), start=1):
        assert torch.equal(expected, got), f"step {step} trained on other rows"
    assert results["optimizer_steps"] == 10
    assert results["metrics_summary"]["epoch"].tolist() == [0]  # epoch 0 went on; no epoch was skipped


def test_the_same_cap_on_resume_says_to_raise_it(tmp_path):
    model, config, _ = _watched_model()
    _coordinator(tmp_path).train(model, config, run_name="r", max_steps=6, **RUN)
    again, _, _ = _watched_model()
    with pytest.raises(ValueError, match="raise them to train on"):
        _coordinator(tmp_path).resume_training(tmp_path / "r", again, config, max_steps=6)


def test_a_run_that_finished_its_epochs_is_still_refused(tmp_path):
    model, config, _ = _watched_model()
    _coordinator(tmp_path).train(model, config, run_name="r", **{**RUN, "max_corpus_bytes": 400})
    again, _, _ = _watched_model()
    with pytest.raises(ValueError, match="finished epoch 1 of its run"):
        _coordinator(tmp_path).resume_training(tmp_path / "r", again, config, max_steps=500)
