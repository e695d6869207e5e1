"""Tests for utils.model_helpers: config access, calling models, reading their output, probing them."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from tiny_models import TINY, build_model

from utils import model_helpers as mh
from utils import tier3_training_utilities as tier3
from utils.models import ModelConfig, tiny_gpt

# -- get_config_value / require_config_values -----------------------------------


@dataclass
class _DataclassConfig:
    vocab_size: int = 100
    d_model: int = 16


@pytest.mark.parametrize(
    "config",
    [
        _DataclassConfig(),
        {"vocab_size": 100, "d_model": 16},
        SimpleNamespace(vocab_size=100, d_model=16),
    ],
    ids=["dataclass", "dict", "namespace"],
)
def test_get_config_value_reads_every_config_kind(config):
    assert mh.get_config_value(config, "vocab_size") == 100
    assert mh.get_config_value(config, "d_model") == 16
    assert mh.get_config_value(config, "n_heads") is None
    assert mh.get_config_value(config, "n_heads", default=4) == 4


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("hidden_size", "d_model"),
        ("n_embd", "d_model"),
        ("n_positions", "max_seq_len"),
        ("max_position_embeddings", "max_seq_len"),
        ("block_size", "max_seq_len"),
        ("num_hidden_layers", "n_layers"),
        ("n_layer", "n_layers"),
        ("num_attention_heads", "n_heads"),
        ("n_head", "n_heads"),
        ("n_vocab", "vocab_size"),
    ],
)
@pytest.mark.parametrize("kind", ["dict", "namespace"])
def test_get_config_value_resolves_hf_style_aliases(alias, canonical, kind):
    values = {alias: 7}
    config = values if kind == "dict" else SimpleNamespace(**values)
    assert mh.get_config_value(config, canonical) == 7


def test_get_config_value_prefers_canonical_name_and_skips_none():
    config = SimpleNamespace(d_model=None, hidden_size=64, n_embd=32)
    # None means "not set": fall through to the first alias that is set.
    assert mh.get_config_value(config, "d_model") == 64
    assert mh.get_config_value({"d_model": 8, "hidden_size": 64}, "d_model") == 8


def test_get_config_value_keeps_falsy_values():
    # pad_token_id=0 is a real value, not a missing one.
    assert mh.get_config_value({"pad_token_id": 0}, "pad_token_id", default=-1) == 0


def test_get_config_value_on_model_config():
    config = ModelConfig(d_model=32, n_heads=2)
    assert mh.get_config_value(config, "d_model") == 32
    assert mh.get_config_value(config, "max_seq_len") == config.max_seq_len


def test_get_config_value_unknown_name_is_read_directly():
    assert mh.get_config_value({"dropout": 0.1}, "dropout") == 0.1


def test_require_config_values_returns_values_under_canonical_names():
    config = {"hidden_size": 64, "n_positions": 128}
    assert mh.require_config_values(config, ("d_model", "max_seq_len"), "the benchmark") == {
        "d_model": 64,
        "max_seq_len": 128,
    }


def test_require_config_values_lists_every_missing_field_in_one_error():
    config = SimpleNamespace(d_model=32)
    with pytest.raises(ValueError) as excinfo:
        mh.require_config_values(config, ("vocab_size", "d_model", "max_seq_len", "n_heads"), "generation")
    message = str(excinfo.value)
    for name in ("vocab_size", "max_seq_len", "n_heads"):
        assert name in message
    assert "d_model" not in message
    assert "generation" in message
    # The hint names the aliases the user might have used instead.
    assert "max_position_embeddings" in message


# -- validate_model ---------------------------------------------------------------


def test_validate_model_returns_a_module(tiny_gpt):
    model, _ = tiny_gpt
    assert mh.validate_model(model) is model


@pytest.mark.parametrize("mistake", ["class", "tuple", "none"])
def test_validate_model_rejects_non_instances(mistake, tiny_gpt):
    model, config = tiny_gpt
    bad = {"class": type(model), "tuple": (model, config), "none": None}[mistake]
    with pytest.raises(TypeError, match="nn.Module"):
        mh.validate_model(bad)


def test_validate_model_message_mentions_tuple_mistake(tiny_gpt):
    with pytest.raises(TypeError, match=r"got tuple.*\(model, config\)"):
        mh.validate_model(tiny_gpt)


# -- extract_logits -----------------------------------------------------------------


@dataclass
class _Output:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


_LOGITS = torch.arange(6.0).view(1, 2, 3)
_LOSS = torch.tensor(0.5)


@pytest.mark.parametrize(
    "output",
    [
        _LOGITS,
        (_LOGITS, _LOSS),
        (_LOGITS,),
        [_LOGITS, _LOSS],
        {"logits": _LOGITS, "loss": _LOSS},
        _Output(_LOGITS, _LOSS),
        SimpleNamespace(logits=_LOGITS),
    ],
    ids=["tensor", "tuple", "1-tuple", "list", "dict", "dataclass", "namespace"],
)
def test_extract_logits_finds_logits(output):
    assert mh.extract_logits(output) is _LOGITS


@pytest.mark.parametrize(
    "output",
    [
        "logits",
        (),
        [],
        {"loss": _LOSS},
        {"logits": "not a tensor"},
        ("text", _LOGITS),
        None,
        3.0,
        SimpleNamespace(logits=None),
    ],
    ids=[
        "str",
        "empty-tuple",
        "empty-list",
        "dict-no-logits",
        "dict-bad-logits",
        "tuple-non-tensor-first",
        "none",
        "float",
        "namespace-none",
    ],
)
def test_extract_logits_rejects_unknown_output_with_helpful_message(output):
    with pytest.raises(TypeError) as excinfo:
        mh.extract_logits(output)
    message = str(excinfo.value)
    assert type(output).__name__ in message
    assert "'logits' key" in message and ".logits" in message


def test_extract_logits_on_model_output_with_attentions(tiny_gpt):
    model, config = tiny_gpt
    out = model(torch.ones(1, 4, dtype=torch.long), output_attentions=True)
    assert mh.extract_logits(out).shape == (1, 4, config.vocab_size)


# -- make_forward_fn -------------------------------------------------------------------


class _Recorder(nn.Module):
    """Base for toy models that record how they were called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def _record(self, input_ids, **kwargs):
        self.calls.append({"input_ids": input_ids, **kwargs})
        return input_ids.float().unsqueeze(-1)


