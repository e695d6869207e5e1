"""Tests for utils.tier3_training_utilities: test_fine_tuning and its helpers.

Every run is tiny: the conftest 2-layer, 32-wide GPT, 16-token sequences, a few
optimizer steps and at most 2 validation batches. The library's own test_*
functions are reached through the module (``tier3.test_fine_tuning``) so that
pytest never collects them.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn
from matplotlib.figure import Figure
from tiny_models import per_sequence_loss_sums, token_ids, weights_changed, weights_of

from utils import tier3_training_utilities as tier3
from utils.training import flops, loop, parts
from utils.training import results as training_results
from utils.training.callbacks import AmpWandbCallback
from utils.training.optim import build_lr_scheduler

SEQ_LEN = 16
FAST = dict(
    n_epochs=1,
    learning_rate=3e-3,
    batch_size=4,
    max_steps=4,
    seq_len=SEQ_LEN,
    max_corpus_bytes=20_000,
    max_val_batches=2,
    progress=False,
    log_every=2,
)


def _train(model, config, **overrides):
    return tier3.test_fine_tuning(model, config, **{**FAST, **overrides})


pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest


# -- signature and results ---------------------------------------------------------------------


def test_signature_keeps_documented_positional_order_and_keyword_options():
    params = inspect.signature(tier3.test_fine_tuning).parameters
    positional = [
        ("model", inspect.Parameter.empty),
        ("config", inspect.Parameter.empty),
        ("train_data", None),
        ("val_data", None),
        ("n_epochs", 3),
        ("learning_rate", 5e-5),
        ("batch_size", 4),
        ("use_wandb", False),
        ("use_amp", False),
        ("gradient_accumulation_steps", 1),
    ]
    assert [(n, p.default) for n, p in list(params.items())[:10]] == positional
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in list(params.values())[:10])
    for name in ("precision", "device", "max_steps", "seed", "grad_clip", "warmup_steps", "log_every", "callbacks"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert params["precision"].default == "auto" and params["seed"].default == 0


def test_positional_call_in_documented_order(tiny_gpt, cpu_bf16, monkeypatch):
    cpu_bf16(True)
    batch_sizes = []
    real_make_loader = parts.make_loader

    def make_loader(dataset, batch_size, **kwargs):
        batch_sizes.append(batch_size)
        return real_make_loader(dataset, batch_size, **kwargs)

    monkeypatch.setattr(parts, "make_loader", make_loader)  # build_parts calls it
    model, config = tiny_gpt
    # model, config, train_data, val_data, n_epochs, learning_rate, batch_size, use_wandb, use_amp, accumulation
    results = tier3.test_fine_tuning(
        model,
        config,
        token_ids(8, SEQ_LEN),
        token_ids(2, SEQ_LEN, seed=1),
        2,
        1e-3,
        2,
        False,
        True,
        4,
        progress=False,
        warmup_steps=0,
    )
    assert batch_sizes == [2, 2]  # train and val loaders
    assert results["optimizer_steps"] == 2  # 4 micro-batches of 2, 4 per step, 2 epochs
    assert len(results["metrics_summary"]) == 2
    assert results["lr_history"][0] == pytest.approx(1e-3)
    assert results["precision"] == "bf16"


def test_results_have_documented_keys_and_types(tiny_gpt):
    model, config = tiny_gpt
    results = _train(model, config, max_steps=5)
    documented = {
        "loss_history",
        "grad_norm_history",
        "final_loss",
        "initial_loss",
        "training_time_seconds",
        "samples_per_second",
        "metrics_summary",
        "best_epoch",
        "amp_enabled",
        "final_loss_scale",
        "tokens_per_second",
        "precision",
        "skipped_steps",
        "loss_scale_history",
        "val_loss",
        "val_accuracy",
        "figure",
        "lr_history",
        "step_history",
        "step_times_s",
        "optimizer_steps",
        "device",
        "world_size",
        "compiled",
        "mfu",
        "throughput",
    }
    assert documented <= set(results)
    assert results["optimizer_steps"] == 5
    for key in ("loss_history", "grad_norm_history", "lr_history", "step_times_s"):
        assert len(results[key]) == results["optimizer_steps"], key
    assert all(math.isfinite(x) for x in results["loss_history"])
    assert isinstance(results["metrics_summary"], pd.DataFrame) and len(results["metrics_summary"]) == 1
    assert {"epoch", "train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr"} <= set(
        results["metrics_summary"].columns
    )
    assert isinstance(results["step_history"], pd.DataFrame)
    assert results["step_history"]["train/step"].tolist() == [2, 4, 5]  # every log_every=2, and the last
    assert isinstance(results["figure"], Figure)
    assert results["best_epoch"] == 0
    assert results["amp_enabled"] is False and results["precision"] == "fp32"
    assert results["skipped_steps"] == 0 and results["device"] == "cpu"
    assert 0.0 <= results["val_accuracy"] <= 1.0 and math.isfinite(results["val_loss"])
    assert results["val_loss"] == results["metrics_summary"]["val/loss"].iloc[-1]
    # initial/final_loss: means of the first and last log_every-step windows.
    assert results["initial_loss"] == pytest.approx(sum(results["loss_history"][:2]) / 2)
    assert results["final_loss"] == pytest.approx(sum(results["loss_history"][-2:]) / 2)
    assert results["training_time_seconds"] == pytest.approx(sum(results["step_times_s"]))
    assert results["training_time_seconds"] > 0 and results["samples_per_second"] > 0
    # Built-in corpus blocks have no padding: every sample is seq_len tokens.
    assert results["tokens_per_second"] / results["samples_per_second"] == pytest.approx(SEQ_LEN)
    assert (results["world_size"], results["compiled"]) == (1, False)


def test_throughput_leaves_out_warm_up_steps_and_cpu_has_no_mfu(tiny_gpt):
    model, config = tiny_gpt
    results = _train(model, config, max_steps=6, batch_size=2)
    t = results["throughput"]
    skip = tier3.THROUGHPUT_WARMUP_STEPS
    assert (t["warmup_steps_excluded"], t["timed_steps"]) == (skip, 6 - skip)
    timed_tokens = (6 - skip) * 2 * SEQ_LEN  # full blocks: batch x seq_len tokens per step
    assert t["tokens_per_second"] == pytest.approx(timed_tokens / sum(results["step_times_s"][skip:]))
    assert t["flops_per_token"] == flops.model_flops_per_token(model, config, SEQ_LEN).flops
    assert t["achieved_tflops_per_device"] == pytest.approx(t["tokens_per_second"] * t["flops_per_token"] / 1e12)
    # No datasheet peak for a CPU: tokens/s are reported, MFU is left empty, and the note says why.
    assert results["mfu"] is None and t["mfu"] is None and t["peak_tflops_per_device"] is None
    assert "no datasheet peak for cpu" in t["peak_note"]


def test_mfu_uses_the_detected_gpus_peak(tiny_gpt, monkeypatch):
    """The arithmetic, with the peak lookup patched to an H100's bf16 figure (no GPU here)."""
    monkeypatch.setattr(
        training_results,
        "peak_tflops",
        lambda device, precision, tf32: flops.PeakFlops(989.5, "H100 SXM", "bf16", "patched"),
    )
    model, config = tiny_gpt
    t = _train(model, config, max_steps=5)["throughput"]
    assert t["mfu"] == pytest.approx(t["tokens_per_second"] * t["flops_per_token"] / 989.5e12)


