"""Tests for utils.tier3_benchmark_comparison: your model against a same-sized standard GPT, trained alike.

Every run is tiny (a few optimizer steps, 16-token sequences, a 20 kB corpus): these tests
check that the comparison is fair (same settings, data, steps and seed for both models,
through the engine), offline, and leaves the caller's models as they were. No timing is
asserted: step times on a shared CPU say nothing.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import socket
import statistics

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from tiny_models import TINY, TorchEncoderLM

from utils import models
from utils import tier3_benchmark_comparison as bc
from utils.compare import measure, verdict
from utils.model_helpers import count_parameters
from utils.training import loop

try:  # imported here, before any test sets HF_HUB_OFFLINE, so its import-time flag is the real environment's
    from huggingface_hub import constants as hub_constants
except ImportError:
    hub_constants = None

RUN = dict(train_steps=4, n_samples=4, batch_size=2, seq_len=16, max_corpus_bytes=20_000, progress=False)
METRICS = [
    "parameters",
    "val loss",
    "val perplexity",
    "next-token accuracy",
    "training tokens/s",
    "median step time (ms)",
    "inference latency median (ms)",
    "inference latency p95 (ms)",
    "peak training memory (MB)",
    "val bits per byte",
]

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest


def _weights(model):
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def _hf_gpt2(vocab_size=256, n_positions=32):
    """A tiny GPT-2 built from a config: nothing is downloaded."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=vocab_size, n_positions=n_positions, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config), config


def _build(kind):
    torch.manual_seed(0)
    if kind == "gpt":
        return models.tiny_gpt(**TINY)
    if kind == "hf_gpt2":
        return _hf_gpt2()
    return TorchEncoderLM(vocab_size=256), {"vocab_size": 256, "max_seq_len": 32, "d_model": 32}