class _InputIds(_Recorder):
    def forward(self, input_ids):
        return self._record(input_ids)


class _PositionalX(_Recorder):
    def forward(self, x):
        return self._record(x)


class _KeywordOnly(_Recorder):
    def forward(self, *, input_ids):
        return self._record(input_ids)


class _WithMask(_Recorder):
    def forward(self, input_ids, attention_mask=None):
        return self._record(input_ids, attention_mask=attention_mask)


class _VarKwargs(_Recorder):
    def forward(self, **kwargs):
        return self._record(kwargs.pop("input_ids"), **kwargs)


_IDS = torch.tensor([[1, 2, 3]])
_MASK = torch.tensor([[1, 1, 0]])


@pytest.mark.parametrize("model_cls", [_InputIds, _PositionalX, _KeywordOnly, _WithMask, _VarKwargs])
def test_make_forward_fn_calls_every_signature(model_cls):
    model = model_cls()
    out = mh.make_forward_fn(model)(_IDS)
    assert torch.equal(out, _IDS.float().unsqueeze(-1))
    assert len(model.calls) == 1 and model.calls[0]["input_ids"] is _IDS


@pytest.mark.parametrize("model_cls", [_WithMask, _VarKwargs])
def test_make_forward_fn_passes_mask_when_given_and_accepted(model_cls):
    model = model_cls()
    forward = mh.make_forward_fn(model)
    forward(_IDS, _MASK)
    assert model.calls[-1]["attention_mask"] is _MASK


def test_make_forward_fn_omits_mask_when_not_given():
    model = _WithMask()
    mh.make_forward_fn(model)(_IDS)
    mh.make_forward_fn(model)(_IDS, None)
    assert all(call["attention_mask"] is None for call in model.calls)


def test_make_forward_fn_var_kwargs_gets_no_mask_key_when_not_given():
    model = _VarKwargs()
    mh.make_forward_fn(model)(_IDS)
    assert "attention_mask" not in model.calls[-1]


@pytest.mark.parametrize("model_cls", [_InputIds, _PositionalX, _KeywordOnly])
def test_make_forward_fn_drops_mask_the_model_cannot_take(model_cls):
    model = model_cls()
    # Passing the mask to these would raise TypeError; it is dropped instead.
    mh.make_forward_fn(model)(_IDS, _MASK)
    assert set(model.calls[-1]) == {"input_ids"}


def test_make_forward_fn_on_tiny_model_uses_mask(tiny_encoder):
    model, config = tiny_encoder
    model.eval()
    ids = torch.randint(1, config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]])
    forward = mh.make_forward_fn(model)
    with torch.no_grad():
        torch.testing.assert_close(forward(ids), model(ids), atol=0, rtol=0)
        torch.testing.assert_close(forward(ids, mask), model(ids, attention_mask=mask), atol=0, rtol=0)


# -- detect_vocab_size ------------------------------------------------------------------