def test_compile_trains_through_torch_compile_with_the_same_losses(tiny_gpt):
    """The 'eager' backend runs dynamo's real capture and guards without code generation, so it is quick."""
    model, config = tiny_gpt
    initial = copy.deepcopy(model.state_dict())
    eager = _train(model, config, max_steps=4)
    model.load_state_dict(initial)
    torch._dynamo.reset()
    compiled = _train(model, config, max_steps=4, compile={"backend": "eager"})
    assert compiled["compiled"] is True and eager["compiled"] is False
    torch.testing.assert_close(compiled["loss_history"], eager["loss_history"], rtol=1e-5, atol=1e-6)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-5)
    assert list(model.state_dict()) == list(initial)  # the user's model is not replaced by the wrapper


@pytest.mark.slow
def test_compile_true_uses_inductor_and_learns(tiny_gpt):
    """compile=True: the default inductor backend generates C++ here (about half a minute on 2 cores)."""
    model, config = tiny_gpt
    torch._dynamo.reset()
    results = _train(model, config, max_steps=8, compile=True, learning_rate=1e-2)
    assert results["compiled"] is True
    assert results["final_loss"] < results["initial_loss"]
    # Compilation happens in the first step, which the throughput figures leave out.
    assert results["step_times_s"][0] > 5 * max(results["step_times_s"][tier3.THROUGHPUT_WARMUP_STEPS :])


