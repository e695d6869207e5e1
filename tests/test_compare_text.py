"""The comparison across tokenizers: each side reads the same text its own way, and bits per byte decide."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY

from utils import models
from utils import tier3_benchmark_comparison as bc
from utils.compare import text
from utils.training.settings import TrainingSettings

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest
pytest.importorskip("tokenizers")

RUN = dict(train_steps=4, n_samples=4, batch_size=4, max_corpus_bytes=20_000, device="cpu", progress=False)


def _gpt(vocab_size):
    torch.manual_seed(0)
    return models.tiny_gpt(**{**TINY, "vocab_size": vocab_size})


def test_one_vocabulary_means_one_tokenizer_and_one_loss():
    model, config = _gpt(512)
    report = bc.test_benchmark_comparison(model, config, tokenizer="bpe", **RUN)
    assert report["status"] == "ok" and report["loss_comparable"] is True
    assert report["yours"]["tokenizer"].to_json() == report["baseline"]["tokenizer"].to_json()
    assert report["verdict"].startswith("your model reaches val loss ")


def test_different_tokenizers_are_compared_on_bits_per_byte_instead_of_refused():
    model, config = _gpt(512)
    report = bc.test_benchmark_comparison(model, config, baseline=_gpt(1024), tokenizer="auto", **RUN)
    yours, theirs = report["yours"]["tokenizer"], report["baseline"]["tokenizer"]
    assert (yours.name, theirs.name) == ("bpe-512", "bpe-1024")  # 'auto' resolved per side
    assert report["status"] == "ok" and report["loss_comparable"] is False
    assert report["verdict"].startswith("your model reaches val bits per byte ")
    assert any("each scored the same held-out text through its own tokenizer" in note for note in report["notes"])
    row = report["summary"].set_index("metric")
    assert row.at["val bits per byte", "yours"] == report["yours"]["val_bits_per_byte"]
    assert report["yours"]["optimizer_steps"] == report["baseline"]["optimizer_steps"] == 4


def test_the_baseline_scores_as_many_bytes_of_the_same_held_out_text():
    settings = TrainingSettings(seq_len=32, max_corpus_bytes=40_000)
    yours = text.with_resolved_tokenizer(settings.replace(tokenizer="bpe"), 512)
    reference, _ = bc.evaluation_data(None, 6, 512, yours)
    theirs = text.with_resolved_tokenizer(settings.replace(tokenizer="bpe"), 1024)
    matched, n_train = text.matching_evaluation_data(reference, None, 1024, theirs)
    mine, other = text.covered_bytes(reference), text.covered_bytes(matched)
    assert mine > 0 and 0 <= other - mine < 32 * 8  # at most one more sequence than needed
    assert n_train > 0


def test_bytes_keep_the_comparison_exactly_as_it_was(monkeypatch):
    settings = TrainingSettings(seq_len=32)
    assert text.with_resolved_tokenizer(settings, 256) is settings
    assert text.with_resolved_tokenizer(settings.replace(tokenizer="auto"), 300).tokenizer == "auto"
    assert text.covered_bytes(torch.utils.data.TensorDataset(torch.zeros(2, 4))) is None
