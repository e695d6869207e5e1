"""Eight models nobody here wrote, through every step a new user takes: Tier 1 and 2, the engine, the comparison.

The clients are in ``outside_models``: Hugging Face Llama, Qwen2, Mistral, GPT-NeoX and T5
from tiny configs, a minGPT written here in its author's shape (``forward(idx, targets=None)``
and the ``mlpf`` closure), x-transformers' decoder, and a builder-style export with its own
softmax attention. What they showed, kept here so the next model family does not regress it:
Tier 2 needs no cooperation from the model, the causal verdict is one probe that agrees
everywhere, the user's model is left untouched, and an encoder-decoder gets one clear message.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from outside_models import CAUSAL_KINDS, OUTSIDE_KINDS, build_outside
from tiny_models import token_ids, weights_changed, weights_of

from utils import test_functions as tf
from utils import tier3_benchmark_comparison as bc
from utils.causality import probe_causality
from utils.diagnostics.attention import test_attention_patterns
from utils.diagnostics.capture import capture_from_computation
from utils.model_helpers import make_forward_fn
from utils.training import amp_benchmark, loop

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest

OWN_ATTENTION = ("mingpt", "xtransformers", "builder")  # compute attention themselves, hand over no weights
HF_DECODERS = ("hf_llama", "hf_qwen2", "hf_mistral", "hf_gpt_neox")
TRAIN = dict(
    n_epochs=1,
    learning_rate=1e-3,
    batch_size=2,
    max_steps=2,
    log_every=1,
    seq_len=16,
    max_val_batches=1,
    max_corpus_bytes=20_000,
    progress=False,
    precision="fp32",
    device="cpu",
)
AMP_RUN = dict(
    n_epochs=1,
    batch_size=2,
    max_steps=3,
    timing_warmup_steps=1,
    progress=False,
    seq_len=16,
    max_corpus_bytes=20_000,
    max_val_batches=1,
)
COMPARE = dict(train_steps=2, n_samples=2, batch_size=2, seq_len=16, max_corpus_bytes=20_000, progress=False)


def _untouched(model):
    """What must hold after the library trained in place of ``model``: a snapshot, and a check against it."""
    before, modes = weights_of(model), [m.training for m in model.modules()]

    def check():
        assert not weights_changed(before, model)
        assert [n for n, p in model.named_parameters() if p.grad is not None] == []
        assert [m.training for m in model.modules()] == modes

    return check


# -- Tier 2 without the model's cooperation --------------------------------------------------------


@pytest.mark.parametrize("kind", OWN_ATTENTION)
def test_attention_patterns_runs_on_models_that_compute_attention_themselves(kind):
    model, config = build_outside(kind)
    result = test_attention_patterns(model, config, batch_size=2, seq_len=12)
    assert result["method"] == "softmax_capture" and "(softmax_capture)" in result["summary"]
    assert len(result["attentions"]) == 2
    for weights in result["attentions"]:
        assert weights.shape == (2, 2, 12, 12)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 12), rtol=0, atol=1e-5)
        assert torch.all(weights.triu(1) == 0)  # each one's own causal mask, as computed
    assert result["status"] == "pass" and not result["table"]["collapsed"].any()


def test_x_transformers_rejects_output_attentions_and_still_gets_its_weights_captured():
    model, config = build_outside("xtransformers")
    with pytest.raises(TypeError, match="output_attentions"):  # the keyword travels on through **kwargs
        model(token_ids(1, 4), output_attentions=True)
    assert test_attention_patterns(model, config, batch_size=1, seq_len=8)["method"] == "softmax_capture"


@pytest.mark.parametrize("kind", OWN_ATTENTION)
def test_tier2_runs_with_no_error_row(kind):
    model, config = build_outside(kind)
    summary = tf.run_all_tier2_tests(model, config, seq_len=8, progress=False)
    assert "error" not in set(summary["status"]), summary.to_dict("records")


@pytest.mark.parametrize("kind", HF_DECODERS)
def test_weights_captured_from_the_computation_equal_what_the_model_returns(kind):
    model, config = build_outside(kind)
    ids = token_ids(2, 12)
    own = test_attention_patterns(model, config, input_ids=ids)  # eager attention, output_attentions=True
    assert own["method"] == "output_attentions"
    model.eval()
    captured, method = capture_from_computation(make_forward_fn(model), ids)  # the default SDPA path
    assert method == "sdpa_recomputed"
    for got, expected in zip(captured, own["attentions"], strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# -- one causal verdict, right on all eight --------------------------------------------------------


@pytest.mark.parametrize("kind", OUTSIDE_KINDS)
def test_the_causal_probe_is_right_on_all_eight(kind):
    model, config = build_outside(kind)
    verdict = probe_causality(model, token_ids(2, 12), config=config)
    if kind == "hf_t5":
        assert verdict.causal is None and "is an encoder-decoder model" in verdict.reason
    else:
        assert verdict.causal is True, verdict.reason


@pytest.mark.parametrize(
    "kind", [k for k in CAUSAL_KINDS if k != "xtransformers"]
)  # it takes mask=, not attention_mask=
def test_the_causal_probe_is_right_on_padded_batches(kind):
    model, config = build_outside(kind)
    ids, mask = token_ids(3, 12), torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:], mask[2, 3:] = 0, 0
    assert probe_causality(model, ids.masked_fill(mask == 0, 0), mask, config=config).causal is True


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_the_engine_records_the_same_verdict(kind):
    model, config = build_outside(kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = loop.train(model, config, loop.TrainingSettings(**TRAIN))
    assert results["causal"] is True, results["causal_note"]
    assert not [w for w in caught if "causal" in str(w.message)]


def test_the_comparison_on_mingpt_says_causal_and_leaves_the_model_untouched():
    model, config = build_outside("mingpt")
    check = _untouched(model)
    with pytest.warns(UserWarning, match="your model: a copy of it would not be independent"):
        report = bc.test_benchmark_comparison(model, config, **COMPARE)
    assert "not causal" not in report["verdict"]
    assert not any("not causal" in note for note in report["notes"])
    assert report["yours"]["causal"] is True and report["baseline"]["causal"] is True
    check()


def test_the_amp_benchmark_on_mingpt_leaves_the_model_untouched(cpu_bf16):
    cpu_bf16(True)
    model, config = build_outside("mingpt")
    check = _untouched(model)
    with pytest.warns(UserWarning, match="a copy of it would not be independent"):
        report = amp_benchmark.test_amp_speedup_benchmark(model, config, **AMP_RUN)
    assert report["status"] == "ok"
    check()


# -- an encoder-decoder: one clear message, and the Tier 1 checks with seq_len= ----------------------


def test_an_encoder_decoder_is_refused_before_any_training(monkeypatch):
    model, config = build_outside("hf_t5")
    called = []
    monkeypatch.setattr(loop, "build_parts", lambda *a, **k: called.append(1))
    for run in (
        lambda: loop.train(model, config, loop.TrainingSettings(**TRAIN)),
        lambda: bc.test_benchmark_comparison(model, config, **COMPARE),
        lambda: amp_benchmark.test_amp_speedup_benchmark(model, config, max_steps=3, seq_len=16),
        lambda: tf.test_fine_tuning(model, config, max_steps=2, seq_len=16, progress=False),
    ):
        with pytest.raises(ValueError, match="T5ForConditionalGeneration is an encoder-decoder model, not a next"):
            run()
    assert called == []


def test_an_encoder_decoder_runs_tier1_with_seq_len():
    model, config = build_outside("hf_t5")
    with pytest.raises(ValueError, match="max_seq_len.*or pass seq_len="):
        tf.run_all_tier1_tests(model, config, progress=False)
    options = {"test_inference_speed": {"n_warmup": 1, "n_iters": 2}}
    summary = tf.run_all_tier1_tests(model, config, seq_len=8, options=options, progress=False)
    assert set(summary["status"]) <= {"pass", "warn"}, summary.to_dict("records")
    table = summary.attrs["results"]["test_shape_robustness"]["table"]
    assert sorted(set(table["seq_len"])) == [1, 4, 8]


def test_an_encoder_decoder_gets_the_message_from_the_attention_check():
    model, config = build_outside("hf_t5")
    with pytest.raises(ValueError, match="test_attention_patterns: T5ForConditionalGeneration is an encoder-decoder"):
        test_attention_patterns(model, config, seq_len=8)