def test_it_learns_on_the_default_corpus(tiny_gpt):
    model, config = tiny_gpt
    results = tier3.test_fine_tuning(
        model,
        config,
        n_epochs=1,
        learning_rate=3e-3,
        batch_size=4,
        max_steps=30,
        seq_len=32,
        max_corpus_bytes=50_000,
        max_val_batches=2,
        progress=False,
        log_every=10,
    )
    assert results["data_source"] == "python-stdlib"
    # Measured on CPU: about 5.0 -> 3.7, val 3.9 (uniform over 256 bytes would be ln 256 = 5.55).
    assert results["final_loss"] < results["initial_loss"] - 0.7
    assert results["val_loss"] < math.log(256) - 0.7


def test_same_seed_same_losses_different_seed_different_losses(tiny_gpt):
    model, config = tiny_gpt
    twin, other = copy.deepcopy(model), copy.deepcopy(model)
    first = _train(model, config, max_steps=6, seed=3)
    second = _train(twin, config, max_steps=6, seed=3)
    third = _train(other, config, max_steps=6, seed=4)
    assert first["loss_history"] == second["loss_history"]
    assert first["grad_norm_history"] == second["grad_norm_history"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, twin.state_dict()[name], rtol=0, atol=0)
    assert first["loss_history"] != third["loss_history"]


def test_end_state_train_mode_weights_changed_on_device(tiny_gpt):
    model, config = tiny_gpt
    model.eval()
    before = weights_of(model)
    _train(model, config, max_steps=2)
    assert model.training and all(m.training for m in model.modules())
    assert weights_changed(before, model)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())


# -- precision ----------------------------------------------------------------------------------


def test_fp16_overflow_skips_steps_backs_off_scale_and_holds_the_lr(tiny_gpt):
    model, config = tiny_gpt
    init_scale, lr, warmup, steps = 2.0**40, 3e-3, 2, 30
    before = weights_of(model)
    results = _train(
        model,
        config,
        precision="fp16",
        init_loss_scale=init_scale,
        max_steps=steps,
        batch_size=2,
        warmup_steps=warmup,
        learning_rate=lr,
        log_every=5,
    )
    scales = results["loss_scale_history"]
    assert results["precision"] == "fp16" and results["amp_enabled"] is True
    assert len(scales) == steps == len(results["lr_history"])
    # The scale only falls when a step is skipped (growth needs 2000 clean steps): that marks the skips.
    previous = [init_scale] + scales[:-1]
    skipped = [now < prev for now, prev in zip(scales, previous)]
    assert results["skipped_steps"] == sum(skipped) > 0
    assert not all(skipped), "the scale never came down far enough to take a real step"
    assert all(now == prev / 2 for now, prev, s in zip(scales, previous, skipped) if s)  # backoff factor 0.5
    assert results["final_loss_scale"] == scales[-1] < init_scale

    # The schedule advanced once per real step only: replay it with the same skips.
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = build_lr_scheduler(optimizer, warmup, steps)
    expected = []
    for was_skipped in skipped:
        expected.append(optimizer.param_groups[0]["lr"])
        if not was_skipped:
            optimizer.step()
            scheduler.step()
    torch.testing.assert_close(results["lr_history"], expected, rtol=1e-12, atol=0)
    for i in range(steps - 1):
        if skipped[i]:
            assert results["lr_history"][i + 1] == results["lr_history"][i], i

    # Skipped steps never touched the weights with inf/NaN; the real steps did train.
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert weights_changed(before, model)
    assert results["figure"].axes[3].get_title() == "fp16 loss scale"


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_bf16_and_fp32_have_no_scaler(tiny_gpt, cpu_bf16, precision):
    cpu_bf16(True)
    model, config = tiny_gpt
    results = _train(model, config, precision=precision, max_steps=2)
    assert results["precision"] == precision
    assert results["amp_enabled"] is (precision == "bf16")
    assert results["loss_scale_history"] == [] and results["final_loss_scale"] is None
    assert results["skipped_steps"] == 0
    assert results["figure"].axes[3].get_title() == "Next-token accuracy"
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_use_amp_on_cpu_with_native_bf16_trains_in_bf16(tiny_gpt, cpu_bf16):
    cpu_bf16(True)
    model, config = tiny_gpt
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        results = _train(model, config, use_amp=True, max_steps=2)
    assert results["precision"] == "bf16" and results["amp_enabled"] is True


def test_use_amp_on_cpu_without_bf16_warns_and_trains_in_fp32(tiny_gpt, cpu_bf16):
    cpu_bf16(False)
    model, config = tiny_gpt
    with pytest.warns(UserWarning, match="no native bf16"):
        results = _train(model, config, use_amp=True, max_steps=2)
    assert results["precision"] == "fp32" and results["amp_enabled"] is False


# -- gradient accumulation ----------------------------------------------------------------------


