"""Tests for utils.model_family: naming a model's family from its config, structure and class names."""

from __future__ import annotations

import pytest
import torch.nn as nn

from utils import wandb_helpers
from utils.model_family import detect_model_type


class ToySeq2Seq(nn.Module):
    """An encoder-decoder built on nn.Transformer; its class name says nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.core = nn.Transformer(
            d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=16, batch_first=True
        )


class ToyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
        self.stack = nn.TransformerEncoder(layer, num_layers=1)


class HandWrittenSeq2Seq(nn.Module):
    """Separate encoder and decoder stacks whose class names contain 'Decoder'."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True), num_layers=1
        )


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_detects_builtin_models(tiny_gpt, tiny_encoder):
    assert detect_model_type(*tiny_gpt) == "gpt"
    assert detect_model_type(*tiny_encoder) == "bert"
    # Without an explicit config, model.config is used.
    assert detect_model_type(tiny_encoder[0]) == "bert"


@pytest.mark.parametrize(
    ("model_factory", "expected"),
    [(ToySeq2Seq, "t5"), (HandWrittenSeq2Seq, "t5"), (ToyEncoder, "bert"), (_mlp, "custom")],
)
def test_detects_from_module_structure(model_factory, expected):
    assert detect_model_type(model_factory()) == expected


def test_encoder_decoder_class_name_is_never_gpt():
    class MyEncoderDecoder(nn.Module):
        pass

    class TextDecoder(nn.Module):
        pass

    assert detect_model_type(MyEncoderDecoder()) == "t5"
    assert detect_model_type(TextDecoder()) == "gpt"


def test_bert_output_layer_named_decoder_is_not_a_decoder_stack():
    # BERT's MLM head has a Linear called 'decoder'; that is not an encoder-decoder.
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = nn.Linear(8, 16)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = ToyEncoder()
            self.head = Head()

    assert detect_model_type(Net()) == "bert"


def test_detects_hugging_face_configs():
    transformers = pytest.importorskip("transformers")
    tiny = dict(vocab_size=32, num_hidden_layers=1, num_attention_heads=2, hidden_size=8)
    stub = nn.Identity()
    assert detect_model_type(stub, transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=32)) == "gpt"
    assert detect_model_type(stub, transformers.BertConfig(**tiny, intermediate_size=16)) == "bert"
    assert detect_model_type(stub, transformers.T5Config(vocab_size=32, d_model=8, num_layers=1)) == "t5"
    assert detect_model_type(stub, transformers.BartConfig(vocab_size=32, d_model=8)) == "t5"


def test_config_dicts_and_unknown_types():
    stub = nn.Identity()
    assert detect_model_type(stub, {"model_type": "llama"}) == "gpt"
    assert detect_model_type(stub, {"model_type": "deberta-v2"}) == "bert"
    assert detect_model_type(stub, {"model_type": "gpt", "is_encoder_decoder": True}) == "t5"
    assert detect_model_type(stub, {"causal": True}) == "gpt"
    assert detect_model_type(HandWrittenSeq2Seq(), {"causal": True}) == "t5"  # structure beats the flag
    assert detect_model_type(stub, {"model_type": "something-new"}) == "custom"


def test_detect_model_type_rejects_non_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        detect_model_type(("not", "a model"))


def test_wandb_helpers_re_exports_detect_model_type():
    # Old imports (`from utils.wandb_helpers import detect_model_type`) keep working.
    assert wandb_helpers.detect_model_type is detect_model_type
