"""Tests for utils.training.settings (the step count) and the names the engine's modules share with loop.

``TrainingSettings``' validation is tested in test_loop.py, with the engine it configures.
"""

from __future__ import annotations

import pytest

from utils.training import loop, parts, results, settings


@pytest.mark.parametrize(
    "n_batches, accumulation, n_epochs, max_steps, expected",
    [
        (10, 1, 2, None, 20),
        (10, 3, 2, None, 8),  # a short last group is still an optimizer step: ceil(10 / 3) = 4 per epoch
        (10, 3, 2, 5, 5),  # max_steps caps the total
        (10, 1, 1, 50, 10),  # a cap above the total changes nothing
    ],
)
def test_total_steps_counts_optimizer_steps_over_every_epoch(n_batches, accumulation, n_epochs, max_steps, expected):
    s = settings.TrainingSettings(
        n_epochs=n_epochs, gradient_accumulation_steps=accumulation, max_steps=max_steps, device="cpu"
    )
    assert settings.total_steps(n_batches, s) == expected


def test_loop_still_offers_the_names_that_moved_out_of_it():
    for module, name in [
        (settings, "TrainingSettings"),
        (settings, "EPOCH_ROW_KEYS"),
        (settings, "total_steps"),
        (parts, "TrainingParts"),
        (parts, "TrainingState"),
        (parts, "StepRecords"),
        (parts, "TrainingOutputs"),
        (parts, "build_parts"),
        (parts, "read_model_sizes"),
        (parts, "seed_everything"),
        (results, "collect_results"),
        (results, "THROUGHPUT_WARMUP_STEPS"),
    ]:
        assert getattr(loop, name) is getattr(module, name), name
        assert name in loop.__all__, name