class _PosFirstLM(nn.Module):
    """A toy LM whose *first* embedding is a position embedding of a different size."""

    def __init__(self, vocab_size: int = 50, max_len: int = 16, width: int = 8) -> None:
        super().__init__()
        self.pos = nn.Embedding(max_len, width)
        self.tok = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, input_ids):
        T = input_ids.shape[1]
        return self.head(self.tok(input_ids) + self.pos(torch.arange(T)))


def test_detect_vocab_size_prefers_config():
    class _Exploding(nn.Module):
        def forward(self, input_ids):
            raise AssertionError("the model must not be called when the config has vocab_size")

    assert mh.detect_vocab_size(_Exploding(), {"vocab_size": 123}) == 123
    assert mh.detect_vocab_size(_Exploding(), SimpleNamespace(n_vocab=77)) == 77


def test_detect_vocab_size_uses_output_width_not_first_embedding():
    model = _PosFirstLM(vocab_size=50, max_len=16)
    assert next(m for m in model.modules() if isinstance(m, nn.Embedding)).num_embeddings == 16
    assert mh.detect_vocab_size(model, {}) == 50
    assert mh.detect_vocab_size(model, None) == 50
    assert mh.detect_vocab_size(model, SimpleNamespace(vocab_size=None)) == 50


def test_detect_vocab_size_restores_training_mode():
    model = _PosFirstLM()
    model.train()
    mh.detect_vocab_size(model, {})
    assert model.training
    model.eval()
    mh.detect_vocab_size(model, {})
    assert not model.training


def test_detect_vocab_size_rejects_non_sequence_output():
    class _Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)

        def forward(self, input_ids):
            return self.emb(input_ids).mean(1)  # (B, C)

    with pytest.raises(ValueError, match="vocab_size"):
        mh.detect_vocab_size(_Pooled(), {})


def test_detect_vocab_size_on_tiny_gpt(tiny_gpt):
    model, config = tiny_gpt
    assert mh.detect_vocab_size(model, {}) == config.vocab_size


# -- count_parameters --------------------------------------------------------------------


def test_count_parameters_counts_tied_weights_once(tiny_gpt):
    model, config = tiny_gpt
    # state_dict lists the tied tensor under both tok_emb.weight and lm_head.weight.
    with_duplicates = sum(t.numel() for t in model.state_dict().values())
    counts = mh.count_parameters(model)
    assert counts["total"] == with_duplicates - config.vocab_size * config.d_model
    assert counts["trainable"] == counts["total"]


def test_count_parameters_separates_trainable():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))  # 16 + 10 parameters
    for p in model[0].parameters():
        p.requires_grad_(False)
    assert mh.count_parameters(model) == {"total": 26, "trainable": 10}


# -- devices -------------------------------------------------------------------------------


def test_model_device_of_parameter_free_model_is_cpu():
    assert mh.model_device(nn.ReLU()) == torch.device("cpu")


# -- argument checks and verdicts -------------------------------------------------------------


def test_model_helpers_re_exports_the_one_set_of_checks():
    from utils import checks

    assert mh.check_positive_int is checks.check_positive_int
    assert mh.check_positive_number is checks.check_positive_number


@pytest.mark.parametrize(
    ("failed", "warned", "status"),
    [(True, True, "fail"), (True, False, "fail"), (False, True, "warn"), (False, False, "pass")],
)
def test_result_status_precedence(failed, warned, status):
    assert mh.result_status(failed, warned) == status


# -- model outputs and inputs -------------------------------------------------------------------


def test_model_output_tensor_tells_logits_from_hidden_states():
    logits, hidden = torch.zeros(1, 2, 5), torch.ones(1, 2, 3)
    assert mh.model_output_tensor((logits, None)) == (logits, "logits")
    tensor, kind = mh.model_output_tensor(SimpleNamespace(last_hidden_state=hidden))
    assert tensor is hidden and kind == "hidden"
    tensor, kind = mh.model_output_tensor({"last_hidden_state": hidden})
    assert tensor is hidden and kind == "hidden"
    with pytest.raises(TypeError, match="last_hidden_state"):
        mh.model_output_tensor({"pooled": hidden})


def test_output_tensors_keeps_floating_point_tensors_only():
    logits, pooled, ids = torch.zeros(1, 2, 5), torch.ones(1, 3), torch.zeros(1, 2, dtype=torch.long)
    assert mh.output_tensors(logits) == [logits]
    assert mh.output_tensors((logits, ids, None, pooled)) == [logits, pooled]
    assert mh.output_tensors({"logits": logits, "ids": ids}) == [logits]
    assert mh.output_tensors(SimpleNamespace(logits=logits)) == [logits]