def _one_step(model, config, train, val, batch_size, accumulation):
    return tier3.test_fine_tuning(
        model,
        config,
        train,
        val,
        n_epochs=1,
        learning_rate=1e-3,
        batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        progress=False,
        max_val_batches=1,
    )


def test_accumulation_of_two_halves_equals_one_full_batch(tiny_gpt):
    model, config = tiny_gpt
    accumulated, half_only = copy.deepcopy(model), copy.deepcopy(model)
    train, val = token_ids(4, SEQ_LEN), token_ids(2, SEQ_LEN, seed=1)
    full = _one_step(model, config, train, val, batch_size=4, accumulation=1)
    acc = _one_step(accumulated, config, train, val, batch_size=2, accumulation=2)
    assert len(full["loss_history"]) == len(acc["loss_history"]) == 1
    torch.testing.assert_close(acc["loss_history"], full["loss_history"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(acc["grad_norm_history"], full["grad_norm_history"], rtol=1e-5, atol=1e-6)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(accumulated.state_dict()[name], tensor, rtol=0, atol=1e-6)
    # Control: half the data alone gives a different gradient, so the comparison above can fail.
    half = _one_step(half_only, config, train, val, batch_size=2, accumulation=1)
    assert abs(half["grad_norm_history"][0] - full["grad_norm_history"][0]) > 1e-3


def test_accumulation_with_padding_is_token_weighted(tiny_gpt):
    model, config = tiny_gpt
    reference, accumulated = copy.deepcopy(model), copy.deepcopy(model)
    lengths = (4, 16, 7, 12)  # padded inside each batch; the model sees an attention mask
    train = [token_ids(n, seed=i) for i, n in enumerate(lengths)]
    val = [token_ids(6, seed=9), token_ids(9, seed=10)]
    full = _one_step(model, config, train, val, batch_size=4, accumulation=1)
    acc = _one_step(accumulated, config, train, val, batch_size=2, accumulation=2)

    sums = per_sequence_loss_sums(reference, train)
    token_weighted = sum(s for s, _ in sums) / sum(n for _, n in sums)
    torch.testing.assert_close(full["loss_history"][0], token_weighted, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(acc["loss_history"][0], token_weighted, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(acc["grad_norm_history"], full["grad_norm_history"], rtol=1e-4, atol=1e-6)
    # Adam's first step is about lr * sign(grad): near-zero gradients (rounding noise from the
    # masked attention path) can move a few weights by ~1e-6 of an lr=1e-3 step.
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(accumulated.state_dict()[name], tensor, rtol=0, atol=2e-5)
    # A plain mean of per-sequence means would be measurably different here.
    plain_mean = sum(s / n for s, n in sums) / len(sums)
    assert abs(plain_mean - token_weighted) > 1e-3


def test_short_last_group_loss_is_token_weighted_mean_of_its_group(tiny_gpt):
    model, config = tiny_gpt
    reference = copy.deepcopy(model)
    train = [token_ids(n, seed=i) for i, n in enumerate((4, 12, 16))]  # batch 1, accumulation 2: groups of 2 and 1
    # A learning rate of 1e-12 leaves the fp32 weights unchanged, so every step's loss
    # can be compared with the initial model's losses.
    results = tier3.test_fine_tuning(
        model,
        config,
        train,
        [token_ids(8, seed=5)],
        n_epochs=1,
        learning_rate=1e-12,
        batch_size=1,
        gradient_accumulation_steps=2,
        progress=False,
        max_val_batches=1,
        log_every=1,
    )
    assert results["optimizer_steps"] == 2
    sums = per_sequence_loss_sums(reference, train)
    candidates = []
    for last in range(3):  # which row the shuffle left for the short group
        pair = [sums[i] for i in range(3) if i != last]
        candidates.append([sum(s for s, _ in pair) / sum(n for _, n in pair), sums[last][0] / sums[last][1]])

    def close(got, want):
        return all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(got, want))

    matches = [c for c in candidates if close(results["loss_history"], c)]
    assert len(matches) == 1, (results["loss_history"], candidates)
    # The epoch's train loss is the token-weighted mean over all three rows.
    epoch_loss = sum(s for s, _ in sums) / sum(n for _, n in sums)
    assert results["metrics_summary"]["train/loss"].iloc[0] == pytest.approx(epoch_loss, rel=1e-5)


# -- model output formats -----------------------------------------------------------------------


@dataclasses.dataclass
class HFStyleOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class Wrapper(nn.Module):
    """Wraps the tiny GPT and returns its logits in another container."""

    def __init__(self, inner: nn.Module, kind: str) -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, input_ids, attention_mask=None):
        logits = self.inner(input_ids, attention_mask)
        return {
            "tensor": lambda: logits,
            "tuple": lambda: (logits, logits.float().logsumexp(-1).mean()),
            "list": lambda: [logits],
            "dict": lambda: {"logits": logits, "hidden": None},
            "hf": lambda: HFStyleOutput(logits=logits),
            "string": lambda: "not logits",
            "pooled": lambda: logits.mean(dim=1),  # (B, V): no sequence axis
        }[self.kind]()


class KeywordOnly(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *, input_ids, attention_mask=None):
        return self.inner(input_ids, attention_mask=attention_mask)


@pytest.mark.parametrize("kind", ["tensor", "tuple", "list", "dict", "hf", "keyword-only"])
def test_output_formats_all_train(tiny_gpt, kind):
    inner, config = tiny_gpt
    model = KeywordOnly(inner) if kind == "keyword-only" else Wrapper(inner, kind)
    before = weights_of(inner)
    results = _train(model, config, max_steps=2)
    assert results["optimizer_steps"] == 2
    assert all(math.isfinite(x) for x in results["loss_history"])
    assert weights_changed(before, inner)


class NoTrainingAllowed:
    """A callback that fails the test if training begins."""

    def on_train_begin(self, state):
        raise AssertionError("training started")


def test_config_vocab_smaller_than_output_width_fails_before_training(tiny_gpt):
    model, config = tiny_gpt
    small = dataclasses.replace(config, vocab_size=128)
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"logits of shape \(\d+, 16, 256\).*vocab\) = \(\d+, 16, 128\)"):
        _train(model, small, train_data=token_ids(8, SEQ_LEN, high=128), batch_size=2, callbacks=[NoTrainingAllowed()])
    assert not weights_changed(before, model)


@pytest.mark.parametrize(
    "kind, error, match",
    [("string", TypeError, "cannot find logits"), ("pooled", ValueError, r"expected \(batch, seq, vocab\)")],
)
def test_unusable_model_output_fails_before_training(tiny_gpt, kind, error, match):
    inner, config = tiny_gpt
    with pytest.raises(error, match=match):
        _train(Wrapper(inner, kind), config, callbacks=[NoTrainingAllowed()])


def test_config_without_vocab_size_uses_the_output_width(tiny_gpt):
    model, _ = tiny_gpt
    ids = token_ids(8, SEQ_LEN)
    ids[0, 0] = 255  # the top id of the 256-wide output is accepted
    results = _train(model, {"max_seq_len": 32}, train_data=ids, batch_size=2, max_steps=1)
    assert results["optimizer_steps"] == 1
    ids[0, 0] = 256
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 255\]"):
        _train(model, {"max_seq_len": 32}, train_data=ids, batch_size=2, max_steps=1)