@pytest.fixture
def no_network(monkeypatch):
    """Refuse (and record) every DNS lookup and socket connection.

    HF_HUB_OFFLINE=1 is set, but huggingface_hub read that variable once, at import; its flag is
    held False here, as for a user who set nothing, so the comparison must keep the Hub offline itself.
    """
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("a test tried to reach the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if hub_constants is not None:
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    return attempts


@pytest.fixture
def engine_calls(monkeypatch):
    """Record every engine run: the model object, its settings, its data and its results."""
    calls = []
    real = loop.train

    def spy(model, config, settings, train_data=None, val_data=None, **kwargs):
        call = {"model": model, "settings": settings, "train_data": train_data, "val_data": val_data}
        calls.append(call)
        call["results"] = real(model, config, settings, train_data, val_data, **kwargs)
        return call["results"]

    monkeypatch.setattr(loop, "train", spy)
    return calls


@pytest.fixture
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a model was trained")

    monkeypatch.setattr(loop, "train", fail)


def test_signature_and_defaults():
    params = inspect.signature(bc.test_benchmark_comparison).parameters
    positional = [(n, p.default) for n, p in params.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional == [
        ("model", inspect.Parameter.empty),
        ("config", inspect.Parameter.empty),
        ("baseline", None),
        ("test_data", None),
        ("n_samples", bc.DEFAULT_N_SAMPLES),
    ]
    keyword = {n: p.default for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keyword == {
        "train_steps": bc.DEFAULT_TRAIN_STEPS,
        "precision": "auto",
        "device": "auto",
        "seed": 0,
        "progress": True,
    }
    assert bc.test_benchmark_comparison.__test__ is False


@pytest.mark.parametrize("kind", ["gpt", "hf_gpt2", "torch_encoder"])
def test_comparison_runs_offline_on_three_kinds_of_model(kind, no_network, engine_calls):
    model, config = _build(kind)
    if kind == "torch_encoder":  # the engine's own warning: the encoder sees the tokens it must predict
        with pytest.warns(UserWarning, match="not causal"):
            report = bc.test_benchmark_comparison(model, config, **RUN)
    else:
        report = bc.test_benchmark_comparison(model, config, **RUN)

    assert no_network == []
    assert report["status"] == "ok"
    assert report["judgement"] in ("better", "worse", "about equal")
    not_causal = kind == "torch_encoder"
    assert ("not causal" in report["verdict"]) is not_causal
    assert any("Your model is not causal" in note for note in report["notes"]) is not_causal
    assert report["verdict"].startswith("your model reaches val loss ")
    assert "x its parameters and " in report["verdict"] and "x its step time" in report["verdict"]
    summary = report["summary"]
    assert isinstance(summary, pd.DataFrame)
    assert list(summary.columns) == ["metric", "yours", "baseline", "ratio", "note"]
    assert summary["metric"].tolist() == METRICS
    row = summary.set_index("metric")
    for metric in ("parameters", "val loss", "next-token accuracy", "peak training memory (MB)"):
        assert row.at[metric, "ratio"] == pytest.approx(row.at[metric, "yours"] / row.at[metric, "baseline"])
    assert row.at["val perplexity", "yours"] == pytest.approx(math.exp(row.at["val loss", "yours"]))
    assert "estimate" in row.at["peak training memory (MB)", "note"]  # labelled: no allocator on a CPU
    fig = report["figure"]
    assert isinstance(fig, Figure) and len(fig.axes) == 1 + len(verdict.BAR_METRICS)
    assert len(fig.axes[0].get_lines()) == 4  # two loss curves, two val points

    # The default baseline is the built-in GPT, sized to this model within the stated tolerance.
    described = report["baseline_description"]
    assert described["kind"] == "default" and described["vocab_size"] == 256 and described["max_seq_len"] == 32
    yours_params = count_parameters(model)["total"]
    assert report["yours"]["parameters"] == yours_params
    assert abs(described["parameters"] / yours_params - 1) <= bc.PARAMETER_TOLERANCE
    assert row.at["parameters", "baseline"] == described["parameters"]

    # Both trained through the engine, on the same data, with identical settings.
    assert len(engine_calls) == 2
    yours_call, base_call = engine_calls
    assert yours_call["settings"] == base_call["settings"]
    assert yours_call["settings"].max_steps == RUN["train_steps"] and yours_call["settings"].seed == 0
    assert yours_call["train_data"] is None and base_call["train_data"] is None  # the built-in corpus
    assert yours_call["val_data"] is base_call["val_data"] and len(yours_call["val_data"]) == RUN["n_samples"]
    assert yours_call["model"] is not model  # a copy was trained
    for call, side in ((yours_call, "yours"), (base_call, "baseline")):
        assert call["results"]["optimizer_steps"] == RUN["train_steps"]
        assert report[side]["val_loss"] == call["results"]["val_loss"]
    assert report["yours"]["precision"] == report["baseline"]["precision"] == "fp32"


def test_same_design_and_seed_gives_the_same_numbers():
    """Sanity: tiny_gpt built under seed 0 against its default baseline (the same shape, drawn under seed 0).

    With the same data, steps, seed and settings for both, the two runs are the same computation,
    so every loss matches exactly and the verdict is 'about equal'.
    """
    torch.manual_seed(0)
    model, config = models.tiny_gpt(**TINY)
    report = bc.test_benchmark_comparison(model, config, **RUN)
    described = report["baseline_description"]
    assert (described["d_model"], described["n_layers"], described["n_heads"]) == (32, 2, 2)
    assert report["yours"]["loss_history"] == report["baseline"]["loss_history"]
    assert report["yours"]["val_loss"] == report["baseline"]["val_loss"]
    assert report["judgement"] == "about equal"
    assert report["summary"].set_index("metric").at["parameters", "ratio"] == 1.0


def test_inference_is_timed_by_tier1_with_the_models_taking_turns(monkeypatch):
    calls = []
    real = measure.diagnostics_speed.test_inference_speed

    def spy(model, config, **kwargs):
        result = real(model, config, **kwargs)
        calls.append((model, result["latencies_ms"]["fp32"], kwargs))
        return result

    monkeypatch.setattr(measure.diagnostics_speed, "test_inference_speed", spy)
    model, config = _build("gpt")
    report = bc.test_benchmark_comparison(model, config, **RUN)
    assert len(calls) == 2 * bc.LATENCY_ROUNDS
    yours, base = calls[0::2], calls[1::2]  # alternating: yours, baseline, yours, ...
    assert len({id(m) for m, _, _ in yours}) == 1 and len({id(m) for m, _, _ in base}) == 1
    assert yours[0][0] is not base[0][0] and yours[0][0] is not model
    assert all(k["batch_size"] == RUN["batch_size"] and k["seq_len"] == RUN["seq_len"] for _, _, k in calls)
    for side, turns in (("yours", yours), ("baseline", base)):
        samples = [t for _, times, _ in turns for t in times]
        assert len(samples) == bc.LATENCY_ROUNDS * bc.LATENCY_ITERS_PER_ROUND
        # Tier 1's median of an even count is the lower middle value
        assert report[side]["latency_median_ms"] == pytest.approx(statistics.median_low(samples))
        assert report[side]["latency_p95_ms"] >= report[side]["latency_median_ms"]


def test_test_data_is_what_both_models_are_evaluated_on(engine_calls):
    text = "def add(a, b):\n    return a + b\n" * 8  # 256 bytes: 16 sequences of 16 tokens
    model, config = _build("gpt")
    report = bc.test_benchmark_comparison(model, config, test_data=[text], **{**RUN, "n_samples": 5})
    assert report["settings"]["evaluated_on"] == "5 sequences of test_data"
    val_data = engine_calls[0]["val_data"]
    assert val_data is engine_calls[1]["val_data"] and len(val_data) == 5
    assert bytes(val_data[0].tolist()) == text.encode()[:16]
    with pytest.raises(ValueError, match="n_samples=99, but test_data holds 16 sequences"):
        bc.test_benchmark_comparison(model, config, test_data=[text], **{**RUN, "n_samples": 99})


def test_models_are_left_as_found():
    model, config = _build("gpt")
    model.eval()
    rival, rival_config = _build("hf_gpt2")  # a baseline module in train mode, with a gradient set
    rival.train()
    first = next(rival.parameters())
    first.grad = torch.ones_like(first)
    before, rival_before = _weights(model), _weights(rival)
    report = bc.test_benchmark_comparison(model, config, baseline=(rival, rival_config), **RUN)
    assert report["status"] == "ok" and report["baseline_description"]["kind"] == "module"
    _assert_same_weights(_weights(model), before)
    _assert_same_weights(_weights(rival), rival_before)
    assert model.training is False and rival.training is True
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(first.grad, torch.ones_like(first), rtol=0, atol=0)
    assert {p.device.type for p in (*model.parameters(), *rival.parameters())} == {"cpu"}


def test_hf_name_that_is_not_cached_is_skipped_without_the_network(no_network, no_training):
    pytest.importorskip("transformers")
    model, config = _build("gpt")
    with pytest.warns(UserWarning, match="skipped"):
        report = bc.test_benchmark_comparison(model, config, baseline="hf:not-a-cached-model", **RUN)
    assert report["status"] == "skipped"
    assert "not in the local Hugging Face cache" in report["reason"] and "never downloads" in report["reason"]
    assert report["verdict"] == f"skipped: {report['reason']}"
    assert report["summary"] is None and report["figure"] is None
    assert report["baseline_description"] == {"kind": "hf", "name": "not-a-cached-model"}
    assert no_network == []
    assert hub_constants.HF_HUB_OFFLINE is False  # the Hub's offline flag is given back


def test_hf_offline_guard_sets_and_restores_the_hub_flag(monkeypatch):
    """Pins the one place that touches huggingface_hub's internals: its import-time offline constant."""
    if hub_constants is None:
        pytest.skip("huggingface_hub is not installed")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with bc.hub_offline():
        assert hub_constants.is_offline_mode() is True
        assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert hub_constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ


def test_hf_folder_baseline_is_built_offline_with_fresh_weights(tmp_path, no_network, engine_calls):
    _, hf_config = _hf_gpt2()
    hf_config.save_pretrained(tmp_path)
    model, config = _build("gpt")
    report = bc.test_benchmark_comparison(model, config, baseline=f"hf:{tmp_path}", **RUN)
    assert no_network == []
    assert report["status"] == "ok" and report["loss_comparable"] is True
    described = report["baseline_description"]
    assert described["kind"] == "hf" and described["class"] == "GPT2LMHeadModel" and "fresh" in described["weights"]
    assert type(engine_calls[1]["model"]).__name__ == "GPT2LMHeadModel"


def test_a_larger_baseline_vocabulary_compares_bits_per_byte_not_loss():
    model, config = _build("gpt")
    rival = models.tiny_gpt(**{**TINY, "vocab_size": 512})
    report = bc.test_benchmark_comparison(model, config, baseline=rival, **RUN)
    assert report["status"] == "ok" and report["loss_comparable"] is False
    assert "vocabularies differ (256 vs 512)" in report["loss_note"]
    row = report["summary"].set_index("metric")
    for metric in ("val loss", "val perplexity"):
        assert row.at[metric, "yours"] is None and row.at[metric, "ratio"] is None
        assert row.at[metric, "note"] == report["loss_note"]
    # The same held-out text, scored per byte: comparable whatever the vocabulary.
    assert row.at["val bits per byte", "ratio"] is not None
    assert report["verdict"].startswith("your model reaches val bits per byte ")
    assert "val loss not compared" in report["verdict"]


@pytest.mark.parametrize(
    "baseline_sizes, reason",
    [
        ({"vocab_size": 128}, r"vocabulary \(128\) is smaller than your model's \(256\)"),
        ({"max_seq_len": 8}, "at most 8 positions"),
    ],
)
def test_a_baseline_that_does_not_fit_is_skipped_before_training(baseline_sizes, reason, no_training):
    model, config = _build("gpt")
    rival = models.tiny_gpt(**{**TINY, **baseline_sizes})
    with pytest.warns(UserWarning, match="skipped"):
        report = bc.test_benchmark_comparison(model, config, baseline=rival, **RUN)
    assert report["status"] == "skipped" and report["baseline_description"]["kind"] == "module"
    assert report["reason"].startswith("the module baseline 'TinyTransformer' cannot be compared")
    assert re.search(reason, report["reason"])


def test_an_hf_baseline_that_does_not_fit_is_skipped_by_the_same_rule(tmp_path, no_network, no_training):
    _, hf_config = _hf_gpt2(vocab_size=128)
    hf_config.save_pretrained(tmp_path)
    model, config = _build("gpt")
    with pytest.warns(UserWarning, match="skipped"):
        report = bc.test_benchmark_comparison(model, config, baseline=f"hf:{tmp_path}", **RUN)
    assert report["status"] == "skipped" and "vocabulary (128) is smaller" in report["reason"]


@pytest.mark.requires_cuda
def test_on_cuda_peak_memory_is_the_allocators_own():
    """A GPU figure, measured only on a GPU: the training peak covers weights, gradients and AdamW state."""
    model, config = _build("gpt")
    report = bc.test_benchmark_comparison(model, config, device="cuda", **RUN)
    assert report["status"] == "ok"
    for side in ("yours", "baseline"):
        results = report[side]
        assert results["memory_method"] == "cuda_allocator" and results["device"].startswith("cuda")
        assert results["peak_memory_mb"] * 2**20 >= 4 * 4 * results["parameters"]  # fp32: weights, grads, 2 moments
    assert "measured" in report["summary"].set_index("metric").at["peak training memory (MB)", "note"]
    assert {p.device.type for p in model.parameters()} == {"cpu"}  # the caller's model stayed where it was


@pytest.mark.parametrize("kind", ["gpt", "hf_gpt2", "torch_encoder"])
def test_default_baseline_matches_the_parameter_count(kind):
    model, config = _build(kind)
    baseline, sizes = bc.default_baseline(model, config)
    target = count_parameters(model)["total"]
    assert abs(count_parameters(baseline)["total"] / target - 1) <= bc.PARAMETER_TOLERANCE
    assert (sizes.vocab_size, sizes.max_seq_len) == (256, 32)


def test_default_baseline_finds_an_unusual_size_and_leaves_the_rng_alone():
    torch.manual_seed(0)
    model, config = models.tiny_gpt(vocab_size=300, max_seq_len=48, d_model=56, n_layers=3, n_heads=7, d_ff=100)
    state = torch.random.get_rng_state()
    baseline, sizes = bc.default_baseline(model, config, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert (sizes.vocab_size, sizes.max_seq_len) == (300, 48)
    assert abs(count_parameters(baseline)["total"] / count_parameters(model)["total"] - 1) <= bc.PARAMETER_TOLERANCE
    assert sizes.d_model % sizes.n_heads == 0


@pytest.mark.parametrize(
    "sizes", [{}, {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32}, {"vocab_size": 1000, "d_model": 48}]
)
def test_parameter_count_formula_matches_the_built_model(sizes):
    model, config = models.tiny_gpt(**sizes)
    count = bc.gpt_parameter_count(config.vocab_size, config.max_seq_len, config.d_model, config.n_layers)
    assert count == count_parameters(model)["total"]


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, c: bc.test_benchmark_comparison("model", c), TypeError, "model must be a torch.nn.Module"),
        (lambda m, c: bc.test_benchmark_comparison(m, c, baseline=m), TypeError, r"\(module, config\) tuple"),
        (lambda m, c: bc.test_benchmark_comparison(m, c, baseline=(c, m)), TypeError, "baseline must be None"),
        (lambda m, c: bc.test_benchmark_comparison(m, c, baseline="gpt2"), ValueError, "'hf:NAME'"),
        (lambda m, c: bc.test_benchmark_comparison(m, c, baseline="hf: "), ValueError, "'hf:NAME'"),
        (lambda m, c: bc.test_benchmark_comparison(m, c, n_samples=0), ValueError, "n_samples"),
        (lambda m, c: bc.test_benchmark_comparison(m, c, n_samples="8"), ValueError, "n_samples"),
        (lambda m, c: bc.test_benchmark_comparison(m, c, train_steps=True), ValueError, "train_steps"),
        (lambda m, c: bc.test_benchmark_comparison(m, c, seed=1.5), ValueError, "seed"),
        (lambda m, c: bc.test_benchmark_comparison(m, c, precision="fp8"), ValueError, "precision"),
        (lambda m, c: bc.test_benchmark_comparison(m, c, device="tpu"), ValueError, "device"),
        (lambda m, c: bc.test_benchmark_comparison(m, c, learning_rate=-1.0), ValueError, "learning_rate"),
        (lambda m, c: bc.test_benchmark_comparison(m, c, lr=1e-3), TypeError, r"unknown option\(s\) \['lr'\]"),
        (lambda m, c: bc.test_benchmark_comparison(m, c, max_steps=5), TypeError, "train_steps="),
        (lambda m, c: bc.test_benchmark_comparison(m, c, max_val_batches=5), TypeError, "n_samples="),
        (lambda m, c: bc.test_benchmark_comparison(m, c, train_steps=4, warmup_steps=9), ValueError, "warmup_steps"),
        (lambda m, c: bc.test_benchmark_comparison(m, c, seq_len=64), ValueError, "seq_len=64 exceeds"),
        (
            lambda m, c: bc.test_benchmark_comparison(m, c, n_samples=10_000, max_corpus_bytes=20_000),
            ValueError,
            "n_samples=10000, but the corpus tail holds",
        ),
        (
            lambda m, c: bc.test_benchmark_comparison(m, c, test_data=42),
            TypeError,
            "test_data has unsupported type int",
        ),
        (
            lambda m, c: bc.test_benchmark_comparison(TorchEncoderLM(), {"vocab_size": 64, "max_seq_len": 32}),
            ValueError,
            "vocab_size is 64",
        ),
    ],
)
def test_bad_input_raises_before_any_training(call, error, match, no_training):
    model, config = _build("gpt")
    with pytest.raises(error, match=match):
        call(model, config)