def test_random_input_ids_are_reproducible_and_in_range():
    first = mh.random_input_ids(2, 5, 7, torch.device("cpu"), seed=3)
    assert first.shape == (2, 5) and first.dtype == torch.long
    assert 0 <= int(first.min()) and int(first.max()) < 7
    assert torch.equal(first, mh.random_input_ids(2, 5, 7, torch.device("cpu"), seed=3))
    assert not torch.equal(first, mh.random_input_ids(2, 5, 7, torch.device("cpu"), seed=4))


# -- context managers ----------------------------------------------------------------------------


@pytest.mark.parametrize("start_training", [True, False])
def test_model_mode_restores_the_mode_even_after_an_error(start_training):
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    model.train(start_training)
    with pytest.raises(RuntimeError), mh.model_mode(model, not start_training) as inside:
        assert inside is model and model[1].training is not start_training
        raise RuntimeError("boom")
    assert model.training is start_training and model[1].training is start_training


def test_preserved_grads_starts_clean_and_gives_the_grads_back():
    model = nn.Linear(2, 1)
    sentinel = torch.full_like(model.weight, 7.0)
    model.weight.grad = sentinel
    with mh.preserved_grads(model):
        assert model.weight.grad is None and model.bias.grad is None
        model(torch.ones(1, 2)).sum().backward()
        assert model.bias.grad is not None
    assert model.weight.grad is sentinel and model.bias.grad is None


def test_replaced_output_applies_only_inside_the_block():
    model = nn.Sequential(nn.Identity(), nn.Linear(2, 2))
    x = torch.ones(1, 2)
    before = model(x)
    with mh.replaced_output(model[0], lambda module, args, output: torch.zeros_like(output)):
        torch.testing.assert_close(model(x), model[1].bias.detach().unsqueeze(0), rtol=0, atol=0)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


# -- find_token_embedding ------------------------------------------------------------------------


def test_token_embedding_is_not_the_first_embedding():
    model, _ = build_model("torch_encoder")
    assert mh.find_token_embedding(model, 64) is model.tok
    # vocab_size == max_seq_len: both match on size, the name decides.
    gpt, _ = tiny_gpt(**{**TINY, "vocab_size": 32})
    assert mh.find_token_embedding(gpt, 32) is gpt.tok_emb
    hf, _ = build_model("hf_gpt2")
    assert mh.find_token_embedding(hf, 256) is hf.get_input_embeddings()
    with pytest.raises(ValueError, match="num_embeddings == vocab_size"):
        mh.find_token_embedding(model, 1000)


# -- probe_model ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "output_kind", "output_dim"), [("gpt", "logits", 256), ("hf_bert", "hidden", 32)])
def test_probe_model_learns_the_output_kind_and_leaves_the_mode_alone(kind, output_kind, output_dim):
    model, config = build_model(kind)
    model.train()
    probe = mh.probe_model(model, config, "my_check")
    assert (probe.output_kind, probe.output_dim) == (output_kind, output_dim)
    assert probe.device == torch.device("cpu") and probe.vocab_size == mh.get_config_value(config, "vocab_size")
    assert model.training


def test_probe_seq_len_defaults_to_the_cap_within_max_seq_len(tiny_gpt):
    model, config = tiny_gpt
    probe = mh.probe_model(model, config, "my_check")
    assert probe.seq_len(None, 16) == 16
    assert probe.seq_len(None, 1000) == config.max_seq_len
    assert probe.seq_len(5, 16) == 5
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        probe.seq_len(0, 16)


def test_probe_model_names_the_purpose_in_its_errors(tiny_gpt):
    model, config = tiny_gpt
    with pytest.raises(ValueError, match="my_check"):
        mh.probe_model(model, {"max_seq_len": 32}, "my_check")
    with pytest.raises(ValueError, match="max_seq_len"):
        mh.probe_model(model, {"vocab_size": 256}, "my_check", required=("vocab_size", "max_seq_len"))
    with pytest.raises(ValueError, match="my_check: for input_ids of shape"):
        mh.probe_model(nn.EmbeddingBag(8, 4), {"vocab_size": 8}, "my_check")  # pools to (batch, dim)


@pytest.mark.parametrize("field", ["vocab_size", "max_seq_len"])
@pytest.mark.parametrize("bad", [0, -1, "256", True, 2.5, float("nan")], ids=repr)
def test_bad_config_sizes_are_named_before_the_model_is_called(tiny_gpt, field, bad):
    model, config = tiny_gpt
    values = {"vocab_size": 256, "max_seq_len": 32, field: bad}
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=rf"config\.{field} must be a positive integer"):
        mh.probe_model(model, values, "a check")
    with pytest.raises(ValueError, match=rf"config\.{field} must be a positive integer"):
        tier3.test_fine_tuning(model, values, max_steps=1, progress=False)
    assert calls == []