def test_config_without_vocab_size_and_no_sequence_output_is_a_clear_error(tiny_gpt):
    inner, _ = tiny_gpt
    with pytest.raises(ValueError, match="cannot infer vocab_size.*set config.vocab_size"):
        _train(Wrapper(inner, "pooled"), {"max_seq_len": 32}, callbacks=[NoTrainingAllowed()])


# -- user data ----------------------------------------------------------------------------------


class CountingDataset(torch.utils.data.Dataset):
    def __init__(self, rows: torch.Tensor) -> None:
        self.rows, self.reads = rows, 0

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        self.reads += 1
        return self.rows[index]


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("def add(a, b):\n    return a + b\n" * 20)
    return path


@pytest.mark.parametrize("kind", ["tensor-1d", "tensor-2d", "strings", "path-str", "path", "dataset"])
def test_user_data_kinds_train(tiny_gpt, tmp_path, kind):
    model, config = tiny_gpt
    train = {
        "tensor-1d": lambda: token_ids(400),
        "tensor-2d": lambda: token_ids(12, SEQ_LEN),
        "strings": lambda: ["short", "a somewhat longer line of text", "x = 1", "print('hi')"] * 3,
        "path-str": lambda: str(_text_file(tmp_path)),
        "path": lambda: _text_file(tmp_path),
        "dataset": lambda: CountingDataset(token_ids(12, SEQ_LEN)),
    }[kind]()
    results = _train(model, config, train_data=train, batch_size=2, max_steps=2)
    assert results["data_source"] == "user"
    assert results["optimizer_steps"] == 2
    assert all(math.isfinite(x) for x in results["loss_history"]) and math.isfinite(results["val_loss"])


def test_explicit_val_data_is_used(tiny_gpt):
    model, config = tiny_gpt
    val = CountingDataset(token_ids(3, SEQ_LEN, seed=7))
    results = _train(model, config, train_data=token_ids(8, SEQ_LEN), val_data=val, batch_size=2, max_steps=2)
    assert val.reads >= 3
    assert math.isfinite(results["val_loss"])


