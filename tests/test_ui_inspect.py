"""The wizard's checks (utils/ui/inspect.py): the engine's step count, the preset table read directly, AMP's default."""

from __future__ import annotations

import pytest

from utils.training import loop
from utils.ui import inspect as ui_inspect
from utils.ui.config import WizardConfig
from utils.ui.inspect import effective_use_amp, inspect_config

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

# 6,000 bytes in blocks of 32 -> 168 train / 18 validation sequences (see tests/test_setup_wizard.py).
SMALL_RUN = dict(max_corpus_bytes=6_000, seq_len=32)


@pytest.mark.parametrize(
    "shape",
    [
        dict(n_epochs=1, batch_size=8, gradient_accumulation_steps=1),  # 21 batches: 21 steps
        dict(n_epochs=2, batch_size=8, gradient_accumulation_steps=4),  # a short last group: 6 per epoch
        dict(n_epochs=3, batch_size=5, gradient_accumulation_steps=2, max_steps=40),  # max_steps cuts it
    ],
)
def test_the_step_count_is_the_engines(tiny_gpt, shape):
    """The wizard's count against the engine's own setup (its loaders and its schedule length)."""
    model, config = tiny_gpt
    found = inspect_config(WizardConfig(**shape, **SMALL_RUN), model, config, memory=False)
    settings = loop.TrainingSettings(**shape, **SMALL_RUN, device="cpu", progress=False)
    parts = loop.build_parts(model, config, None, None, settings)
    assert found.optimizer_steps == parts.total_steps


def test_the_step_count_calls_the_engines_function(monkeypatch):
    calls = []

    def engine_count(n_batches, settings):
        calls.append((n_batches, settings.gradient_accumulation_steps, settings.n_epochs, settings.max_steps))
        return 7

    monkeypatch.setattr(ui_inspect, "total_steps", engine_count)
    found = inspect_config(WizardConfig(n_epochs=2, batch_size=8, gradient_accumulation_steps=3, **SMALL_RUN))
    assert found.optimizer_steps == 7 and calls == [(21, 3, 2, None)]


def test_the_missing_path_message_reads_the_preset_table_and_survives_any_preset_value():
    chat = WizardConfig(preset="chat", data_source="file").validate()
    assert any("the 'chat' preset trains on your own text" in message for message in chat)
    for preset in ("no_such_preset", ["not", "hashable"]):
        errors = WizardConfig(preset=preset, data_source="file").validate()
        assert any(message.startswith("dataset_path: data_source='file' needs the path") for message in errors)
        assert not any("preset trains on your own text" in message for message in errors)


@pytest.mark.parametrize(
    "precision, use_mixed_precision, expected",
    [("auto", None, True), ("fp32", None, False), ("bf16", None, False), ("auto", False, False), ("fp16", True, True)],
)
def test_precision_auto_means_mixed_precision_unless_told(precision, use_mixed_precision, expected):
    cfg = WizardConfig(precision=precision, use_mixed_precision=use_mixed_precision)
    assert effective_use_amp(cfg) is expected
