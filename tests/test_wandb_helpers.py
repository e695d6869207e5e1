"""Tests for utils.wandb_helpers: real wandb, always offline (conftest sets WANDB_MODE=offline)."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from utils import wandb_helpers
from utils.wandb_helpers import (
    build_wandb_config,
    detect_model_type,
    finish_wandb_run,
    has_wandb_api_key,
    initialize_wandb_run,
    print_wandb_summary,
)


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


@pytest.fixture
def no_wandb_key(monkeypatch, tmp_path):
    """No API key anywhere, even if the machine running the tests has a ~/.netrc."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-such-netrc"))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


# --------------------------------------------------------------------------- import


def test_module_does_not_import_wandb_at_top_level():
    # Read the source: this test process may already have imported wandb elsewhere.
    tree = ast.parse(Path(wandb_helpers.__file__).read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = {alias.name for node in top_level for alias in node.names}
    names |= {node.module for node in top_level if isinstance(node, ast.ImportFrom)}
    assert "torch" in names  # the scan does see the real imports
    assert not any(name and name.split(".")[0] == "wandb" for name in names)


# --------------------------------------------------------------------------- detect_model_type


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


# --------------------------------------------------------------------------- build_wandb_config


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_build_wandb_config_records_the_real_precision(tiny_gpt, precision):
    model, config = tiny_gpt
    wandb_config = build_wandb_config(model, config, precision=precision, learning_rate=3e-4, batch_size=4)
    assert wandb_config["mixed_precision"] == precision
    assert wandb_config["amp_enabled"] is (precision != "fp32")


def test_build_wandb_config_is_flat_and_json_friendly(tiny_gpt):
    model, config = tiny_gpt
    wandb_config = build_wandb_config(
        model,
        config,
        precision="bf16",
        learning_rate=3e-4,
        batch_size=4,
        dtype=torch.bfloat16,
        grad_clip=torch.tensor(1.0),
        optimizer={"name": "adamw", "betas": (0.9, 0.95)},
    )
    assert json.loads(json.dumps(wandb_config)) == wandb_config
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in wandb_config.values())
    assert wandb_config["model_type"] == "gpt"
    assert wandb_config["params_total"] == sum(p.numel() for p in model.parameters())
    assert (wandb_config["d_model"], wandb_config["n_layers"], wandb_config["n_heads"]) == (32, 2, 2)
    assert (wandb_config["vocab_size"], wandb_config["max_seq_len"]) == (256, 32)
    assert wandb_config["learning_rate"] == 3e-4 and wandb_config["batch_size"] == 4
    assert wandb_config["dtype"] == "torch.bfloat16"
    assert wandb_config["grad_clip"] == pytest.approx(1.0)
    assert wandb_config["optimizer.betas"] == "(0.9, 0.95)"
    assert wandb_config["device"] == "cpu" and wandb_config["torch_version"] == torch.__version__


def test_build_wandb_config_counts_only_trainable(tiny_encoder):
    model, config = tiny_encoder
    model.tok_emb.weight.requires_grad_(False)
    wandb_config = build_wandb_config(model, config, precision="fp32")
    assert wandb_config["params_trainable"] == wandb_config["params_total"] - model.tok_emb.weight.numel()


def test_build_wandb_config_rejects_requested_precision(tiny_gpt):
    with pytest.raises(ValueError, match="precision must be one of .*PrecisionPlan.name"):
        build_wandb_config(*tiny_gpt, precision="auto")


def test_build_wandb_config_rejects_clashing_hyperparameter(tiny_gpt):
    with pytest.raises(ValueError, match="mixed_precision"):
        build_wandb_config(*tiny_gpt, precision="fp32", mixed_precision="bf16")


# --------------------------------------------------------------------------- initialize_wandb_run


def test_initialize_rejects_bad_mode(wandb_dir):
    with pytest.raises(ValueError, match="mode must be None or one of"):
        initialize_wandb_run(mode="offlin")
    assert not (wandb_dir / "wandb").exists()  # validated before wandb.init


def test_initialize_rejects_bad_wandb_mode_env(monkeypatch, wandb_dir):
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="WANDB_MODE='sometimes'"):
        initialize_wandb_run()


def test_has_wandb_api_key_reads_env_and_netrc(no_wandb_key, monkeypatch, tmp_path):
    assert has_wandb_api_key() is False
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert has_wandb_api_key() is True
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    assert has_wandb_api_key() is False  # the entry is for another host


def test_offline_run_is_written_to_disk(wandb_dir, tiny_gpt, capsys):
    model, config = tiny_gpt
    wandb_config = build_wandb_config(model, config, precision="fp32", learning_rate=1e-3)
    run = initialize_wandb_run(name="offline-test", config=wandb_config, tags=["test"], mode="offline")
    try:
        assert run.settings.mode == "offline"
        assert run.config["mixed_precision"] == "fp32"
        for loss in [2.0, 1.5, 1.25]:
            run.log({"train/loss": loss})
        info = print_wandb_summary()  # the active run
        # A row with an explicit step waits for the next step; finish_wandb_run must commit it.
        run.log({"val/loss": 1.1}, step=run.step)
    finally:
        finished = finish_wandb_run(run)

    assert info["id"] == run.id and info["mode"] == "offline"
    assert info["summary"] == {"train/loss": 1.25}
    assert finished["summary"] == {"train/loss": 1.25, "val/loss": 1.1}
    assert "train/loss: 1.25" in capsys.readouterr().out
    run_dirs = list((wandb_dir / "wandb").glob(f"offline-run-*-{run.id}"))
    assert len(run_dirs) == 1 and str(run_dirs[0]) == info["dir"]
    assert list(run_dirs[0].glob("*.wandb")), "the offline run has no .wandb log file"
    with pytest.raises(RuntimeError, match="already finished"):
        finish_wandb_run(run)


def test_disabled_mode_writes_nothing(wandb_dir):
    run = initialize_wandb_run(mode="disabled")
    try:
        assert run.settings.mode == "disabled" and run.disabled
        run.log({"train/loss": 1.0})
    finally:
        finish_wandb_run(run)
    assert not (wandb_dir / "wandb").exists()


def test_no_api_key_falls_back_to_offline_with_sync_hint(no_wandb_key, monkeypatch, wandb_dir):
    monkeypatch.delenv("WANDB_MODE")  # would otherwise ask for offline itself
    with pytest.warns(UserWarning, match=r"no API key found.*wandb sync .*offline-run-") as record:
        run = initialize_wandb_run(name="no-key")
    try:
        assert run.settings.mode == "offline" and run.offline
        assert str(wandb_dir) in str(record[0].message)
    finally:
        finish_wandb_run(run)


def test_summary_without_a_run_is_a_clear_error():
    wandb = pytest.importorskip("wandb")
    assert wandb.run is None
    with pytest.raises(RuntimeError, match="no active W&B run"):
        print_wandb_summary()


def test_missing_wandb_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ImportError, match="pip install wandb"):
        wandb_helpers._import_wandb()


def test_start_run_unless_active_starts_one_and_then_leaves_the_active_run_alone(wandb_dir, tiny_gpt):
    wandb = pytest.importorskip("wandb")
    model, config = tiny_gpt
    assert wandb.run is None
    run = wandb_helpers.start_run_unless_active(model, config, precision="bf16", mode_note="x")
    try:
        assert run is not None and wandb.run is run
        assert run.config["mixed_precision"] == "bf16" and run.config["mode_note"] == "x"
        assert wandb_helpers.start_run_unless_active(model, config, precision="fp32") is None  # one is active
        assert wandb.run is run
    finally:
        run.finish()