@pytest.mark.parametrize("arg", ["train_data", "val_data"])
@pytest.mark.parametrize(
    "bad, error",
    [(torch.rand(4, 8), TypeError), (7, TypeError), ("no/such/corpus.txt", ValueError)],
    ids=["float-tensor", "int", "missing-path"],
)
def test_bad_data_kinds_name_the_argument(tiny_gpt, arg, bad, error):
    model, config = tiny_gpt
    data = {"train_data": token_ids(8, SEQ_LEN), "val_data": token_ids(2, SEQ_LEN), arg: bad}
    with pytest.raises(error, match=arg):
        _train(model, config, callbacks=[NoTrainingAllowed()], **data)


@pytest.mark.parametrize("arg", ["train_data", "val_data"])
def test_empty_dataset_error_names_the_argument(tiny_gpt, arg):
    model, config = tiny_gpt
    data = {
        "train_data": token_ids(4, SEQ_LEN),
        "val_data": token_ids(2, SEQ_LEN),
        arg: CountingDataset(token_ids(0, SEQ_LEN)),
    }
    with pytest.raises(ValueError, match=arg):
        _train(model, config, callbacks=[NoTrainingAllowed()], **data)


def test_ids_outside_vocabulary_are_rejected(tiny_gpt):
    model, config = tiny_gpt
    ids = token_ids(8, SEQ_LEN)
    ids[3, 5] = config.vocab_size
    with pytest.raises(ValueError, match=r"train_data holds token ids .*outside the vocabulary"):
        _train(model, config, train_data=ids, callbacks=[NoTrainingAllowed()])


