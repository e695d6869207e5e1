"""Tests for utils.training.loop: the engine's settings, its parts, and how it stops on a non-finite loss.

The facade (``test_fine_tuning``) is tested in test_tier3_training_utilities.py;
here the engine is called directly, with the conftest's tiny 2-layer GPT.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
import torch.nn as nn
from tiny_models import per_sequence_loss_sums, token_ids, weights_changed, weights_of

from utils import tier3_training_utilities as tier3
from utils.models import tiny_gpt
from utils.training import checkpoint as ckpt
from utils.training import loop
from utils.training.losses import next_token_loss_sums

SEQ_LEN = 16

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest


# -- the same losses as before the engine moved ---------------------------------------------------

# Produced with test_fine_tuning before the engine moved out of tier3 (commit 858df7c), torch 2.13 CPU,
# one thread: tiny_gpt(vocab 256, seq 32, width 32, 2 layers, 2 heads) seeded 0, 2 epochs capped at
# 14 steps, batch 4, lr 3e-3, 20,000 bytes of the built-in corpus, log_every 4. The tolerance allows
# for other torch builds' float rounding; the engine moving must not change the computation.
GOLDEN = {
    "fp32": (
        dict(precision="fp32"),
        [
            5.504916,
            5.389368,
            5.151613,
            5.214871,
            5.057687,
            4.846273,
            4.839194,
            4.758217,
            4.886624,
            4.710091,
            4.645566,
            4.7325,
            4.669126,
            4.614177,
        ],
        4.508298,
    ),
    "accumulation": (
        dict(precision="fp32", gradient_accumulation_steps=3, grad_clip=None, weight_decay=0.0, warmup_steps=2),
        [
            5.470387,
            5.378194,
            5.238986,
            5.166021,
            5.045884,
            4.938912,
            4.818913,
            4.722836,
            4.650151,
            4.6097,
            4.47913,
            4.575288,
            4.505515,
            4.423154,
        ],
        4.402628,
    ),
}


@pytest.mark.parametrize("case", list(GOLDEN))
def test_same_losses_as_before_the_engine_moved(case):
    options, losses, val_loss = GOLDEN[case]
    torch.manual_seed(0)
    model, config = tiny_gpt(vocab_size=256, max_seq_len=32, d_model=32, n_layers=2, n_heads=2)
    results = tier3.test_fine_tuning(
        model,
        config,
        n_epochs=2,
        max_steps=14,
        batch_size=4,
        learning_rate=3e-3,
        max_corpus_bytes=20000,
        log_every=4,
        progress=False,
        **options,
    )
    torch.testing.assert_close(results["loss_history"], losses, rtol=1e-4, atol=1e-5)
    assert results["val_loss"] == pytest.approx(val_loss, rel=1e-4)


# -- the engine's pieces --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, size, expected",
    [(5, 2, [[0, 1], [2, 3], [4]]), (4, 2, [[0, 1], [2, 3]]), (3, 1, [[0], [1], [2]]), (2, 5, [[0, 1]]), (0, 3, [])],
)
def test_accumulation_groups(n, size, expected):
    assert list(loop.accumulation_groups(range(n), size)) == expected


def _settings(**overrides):
    values = dict(
        n_epochs=1,
        learning_rate=1e-3,
        batch_size=2,
        log_every=1,
        seq_len=SEQ_LEN,
        max_val_batches=2,
        max_corpus_bytes=20_000,
        progress=False,
        precision="fp32",
        device="cpu",
    )
    return loop.TrainingSettings(**{**values, **overrides})


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("n_epochs", True, "n_epochs must be a positive integer, got True"),
        ("batch_size", 2.0, "batch_size must be a positive integer, got 2.0"),
        ("seq_len", 0, "seq_len must be a positive integer or None, got 0"),
        ("max_val_batches", -1, "max_val_batches must be a positive integer or None"),
        ("max_corpus_bytes", None, "max_corpus_bytes must be a positive integer, got None"),
        ("warmup_steps", 1.5, "warmup_steps must be a non-negative integer or None"),
        ("learning_rate", math.inf, "learning_rate must be a positive finite number, got inf"),
        ("learning_rate", math.nan, "learning_rate must be a positive finite number"),
        ("init_loss_scale", -1.0, "init_loss_scale must be a positive finite number"),
        ("grad_clip", -1.0, r"grad_clip must be a positive finite number or None, got -1.0"),
        ("grad_clip", "1.0", r"grad_clip must be a positive finite number or None, got the string '1.0'"),
        ("weight_decay", math.inf, "weight_decay must be a non-negative finite number, got inf"),
        ("learning_rate", True, r"learning_rate must be a positive finite number, got True \(a bool is not"),
    ],
)
def test_validate_settings_messages(name, value, message):
    with pytest.raises(ValueError, match=message):
        _settings(**{name: value})


def test_validate_settings_accepts_optional_nones():
    settings = _settings(max_steps=None, seq_len=None, max_val_batches=None, warmup_steps=0, grad_clip=None)
    assert isinstance(settings, loop.TrainingSettings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.n_epochs = 2  # validated once, then fixed
    with pytest.raises(ValueError, match="n_epochs must be a positive integer"):
        settings.replace(n_epochs=0)  # a changed copy is validated again


def _parts(model, config, train, val, **overrides):
    return loop.build_parts(model, config, train, val, _settings(**overrides))


def test_validation_epoch_is_token_weighted_and_respects_max_val_batches(tiny_gpt):
    model, config = tiny_gpt
    val = [token_ids(n, seed=20 + n) for n in (5, 16, 9, 3, 12)]
    parts = _parts(model, config, token_ids(4, SEQ_LEN), val, batch_size=2, max_val_batches=2)
    metrics = loop.run_validation_epoch(parts)
    assert model.training
    sums = per_sequence_loss_sums(model, val[:4])  # 2 batches of 2; the fifth row is left out
    expected = sum(s for s, _ in sums) / sum(n for _, n in sums)
    assert metrics["val/loss"] == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= metrics["val/accuracy"] <= 1.0


def test_training_step_accumulates_then_updates(tiny_gpt):
    model, config = tiny_gpt
    parts = _parts(model, config, token_ids(4, SEQ_LEN), token_ids(2, SEQ_LEN, seed=1), batch_size=2)
    batch = next(iter(parts.train_loader))
    before = weights_of(model)
    loss, n_correct, grad_norm = loop.training_step(parts, batch, group_targets=2 * batch["n_targets"], update=False)
    assert grad_norm is None and not weights_changed(before, model)
    assert all(p.grad is not None for p in model.parameters())
    expected, _ = next_token_loss_sums(model(batch["input_ids"]), batch["labels"])
    # Divided by the whole group's targets (twice this batch's), so it is half the batch mean.
    assert loss.item() == pytest.approx(expected.item() / (2 * batch["n_targets"]), rel=1e-5)
    assert not loss.requires_grad and n_correct.dtype == torch.int64

    loss, _, grad_norm = loop.training_step(parts, batch, group_targets=2 * batch["n_targets"], update=True)
    assert grad_norm is not None and grad_norm.item() > 0
    assert parts.amp_step.stepped
    assert weights_changed(before, model)
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True)


# -- non-finite losses ------------------------------------------------------------------------------


class TurnsNaN(nn.Module):
    """The tiny GPT, whose training forwards return NaN logits after the first ``after`` of them."""

    def __init__(self, inner: nn.Module, after: int) -> None:
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, input_ids, attention_mask=None):
        logits = self.inner(input_ids, attention_mask)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return logits * float("nan")
        return logits


NAN_RUN = dict(
    n_epochs=2,
    learning_rate=1e-3,
    batch_size=2,
    seq_len=SEQ_LEN,
    max_val_batches=1,
    log_every=2,
    progress=False,
    device="cpu",
)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_nan_loss_stops_at_the_next_read_naming_the_step_and_keeps_the_last_checkpoint(
    tiny_gpt, cpu_bf16, tmp_path, precision
):
    cpu_bf16(True)
    inner, config = tiny_gpt
    model = TurnsNaN(inner, after=4)  # 8 rows, batch 2: epoch 0 is steps 1-4 (clean), step 5 is NaN
    train, val = token_ids(8, SEQ_LEN), token_ids(2, SEQ_LEN, seed=1)
    with pytest.raises(loop.NonFiniteLossError) as caught:
        tier3.test_fine_tuning(model, config, train, val, precision=precision, checkpoint_dir=tmp_path, **NAN_RUN)
    message = str(caught.value)
    assert "became nan at optimizer step 5 (epoch 1)" in message and precision in message
    assert f"the last good checkpoint, {tmp_path / 'last.pt'}, was kept" in message
    saved = ckpt.load_checkpoint(tmp_path)
    assert saved["epoch"] == 0 and saved["optimizer_step"] == 4  # epoch 0's checkpoint, not overwritten
    assert all(torch.isfinite(t).all() for t in saved["model"].values())
    assert model.calls == 6  # stopped at the read after step 6, not at the end of the run


def test_a_nan_loss_between_reads_is_caught_at_the_epoch_end_before_the_checkpoint(tiny_gpt, tmp_path):
    inner, config = tiny_gpt
    model = TurnsNaN(inner, after=2)  # step 3 is NaN; the reads are at steps 4 (log_every) ...
    train, val = token_ids(6, SEQ_LEN), token_ids(2, SEQ_LEN, seed=1)  # ... but epoch 0 ends at step 3
    with pytest.raises(loop.NonFiniteLossError, match=r"optimizer step 3 \(epoch 0\).*no checkpoint was written"):
        tier3.test_fine_tuning(
            model, config, train, val, precision="fp32", checkpoint_dir=tmp_path, **{**NAN_RUN, "log_every": 4}
        )
    assert not (tmp_path / "last.pt").exists()


def test_fp16_stops_only_when_a_whole_window_is_skipped_and_the_scale_is_below_one(tiny_gpt):
    inner, config = tiny_gpt
    model = TurnsNaN(inner, after=0)  # every step's gradients are NaN: the scaler skips them all
    with pytest.raises(loop.NonFiniteLossError) as caught:
        tier3.test_fine_tuning(
            model,
            config,
            token_ids(64, SEQ_LEN),
            token_ids(2, SEQ_LEN),
            precision="fp16",
            **{**NAN_RUN, "log_every": 4},
        )
    # The scale halves on each skip: 2**16 reaches 1 at step 16 (not below), and 2**-4 at the read after step 20.
    assert "every one of the last 4 fp16 optimizer steps (up to step 20" in str(caught.value)
    assert "loss scale has fallen to 0.0625" in str(caught.value)


def test_a_model_with_nan_logits_is_not_called_non_causal(tiny_gpt):
    inner, config = tiny_gpt

    class AlwaysNaN(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids, attention_mask) * float("nan")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(loop.NonFiniteLossError):
            tier3.test_fine_tuning(AlwaysNaN(), config, token_ids(8, SEQ_LEN), token_ids(2, SEQ_LEN), **NAN_RUN)
    messages = [str(w.message) for w in caught]
    assert any("NaN or Inf logits" in m for m in messages)
    assert not any("not causal" in m for m in messages)
