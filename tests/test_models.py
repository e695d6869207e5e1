"""Tests for utils.models: the built-in tiny GPT and encoder."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from utils import models
from utils.models import ModelConfig

# Attention/softmax in float32 on tiny models: differences between equivalent
# computations are rounding noise, far below these bounds.
ATOL = 1e-5
RTOL = 1e-4


def _ids(config: ModelConfig, batch: int = 2, seq_len: int = 8, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Start at 1 so pad_token_id=0 never appears by accident.
    return torch.randint(1, config.vocab_size, (batch, seq_len), generator=generator)


# -- construction and config ---------------------------------------------------


@pytest.mark.parametrize("factory", [models.tiny_gpt, models.tiny_encoder])
def test_factory_returns_model_and_config_with_size_fields(factory):
    model, config = factory()
    assert isinstance(model, torch.nn.Module)
    assert isinstance(config, ModelConfig)
    for name in ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads"):
        assert isinstance(getattr(config, name), int) and getattr(config, name) > 0, name
    assert model.config is config


def test_gpt_is_causal_and_encoder_is_not_in_config():
    _, gpt_config = models.tiny_gpt()
    _, enc_config = models.tiny_encoder()
    assert gpt_config.causal is True and gpt_config.model_type == "gpt"
    assert enc_config.causal is False and enc_config.model_type == "bert"


def test_overrides_change_sizes():
    model, config = models.tiny_gpt(vocab_size=50, max_seq_len=16, d_model=24, n_layers=3, n_heads=3)
    assert (config.vocab_size, config.max_seq_len, config.d_model, config.n_layers, config.n_heads) == (
        50,
        16,
        24,
        3,
        3,
    )
    assert len(model.blocks) == 3
    assert model.tok_emb.weight.shape == (50, 24)
    assert model.pos_emb.weight.shape == (16, 24)


def test_d_ff_override_sets_mlp_width():
    model, config = models.tiny_gpt(d_model=32, n_heads=2, n_layers=1, d_ff=48)
    assert config.ffn_dim == 48
    assert model.blocks[0].mlp[0].out_features == 48


@pytest.mark.parametrize("factory", [models.tiny_gpt, models.tiny_encoder])
def test_unknown_override_raises_type_error_naming_it(factory):
    with pytest.raises(TypeError, match="hidden_dim"):
        factory(hidden_dim=64)


@pytest.mark.parametrize("fixed", ["causal", "model_type"])
def test_fixed_fields_cannot_be_overridden(fixed):
    # tiny_gpt is causal by definition; letting callers flip it would make the name lie.
    with pytest.raises(TypeError, match=fixed):
        models.tiny_gpt(**{fixed: False if fixed == "causal" else "bert"})


def test_d_model_not_divisible_by_n_heads_raises_value_error():
    with pytest.raises(ValueError, match=r"d_model \(30\).*n_heads \(4\)"):
        models.tiny_gpt(d_model=30, n_heads=4)


@pytest.mark.parametrize("field", ["vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads"])
def test_non_positive_sizes_raise_value_error_naming_field(field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: 0})


NAN, INF = float("nan"), float("inf")


def _bad(field: str, value, message: str):
    return pytest.param(field, value, message, id=f"{field}={value!r}")


# Found by building models as a new user might: (field, bad value, message).
BAD_FIELDS = [
    *(
        _bad(field, value, f"{field} must be a positive integer")
        for field in ("vocab_size", "d_model")
        for value in (True, "32", 32.0, NAN, -2, None)
    ),
    *(_bad("max_seq_len", value, "max_seq_len must be a positive integer") for value in (True, "128", INF)),
    *(_bad("d_ff", value, "d_ff must be a positive integer or None") for value in (True, "64", 0, 2.5, NAN)),
    *(
        _bad("dropout", value, r"dropout must be a number in \[0.0, 1.0\)")
        for value in (True, "0.1", NAN, INF, -0.1, 1.0, None)
    ),
    *(
        _bad("pad_token_id", value, "pad_token_id must be a non-negative integer")
        for value in (True, "0", -1, 1.5, None)
    ),
    _bad("pad_token_id", 256, r"pad_token_id \(256\) must be below vocab_size \(256\)"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_FIELDS)
@pytest.mark.parametrize("factory", [models.tiny_gpt, models.tiny_encoder, ModelConfig], ids=lambda f: f.__name__)
def test_bad_field_values_name_the_field(factory, field, value, message):
    with pytest.raises(ValueError, match=message):
        factory(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("causal", "yes"), ("causal", 1), ("causal", None), ("model_type", ""), ("model_type", 5), ("model_type", None)],
)
def test_bad_fixed_fields_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


def test_config_is_frozen():
    config = ModelConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.d_model = 7  # type: ignore[misc]


# -- forward -------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_gpt", "tiny_encoder"])
def test_output_shape_is_batch_seq_vocab(fixture, request):
    model, config = request.getfixturevalue(fixture)
    logits = model(_ids(config, batch=3, seq_len=5))
    assert logits.shape == (3, 5, config.vocab_size)
    assert logits.dtype == torch.float32


def test_gpt_is_causal(tiny_gpt):
    model, config = tiny_gpt
    model.eval()
    ids = _ids(config)
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] % (config.vocab_size - 1)) + 1  # a different, non-pad token
    assert not torch.equal(ids, changed)
    with torch.no_grad():
        before, after = model(ids), model(changed)
    torch.testing.assert_close(after[:, :-1], before[:, :-1], atol=ATOL, rtol=RTOL)
    assert not torch.allclose(after[:, -1], before[:, -1], atol=1e-4)


def test_encoder_is_bidirectional(tiny_encoder):
    model, config = tiny_encoder
    model.eval()
    ids = _ids(config)
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] % (config.vocab_size - 1)) + 1
    with torch.no_grad():
        before, after = model(ids), model(changed)
    # The first position sees the last token, so its logits must move.
    assert not torch.allclose(after[:, 0], before[:, 0], atol=1e-6)


@pytest.mark.parametrize("output_attentions", [False, True], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("fixture", ["tiny_gpt", "tiny_encoder"])
def test_padded_tail_does_not_change_real_positions(fixture, output_attentions, request):
    model, config = request.getfixturevalue(fixture)
    model.eval()
    ids = _ids(config, batch=2, seq_len=6)
    pad = torch.full((2, 3), config.pad_token_id)
    # Junk in the padded slots too: the mask, not the pad id, must hide them.
    pad[1] = torch.tensor([5, 9, 11])
    padded = torch.cat([ids, pad], dim=1)
    mask = torch.cat([torch.ones(2, 6, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)], dim=1)

    def logits(*args, **kwargs):
        out = model(*args, output_attentions=output_attentions, **kwargs)
        return out["logits"] if output_attentions else out

    with torch.no_grad():
        short = logits(ids)
        long = logits(padded, attention_mask=mask)
    assert torch.isfinite(long).all()
    torch.testing.assert_close(long[:, :6], short, atol=ATOL, rtol=RTOL)


def test_encoder_mask_matters(tiny_encoder):
    # Guard for the test above: without the mask the padded tail does leak in.
    model, config = tiny_encoder
    model.eval()
    ids = _ids(config, batch=1, seq_len=6)
    padded = torch.cat([ids, torch.tensor([[5, 9, 11]])], dim=1)
    with torch.no_grad():
        short, long = model(ids), model(padded)
    assert not torch.allclose(long[:, :6], short, atol=1e-6)


def test_fully_padded_row_gives_finite_outputs(tiny_encoder):
    model, config = tiny_encoder
    model.eval()
    ids = _ids(config, batch=2, seq_len=4)
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])
    with torch.no_grad():
        sdpa = model(ids, attention_mask=mask)
        explicit = model(ids, attention_mask=mask, output_attentions=True)["logits"]
    assert torch.isfinite(sdpa).all() and torch.isfinite(explicit).all()


@pytest.mark.parametrize("fixture", ["tiny_gpt", "tiny_encoder"])
def test_attention_weights_are_per_layer_and_rows_sum_to_one(fixture, request):
    model, config = request.getfixturevalue(fixture)
    model.eval()
    T = 7
    with torch.no_grad():
        out = model(_ids(config, batch=2, seq_len=T), output_attentions=True)
    assert set(out) == {"logits", "attentions"}
    attentions = out["attentions"]
    assert len(attentions) == config.n_layers
    for weights in attentions:
        assert weights.shape == (2, config.n_heads, T, T)
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, config.n_heads, T), atol=1e-5, rtol=0)


def test_gpt_attention_is_lower_triangular(tiny_gpt):
    model, config = tiny_gpt
    model.eval()
    T = 7
    with torch.no_grad():
        attentions = model(_ids(config, seq_len=T), output_attentions=True)["attentions"]
    upper = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    for weights in attentions:
        assert (weights[..., upper] == 0).all()


def test_encoder_attention_is_not_triangular(tiny_encoder):
    model, config = tiny_encoder
    model.eval()
    T = 7
    with torch.no_grad():
        attentions = model(_ids(config, seq_len=T), output_attentions=True)["attentions"]
    upper = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    assert (attentions[0][..., upper] > 0).all()


def test_encoder_attention_ignores_padded_keys(tiny_encoder):
    model, config = tiny_encoder
    model.eval()
    ids = _ids(config, batch=1, seq_len=6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        attentions = model(ids, attention_mask=mask, output_attentions=True)["attentions"]
    for weights in attentions:
        # Real queries (rows 0-3) put no weight on padded keys (columns 4-5).
        assert (weights[0, :, :4, 4:] == 0).all()


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("fixture", ["tiny_gpt", "tiny_encoder"])
def test_explicit_attention_path_matches_sdpa(fixture, with_mask, request):
    model, config = request.getfixturevalue(fixture)
    model.eval()
    ids = _ids(config, batch=2, seq_len=9)
    kwargs = {}
    if with_mask:
        kwargs["attention_mask"] = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])
    with torch.no_grad():
        sdpa = model(ids, **kwargs)
        explicit = model(ids, output_attentions=True, **kwargs)["logits"]
    torch.testing.assert_close(explicit, sdpa, atol=ATOL, rtol=RTOL)


def test_sequence_at_max_len_runs(tiny_gpt):
    model, config = tiny_gpt
    logits = model(_ids(config, batch=1, seq_len=config.max_seq_len))
    assert logits.shape == (1, config.max_seq_len, config.vocab_size)


@pytest.mark.parametrize("fixture", ["tiny_gpt", "tiny_encoder"])
def test_too_long_input_raises_value_error_naming_max_seq_len(fixture, request):
    model, config = request.getfixturevalue(fixture)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(_ids(config, batch=1, seq_len=config.max_seq_len + 1))


@pytest.mark.parametrize("fixture", ["tiny_gpt", "tiny_encoder"])
def test_lm_head_is_tied_to_token_embedding(fixture, request):
    model, _ = request.getfixturevalue(fixture)
    assert model.lm_head.weight is model.tok_emb.weight
    with torch.no_grad():
        model.tok_emb.weight[3, 0] += 1.0
    assert model.lm_head.weight[3, 0] == model.tok_emb.weight[3, 0]


def test_same_seed_gives_same_weights_and_outputs():
    torch.manual_seed(0)
    a, config = models.tiny_gpt(d_model=32, n_layers=2, n_heads=2, max_seq_len=32)
    torch.manual_seed(0)
    b, _ = models.tiny_gpt(d_model=32, n_layers=2, n_heads=2, max_seq_len=32)
    ids = _ids(config)
    torch.testing.assert_close(a(ids), b(ids), atol=0, rtol=0)