@pytest.mark.parametrize("train_data", [None, ["some text", "more text"]], ids=["corpus", "strings"])
def test_text_with_small_vocabulary_is_a_clear_error(train_data):
    from utils import models

    model, config = models.tiny_gpt(vocab_size=100, d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
    with pytest.raises(ValueError, match=r"vocab_size=100.*vocab_size >= 256"):
        _train(model, config, train_data=train_data)


# -- bad arguments ------------------------------------------------------------------------------


@pytest.fixture
def nothing_may_run(monkeypatch):
    """Fail loudly if setup (at_edge=True) or training begins."""

    def forbid(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} started before the bad argument was caught")

        return fail

    def install(at_edge: bool) -> None:
        monkeypatch.setattr(loop, "run_training_epoch", forbid("training"))
        if at_edge:
            monkeypatch.setattr(loop, "build_parts", forbid("setup"))

    return install


# (overrides, error, message, caught before setup starts)
BAD_ARGUMENTS = [
    (dict(n_epochs=0), ValueError, "n_epochs", True),
    (dict(batch_size=-1), ValueError, "batch_size", True),
    (dict(learning_rate=0), ValueError, "learning_rate", True),
    (dict(gradient_accumulation_steps=0), ValueError, "gradient_accumulation_steps", True),
    (dict(max_steps=0), ValueError, "max_steps", True),
    (dict(log_every=0), ValueError, "log_every", True),
    (dict(grad_clip=0.0), ValueError, "grad_clip", True),
    (dict(weight_decay=-0.1), ValueError, "weight_decay", True),
    (dict(warmup_steps=-1), ValueError, "warmup_steps", True),
    (dict(seed=1.5), ValueError, "seed must be an integer", True),
    # Found by the bad-input sweep: each must be named before any work.
    (dict(learning_rate=True), ValueError, r"learning_rate must be a positive finite number, got True", True),
    (dict(grad_clip="1.0"), ValueError, r"grad_clip must be a positive finite number or None, got the string", True),
    (dict(weight_decay=math.inf), ValueError, "weight_decay must be a non-negative finite number, got inf", True),
    (dict(batch_size=True), ValueError, "batch_size must be a positive integer, got True", True),
    (dict(n_epochs=2.0), ValueError, "n_epochs must be a positive integer", True),
    (dict(max_steps="5"), ValueError, "max_steps must be a positive integer or None", True),
    (dict(log_every=math.nan), ValueError, "log_every must be a positive integer", True),
    (dict(warmup_steps=True), ValueError, "warmup_steps must be a non-negative integer or None", True),
    (dict(learning_rate=math.nan), ValueError, "learning_rate must be a positive finite number", True),
    (dict(init_loss_scale=math.inf), ValueError, "init_loss_scale must be a positive finite number", True),
    (dict(max_val_batches=0), ValueError, "max_val_batches must be a positive integer or None", True),
    (dict(seq_len=True), ValueError, "seq_len must be a positive integer or None", True),
    (dict(progress="yes"), ValueError, "progress must be True or False", True),
    (dict(use_wandb=1), ValueError, "use_wandb must be True or False", True),
    (dict(use_amp="bf16"), TypeError, "use_amp must be True, False or None", True),
    (dict(wandb_project=""), ValueError, "wandb_project must be a non-empty string", True),
    (dict(device="tpu"), ValueError, "device='tpu' is not a device name", True),
    (dict(resume_from=3), TypeError, "resume_from must be a checkpoint file path", True),
    (dict(precision="fp8"), ValueError, "precision='fp8'", True),
    (dict(use_amp=True, precision="fp32"), ValueError, r"use_amp=True.*precision='fp32'", True),
    (dict(callbacks=[object()]), TypeError, "callback", True),
    (dict(callbacks="on_log"), TypeError, "callbacks", True),
    (dict(compile="yes"), TypeError, "compile must be True, False or a dict of torch.compile arguments", True),
    (dict(seq_len=64), ValueError, "seq_len=64 exceeds config max_seq_len=32", False),
    (dict(warmup_steps=10, max_steps=4), ValueError, "warmup_steps=10 exceeds the 4", False),
]


def _case_id(overrides):
    return ",".join(f"{k}={type(v).__name__ if k == 'callbacks' else v!r}" for k, v in overrides.items())


@pytest.mark.parametrize("overrides, error, match, at_edge", BAD_ARGUMENTS, ids=[_case_id(c[0]) for c in BAD_ARGUMENTS])
def test_bad_arguments_fail_before_work_and_name_the_argument(
    tiny_gpt, nothing_may_run, overrides, error, match, at_edge
):
    model, config = tiny_gpt
    nothing_may_run(at_edge)
    with pytest.raises(error, match=match):
        _train(model, config, **overrides)


def test_cuda_device_without_cuda_is_rejected(tiny_gpt, nothing_may_run, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    nothing_may_run(False)
    model, config = tiny_gpt
    with pytest.raises(ValueError, match=r"device='cuda'.*CUDA is not available"):
        _train(model, config, device="cuda")


@pytest.mark.parametrize("not_a_model", ["gpt2", None, (nn.Linear(2, 2), {})], ids=["str", "None", "tuple"])
def test_model_must_be_a_module(nothing_may_run, not_a_model):
    nothing_may_run(True)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        _train(not_a_model, {"vocab_size": 256, "max_seq_len": 32})


# -- callbacks ---------------------------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.events = []

    def on_train_begin(self, state):
        self.events.append(("begin", state.optimizer_step, None))
        self.state = state

    def on_log(self, state, row):
        assert state is self.state
        self.events.append(("log", state.optimizer_step, dict(row)))

    def on_epoch_end(self, state, row):
        self.events.append(("epoch", state.epoch, dict(row)))

    def on_train_end(self, state, results):
        self.events.append(("end", state.optimizer_step, results))


class OnlyEnd:
    """A callback with a single hook: the others are simply not called."""

    def on_train_end(self, state, results):
        self.called = True


def test_callbacks_see_state_and_rows_in_order(tiny_gpt):
    model, config = tiny_gpt
    recorder = Recorder()
    results = _train(
        model,
        config,
        train_data=token_ids(8, SEQ_LEN),
        val_data=token_ids(2, SEQ_LEN, seed=1),
        n_epochs=2,
        batch_size=2,
        max_steps=None,
        log_every=3,
        callbacks=[recorder, OnlyEnd()],
    )
    kinds = [e[0] for e in recorder.events]
    assert kinds == ["begin", "log", "epoch", "log", "log", "epoch", "end"]
    assert recorder.events[0][1] == 0
    logs = [e for e in recorder.events if e[0] == "log"]
    assert [step for _, step, _ in logs] == [3, 6, 8]  # every 3 steps, and the last of 2 x 4
    assert [row["train/step"] for _, _, row in logs] == [3, 6, 8]
    assert all({"train/loss", "train/grad_norm", "lr", "epoch"} <= set(row) for _, _, row in logs)
    epochs = [e for e in recorder.events if e[0] == "epoch"]
    assert [e[1] for e in epochs] == [0, 1] and [row["epoch"] for _, _, row in epochs] == [0, 1]
    assert all({"train/loss", "val/loss", "val/accuracy"} <= set(row) for _, _, row in epochs)
    assert recorder.events[-1][2] is results and recorder.events[-1][1] == 8
    assert recorder.state.model is model
    assert results["best_epoch"] == int(results["metrics_summary"]["val/loss"].idxmin())


class StopAt:
    def __init__(self, step):
        self.step = step

    def on_log(self, state, row):
        if state.optimizer_step >= self.step:
            state.stop_training = True


def test_callback_can_stop_training_early(tiny_gpt):
    model, config = tiny_gpt
    results = _train(model, config, n_epochs=3, max_steps=None, log_every=1, batch_size=2, callbacks=[StopAt(3)])
    assert results["optimizer_steps"] == 3 and len(results["loss_history"]) == 3
    assert len(results["metrics_summary"]) == 1  # no further epoch started


class Boom(RuntimeError):
    pass


class Explodes:
    def on_log(self, state, row):
        raise Boom("callback failed")


def test_callback_exception_propagates(tiny_gpt):
    model, config = tiny_gpt
    model.eval()
    with pytest.raises(Boom, match="callback failed"):
        _train(model, config, callbacks=[Explodes()])
    assert model.training  # restored even on failure


def test_amp_wandb_callback_logs_to_a_real_offline_run(tiny_gpt, offline_wandb_log, cpu_bf16):
    wandb = pytest.importorskip("wandb")
    cpu_bf16(True)
    assert wandb.run is None

    class ReadRun:
        def on_train_end(self, state, results):
            self.run = wandb.run
            self.summary = dict(wandb.run.summary)

    reader = ReadRun()
    model, config = tiny_gpt
    results = _train(model, config, use_wandb=True, precision="bf16", callbacks=[AmpWandbCallback(), reader])
    assert reader.run is not None and reader.run.settings.mode == "offline"
    assert {"train/loss", "val/loss", "amp/enabled", "amp/precision"} <= set(reader.summary)
    assert reader.summary["amp/precision"] == "bf16" and reader.summary["amp/enabled"] is True
    # train/loss in W&B is the step rows' window mean; the epoch row's mean goes under its own key, so
    # logging both at the same optimizer step never overwrites one with the other.
    assert reader.summary["train/loss"] == pytest.approx(results["step_history"]["train/loss"].iloc[-1])
    assert reader.summary["train/epoch_loss"] == pytest.approx(results["metrics_summary"]["train/loss"].iloc[-1])
    assert wandb.run is None  # the run test_fine_tuning started was finished
    written = offline_wandb_log(b"train/loss", b"amp/precision")
    assert b"train/loss" in written and b"amp/precision" in written


def test_amp_wandb_callback_without_wandb_run_raises(tiny_gpt):
    pytest.importorskip("wandb")
    model, config = tiny_gpt
    with pytest.raises(RuntimeError, match="needs an active W&B run"):
        _train(model, config, callbacks=[AmpWandbCallback()])


# -- helpers -----------------------------------------------------------------------------------


def test_training_visualization_is_a_figure_outside_pyplot(tiny_gpt):
    import matplotlib.pyplot as plt

    model, config = tiny_gpt
    open_before = plt.get_fignums()
    results = _train(model, config, max_steps=3)
    fig = results["figure"]
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes[:3]] == ["Loss", "Gradient norm (before clipping)", "Learning rate"]
    assert list(fig.axes[0].lines[0].get_ydata()) == pytest.approx(results["loss_history"])
    assert plt.get_fignums() == open_before  # never registered with pyplot, never shown


# -- GPU ---------------------------------------------------------------------------------------


@pytest.mark.requires_cuda
def test_use_amp_on_cuda_trains_in_reduced_precision(tiny_gpt):
    model, config = tiny_gpt
    results = tier3.test_fine_tuning(
        model,
        config,
        n_epochs=1,
        learning_rate=3e-3,
        batch_size=4,
        max_steps=40,
        seq_len=32,
        max_corpus_bytes=50_000,
        max_val_batches=2,
        progress=False,
        log_every=10,
        use_amp=True,
        device="cuda",
    )
    assert results["precision"] in ("bf16", "fp16") and results["amp_enabled"] is True
    assert results["device"].startswith("cuda")
    assert next(model.parameters()).is_cuda
    assert results["final_loss"] < results["initial_loss"] - 0.5


def test_a_bidirectional_model_gets_a_leakage_warning(tiny_encoder):
    model, config = tiny_encoder
    with pytest.warns(UserWarning, match="the model is not causal"):
        _train(model, config, max_steps=1)


def test_a_causal_model_with_padded_batches_gets_no_leakage_warning(tiny_gpt, recwarn):
    model, config = tiny_gpt
    texts = ["def f(x):\n    return x\n", "import os\n", "class A:\n    pass\n" * 2] * 4
    _train(model, config, train_data=texts, val_data=texts, max_steps=1)  # the probe batch is padded
    assert not [w for w in recwarn if "not causal" in str(w.message)]
