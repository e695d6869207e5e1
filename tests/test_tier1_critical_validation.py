"""Tier 1 checks on the built-in models, nn.TransformerEncoder and tiny Hugging Face models."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from matplotlib.figure import Figure
from tiny_models import build_model

from utils import models
from utils import tier1_critical_validation as t1
from utils.diagnostics import common as diagnostics_common
from utils.model_helpers import count_parameters, get_config_value
from utils.records import environment_record

PUBLIC_CHECKS = [
    t1.test_shape_robustness,
    t1.test_gradient_flow,
    t1.test_output_stability,
    t1.test_parameter_initialization,
    t1.test_memory_footprint,
    t1.test_inference_speed,
]

ALL_KINDS = ["gpt", "encoder", "torch_encoder", "hf_gpt2", "hf_bert_mlm", "hf_bert"]


# -- every kind of model -------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_healthy_models_pass_shape_gradient_and_init_checks(kind):
    model, config = build_model(kind)
    shapes = t1.test_shape_robustness(model, config, batch_sizes=(1, 3), seq_lengths=(1, 5, 16), progress=False)
    assert shapes["status"] == "pass", shapes["table"]
    expected_dim = 32 if kind == "hf_bert" else get_config_value(config, "vocab_size")
    assert shapes["output_kind"] == ("hidden" if kind == "hf_bert" else "logits")
    assert shapes["table"]["output_shape"].tolist() == [(b, t, expected_dim) for b in (1, 3) for t in (1, 5, 16)]

    grads = t1.test_gradient_flow(model, config, seq_len=8)
    assert grads["status"] == "pass", grads["flagged"]
    assert grads["no_gradient"] == []
    assert len(grads["table"]) == len(list(model.parameters()))

    init = t1.test_parameter_initialization(model, config)
    assert init["flagged"].empty, init["flagged"]


@pytest.mark.parametrize("kind", ["gpt", "torch_encoder", "hf_gpt2", "hf_bert"])
def test_output_stability_is_finite_and_bf16_is_close(kind):
    model, config = build_model(kind)
    result = t1.test_output_stability(
        model, config, n_batches=3, batch_size=2, seq_len=8, amp_precisions=("bf16",), progress=False
    )
    assert result["status"] == "pass", (result["table"], result["amp"])
    assert result["table"][["nan_count", "inf_count"]].to_numpy().sum() == 0
    assert result["table"]["input"].tolist() == ["random", "repeated_token", "extreme_ids"]
    amp = result["amp"].set_index("precision").loc["bf16"]
    assert 0 < amp["max_abs_diff"] and amp["rel_max_diff"] < 0.05
    assert isinstance(result["figure"], Figure)


# -- test_shape_robustness -----------------------------------------------------


def test_shape_sweep_defaults_reach_max_seq_len(tiny_gpt):
    model, config = tiny_gpt
    result = t1.test_shape_robustness(model, config, progress=False)
    assert sorted(set(result["table"]["seq_len"])) == [1, config.max_seq_len // 2, config.max_seq_len]
    assert sorted(set(result["table"]["batch_size"])) == [1, 4, 8]


def test_shape_failure_keeps_the_real_error(tiny_gpt):
    model, config = tiny_gpt
    result = t1.test_shape_robustness(
        model, config, batch_sizes=(2,), seq_lengths=(8, config.max_seq_len + 1), progress=False
    )
    assert result["status"] == "fail"
    bad = result["table"].set_index("seq_len").loc[config.max_seq_len + 1]
    assert bad["status"] == "fail"
    assert "ValueError" in bad["error"] and "exceeds max_seq_len" in bad["error"]
    assert result["table"].set_index("seq_len").loc[8, "status"] == "pass"


def test_shape_wrong_output_shape_is_reported():
    class DropsLastToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(16, 16)

        def forward(self, input_ids):
            out = self.emb(input_ids)
            return out[:, :-1] if input_ids.shape[1] > 4 else out

    result = t1.test_shape_robustness(
        DropsLastToken(), {"vocab_size": 16, "max_seq_len": 8}, batch_sizes=(1,), seq_lengths=(4, 8), progress=False
    )
    row = result["table"].set_index("seq_len").loc[8]
    assert row["status"] == "fail" and "expected shape (1, 8, 16), got (1, 7, 16)" in row["error"]


# -- test_gradient_flow --------------------------------------------------------


def test_gradient_flow_flags_a_detached_layer(tiny_gpt):
    model, config = tiny_gpt
    # Cut the graph after block 1: everything before it (bar the tied embedding) gets no gradient.
    model.blocks[1].register_forward_hook(lambda module, args, out: (out[0].detach(), out[1]))
    result = t1.test_gradient_flow(model, config)
    assert result["status"] == "fail"
    assert "blocks.0.attn.qkv.weight" in result["no_gradient"]
    assert "pos_emb.weight" in result["no_gradient"]
    statuses = result["table"].set_index("name")["status"]
    assert statuses["blocks.0.ln_1.weight"] == "no_gradient"
    assert statuses["ln_f.weight"] == "ok"


def test_gradient_flow_flags_nan_and_leaves_grads_and_mode_alone(tiny_gpt):
    model, config = tiny_gpt
    sentinel = torch.full_like(model.ln_f.weight, 7.0)
    model.ln_f.weight.grad = sentinel.clone()
    model.eval()
    with torch.no_grad():
        model.blocks[0].mlp[0].weight[0, 0] = float("nan")
    result = t1.test_gradient_flow(model, config)
    assert result["status"] == "fail"
    assert (result["table"]["status"] == "nan").sum() > 0
    assert result["table"].set_index("name").loc["blocks.0.mlp.0.weight", "status"] == "nan"
    torch.testing.assert_close(model.ln_f.weight.grad, sentinel, rtol=0, atol=0)
    assert model.blocks[0].attn.qkv.weight.grad is None
    assert not model.training


def test_gradient_flow_thresholds_and_frozen_parameters(tiny_gpt):
    model, config = tiny_gpt
    model.ln_f.requires_grad_(False)
    result = t1.test_gradient_flow(model, config, exploding_threshold=1e-6)
    statuses = result["table"].set_index("name")["status"]
    assert statuses["ln_f.weight"] == "frozen"
    assert statuses["blocks.0.mlp.0.weight"] == "exploding"
    assert result["status"] == "fail"
    assert isinstance(result["figure"], Figure)


def test_gradient_flow_custom_loss_and_frozen_models(tiny_gpt):
    model, config = tiny_gpt
    result = t1.test_gradient_flow(model, config, loss_fn=lambda output, input_ids: output.sum() * 0.0)
    assert set(result["table"]["status"]) == {"zero"}
    assert result["status"] == "warn"
    with pytest.raises(ValueError, match="scalar tensor attached to the graph"):
        t1.test_gradient_flow(model, config, loss_fn=lambda output, input_ids: output.detach().sum())
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        t1.test_gradient_flow(model, config)


def test_gradient_flow_does_not_flag_the_bert_key_bias():
    model, config = build_model("hf_bert")
    table = t1.test_gradient_flow(model, config, seq_len=8)["table"].set_index("name")
    key_bias = table.loc["encoder.layer.0.attention.self.key.bias"]
    assert key_bias["status"] == "ok" and "key bias" in key_bias["note"]
    assert table.loc["pooler.dense.weight", "status"] == "ok"  # the pooler output is part of the loss


# -- test_parameter_initialization ---------------------------------------------


def test_initialization_layernorm_and_zero_biases_raise_no_alarm(tiny_gpt):
    model, config = tiny_gpt
    result = t1.test_parameter_initialization(model, config)
    table = result["table"].set_index("name")
    assert table.loc["ln_f.weight", "role"] == "norm_weight" and table.loc["ln_f.weight", "flag"] == ""
    assert table.loc["blocks.0.mlp.0.bias", "frac_zero"] == 1.0 and table.loc["blocks.0.mlp.0.bias", "flag"] == ""
    assert result["status"] == "pass"
    assert isinstance(result["figure"], Figure)


def test_initialization_flags_scaled_nan_and_zero_weights(tiny_gpt):
    model, config = tiny_gpt
    with torch.no_grad():
        model.blocks[0].mlp[0].weight.mul_(1e6)
        model.blocks[1].mlp[0].weight[0, 0] = float("nan")
        model.blocks[1].attn.proj.weight.zero_()
    result = t1.test_parameter_initialization(model, config)
    flagged = result["flagged"].set_index("name")
    assert "huge" in flagged.loc["blocks.0.mlp.0.weight", "flag"]
    assert "NaN" in flagged.loc["blocks.1.mlp.0.weight", "flag"]
    assert flagged.loc["blocks.1.attn.proj.weight", "severity"] == "warn"
    assert len(flagged) == 3
    assert result["status"] == "fail"


def test_initialization_flags_a_too_wide_init():
    layer = nn.Linear(256, 256)
    nn.init.normal_(layer.weight, std=3.0)
    flagged = t1.test_parameter_initialization(nn.Sequential(layer))["flagged"]
    assert flagged["name"].tolist() == ["0.weight"] and "large" in flagged["flag"].iloc[0]


# -- test_memory_footprint -----------------------------------------------------


def test_memory_footprint_estimate_on_cpu(tiny_gpt):
    model, config = tiny_gpt
    result = t1.test_memory_footprint(model, config, batch_sizes=(1, 4), seq_len=16, progress=False)
    table = result["table"]
    assert set(table["method"]) == {"estimate"}
    assert set(table["mode"]) == {"forward", "forward_backward"}
    expected_params_mb = count_parameters(model)["total"] * 4 / 2**20
    torch.testing.assert_close(result["static"]["params_mb"], expected_params_mb, rtol=1e-9, atol=0)
    torch.testing.assert_close(result["static"]["optimizer_mb"], 2 * expected_params_mb, rtol=1e-9, atol=0)
    train = table[table["mode"] == "forward_backward"].set_index("batch_size")["activation_mb"]
    forward = table[table["mode"] == "forward"].set_index("batch_size")["activation_mb"]
    assert train[4] > train[1] > 0
    assert (train > forward).all()
    assert all(p.grad is None for p in model.parameters())


def test_memory_footprint_rejects_unknown_optimizer(tiny_gpt):
    model, config = tiny_gpt
    with pytest.raises(ValueError, match=r"optimizer must be one of \(.*'adamw'.*\), got 'lion'"):
        t1.test_memory_footprint(model, config, optimizer="lion")


@pytest.mark.requires_cuda
def test_memory_footprint_uses_the_cuda_allocator(tiny_gpt):
    model, config = tiny_gpt
    result = t1.test_memory_footprint(model.cuda(), config, batch_sizes=(1, 8), seq_len=32, progress=False)
    assert set(result["table"]["method"]) == {"cuda_allocator"}
    train = result["table"][result["table"]["mode"] == "forward_backward"].set_index("batch_size")["activation_mb"]
    assert train[8] > train[1]


# -- test_inference_speed ------------------------------------------------------


def test_inference_speed_reports_percentiles_per_precision(tiny_gpt):
    model, config = tiny_gpt
    result = t1.test_inference_speed(
        model, config, batch_size=2, seq_len=8, n_warmup=1, n_iters=4, precisions=("fp32", "bf16"), progress=False
    )
    table = result["table"].set_index("precision")
    assert list(table.index) == ["fp32", "bf16"]
    assert (table["error"] == "").all()
    assert (table["p99_ms"] >= table["median_ms"]).all() and (table["tokens_per_s"] > 0).all()
    assert len(result["latencies_ms"]["fp32"]) == 4
    assert result["settings"]["device"] == "cpu"
    assert set(result["settings"]) == set(environment_record("cpu"))  # the one environment record
    assert isinstance(result["figure"], Figure)


def test_duplicate_precisions_are_timed_once(tiny_gpt):
    model, config = tiny_gpt
    result = t1.test_inference_speed(
        model, config, batch_size=1, seq_len=4, n_warmup=0, n_iters=1, precisions=["fp32", "fp32"], progress=False
    )
    assert result["table"]["precision"].tolist() == ["fp32"]


@pytest.mark.requires_cuda
def test_inference_speed_on_cuda(tiny_gpt):
    model, config = tiny_gpt
    result = t1.test_inference_speed(model.cuda(), config, n_iters=5, progress=False)
    assert {"fp32", "fp16"} <= set(result["table"]["precision"])


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize("check", PUBLIC_CHECKS, ids=lambda f: f.__name__)
def test_a_non_module_is_rejected(check, tiny_gpt):
    _, config = tiny_gpt
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        check(models.tiny_gpt, config)


@pytest.mark.parametrize(
    "check", [c for c in PUBLIC_CHECKS if c is not t1.test_parameter_initialization], ids=lambda f: f.__name__
)
def test_a_config_without_vocab_size_is_rejected(check, tiny_gpt):
    model, _ = tiny_gpt
    with pytest.raises(ValueError, match="vocab_size"):
        check(model, {"max_seq_len": 32})


def test_shape_sweep_needs_max_seq_len_only_without_seq_lengths(tiny_gpt):
    model, _ = tiny_gpt
    with pytest.raises(ValueError, match="max_seq_len"):
        t1.test_shape_robustness(model, {"vocab_size": 256})
    assert t1.test_shape_robustness(model, {"vocab_size": 256}, seq_lengths=(4,), progress=False)["status"] == "pass"


def test_an_unusable_output_is_a_clear_type_error():
    class ReturnsText(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(8, 4)

        def forward(self, input_ids):
            return "not a tensor"

    with pytest.raises(TypeError, match="test_gradient_flow: the model's output is unusable: cannot find logits"):
        t1.test_gradient_flow(ReturnsText(), {"vocab_size": 8, "max_seq_len": 8})


def test_a_model_that_crashes_is_named_before_work_starts():
    class WantsTwoInputs(nn.Module):
        def forward(self, input_ids, token_type_ids):
            return input_ids

    with pytest.raises(RuntimeError, match="calling the model on input_ids of shape"):
        t1.test_output_stability(WantsTwoInputs(), {"vocab_size": 8})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"batch_sizes": (0, 2)}, "batch_sizes"), ({"seq_lengths": ()}, "seq_lengths")],
)
def test_bad_sweeps_name_the_argument(tiny_gpt, kwargs, message):
    model, config = tiny_gpt
    with pytest.raises(ValueError, match=message):
        t1.test_shape_robustness(model, config, **kwargs)


def test_bad_amp_precision_is_rejected(tiny_gpt):
    model, config = tiny_gpt
    with pytest.raises(ValueError, match="amp_precisions"):
        t1.test_output_stability(model, config, amp_precisions="bf16")
    with pytest.raises(ValueError, match=r"precisions\[1\] must be one of \('fp32', 'fp16', 'bf16'\), got 'fp8'"):
        t1.test_inference_speed(model, config, precisions=("fp32", "fp8"))
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        t1.test_output_stability(model, config, seq_len=0)


NAN, INF = float("nan"), float("inf")


def _bad(check, message: str, **kwargs):
    """One bad-input case: ``check(model, config, **kwargs)`` must raise a ValueError matching ``message``."""
    shown = ",".join(f"{key}={value!r}" for key, value in kwargs.items())
    return pytest.param(check, kwargs, message, id=f"{check.__name__.removeprefix('test_')}-{shown}")


# Found by calling every check as a new user might. Each must fail before the model runs, naming the argument.
BAD_ARGUMENTS = [
    *(
        _bad(t1.test_shape_robustness, "batch_sizes", batch_sizes=v)
        for v in ("12", 4, (True, 2), (1.5,), (NAN,), ("4",), [INF])
    ),
    *(_bad(t1.test_shape_robustness, "seq_lengths", seq_lengths=v) for v in ("8", 4, (-1,))),
    *(_bad(t1.test_shape_robustness, "progress", progress=v) for v in ("yes", 1, None)),
    *(_bad(t1.test_gradient_flow, "batch_size", batch_size=v) for v in (True, "2", 0, -1, 2.5, NAN)),
    *(_bad(t1.test_gradient_flow, "seq_len", seq_len=v) for v in (True, "8", 0, 2.5)),
    *(
        _bad(t1.test_gradient_flow, "vanishing_threshold", vanishing_threshold=v)
        for v in (NAN, INF, True, "1e-8", -1.0, 0)
    ),
    *(_bad(t1.test_gradient_flow, "exploding_threshold", exploding_threshold=v) for v in (NAN, INF, 0)),
    _bad(
        t1.test_gradient_flow,
        "vanishing_threshold .* must be below exploding_threshold",
        vanishing_threshold=10.0,
        exploding_threshold=1.0,
    ),
    _bad(t1.test_gradient_flow, "loss_fn must be a function", loss_fn="mse"),
    *(_bad(t1.test_output_stability, "n_batches", n_batches=v) for v in (True, "6", 0)),
    *(_bad(t1.test_output_stability, "batch_size", batch_size=v) for v in (0, NAN)),
    _bad(t1.test_output_stability, "seq_len", seq_len=True),
    *(_bad(t1.test_output_stability, "amp_rel_tolerance", amp_rel_tolerance=v) for v in (NAN, INF, "0.05", True, 0)),
    *(
        _bad(t1.test_output_stability, "amp_precisions", amp_precisions=v)
        for v in (("fp8",), [True], 5, ("fp32",), ("auto",), {"bf16": 1}, (None,))
    ),
    _bad(t1.test_output_stability, "progress", progress="yes"),
    *(_bad(t1.test_parameter_initialization, "huge_threshold", huge_threshold=v) for v in (NAN, INF, True, "100", 0)),
    *(_bad(t1.test_parameter_initialization, "std_factor", std_factor=v) for v in (NAN, -1.0)),
    *(_bad(t1.test_memory_footprint, "batch_sizes", batch_sizes=v) for v in ("1,4", 4, (True,), (NAN,), ())),
    *(_bad(t1.test_memory_footprint, "seq_len", seq_len=v) for v in (0, "8")),
    *(
        _bad(t1.test_memory_footprint, "optimizer must be one of", optimizer=v)
        for v in (None, "ADAMW", 3, ["adamw"], "lion")
    ),
    _bad(t1.test_memory_footprint, "progress", progress=None),
    _bad(t1.test_inference_speed, "batch_size", batch_size=True),
    *(_bad(t1.test_inference_speed, "n_iters", n_iters=v) for v in ("5", 0, NAN)),
    *(_bad(t1.test_inference_speed, "n_warmup", n_warmup=v) for v in (True, "3", -1, 1.5, INF)),
    _bad(t1.test_inference_speed, "seq_len", seq_len=0),
    *(_bad(t1.test_inference_speed, "precisions", precisions=v) for v in ("fp32", 5, (True,), (), ("auto",), [None])),
    _bad(t1.test_inference_speed, "progress", progress=1),
]


@pytest.mark.parametrize(("check", "kwargs", "message"), BAD_ARGUMENTS)
def test_bad_arguments_fail_before_the_model_runs(watched_gpt, check, kwargs, message):
    model, config, calls = watched_gpt
    with pytest.raises(ValueError, match=message):
        check(model, config, **kwargs)
    assert calls == [], "the arguments must be checked before the model is called"


@pytest.mark.parametrize("batch_size", ["8", True, 0], ids=["text", "bool", "zero"])
def test_a_bad_config_batch_size_names_it(tiny_gpt, batch_size):
    model, config = tiny_gpt
    with pytest.raises(ValueError, match=r"config.batch_size \(or pass batch_sizes=...\)"):
        t1.test_shape_robustness(model, {**vars(config), "batch_size": batch_size}, progress=False)


@pytest.mark.parametrize("bad", [models.TinyTransformer, "model", None], ids=["class", "text", "none"])
@pytest.mark.parametrize("check", PUBLIC_CHECKS, ids=lambda f: f.__name__)
def test_a_class_or_anything_else_is_not_a_model(check, bad, tiny_gpt):
    _, config = tiny_gpt
    with pytest.raises(TypeError, match="pass the model instance"):
        check(bad, config)


def test_progress_in_a_log_is_a_few_plain_lines(tiny_gpt, capsys):
    model, config = tiny_gpt
    t1.test_shape_robustness(model, config, batch_sizes=(1, 2, 3), seq_lengths=(1, 2, 3, 4))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("shapes: 0/12") and lines[-1].startswith("shapes: 12/12")
    assert len(lines) <= 5  # start, three quarters, end: never a redraw per case


def test_output_stability_without_autocast(tiny_gpt):
    model, config = tiny_gpt
    result = t1.test_output_stability(
        model, config, n_batches=1, batch_size=1, seq_len=4, amp_precisions=(), progress=False
    )
    assert result["amp"].empty and result["status"] == "pass"
    assert result["summary"] == "0 NaN/Inf values"


def test_pytest_does_not_collect_library_checks():
    assert all(check.__test__ is False for check in PUBLIC_CHECKS)
    public = [name for name in dir(t1) if name.startswith("test_")]
    assert all(getattr(t1, name).__test__ is False for name in public)


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, ("fp16", "bf16")), (False, ("fp16",))])
def test_default_amp_precisions_on_a_gpu_follow_native_bf16(monkeypatch, native_bf16, expected):
    def supports_bf16(device):
        return native_bf16

    monkeypatch.setattr(diagnostics_common, "cuda_supports_bf16", supports_bf16)  # where it is looked up
    assert t1.default_amp_precisions(torch.device("cuda")) == expected
    assert t1.default_amp_precisions(torch.device("cpu")) == ("bf16",)


def test_check_positive_ints_sorts_and_drops_duplicates():
    assert t1.check_positive_ints([4, 1, 4], "batch_sizes") == (1, 4)
    assert t1.check_positive_ints(torch.tensor([2, 1]).numpy(), "batch_sizes") == (1, 2)  # numpy ints are ints
    with pytest.raises(ValueError, match="batch_sizes must be a non-empty sequence of positive ints"):
        t1.check_positive_ints(8, "batch_sizes")


def test_layer_label():
    assert t1.layer_label("blocks.3.attn.qkv.weight") == "L3"
    assert t1.layer_label("bert.encoder.layer.0.output.dense.bias") == "L0"
    assert t1.layer_label("tok_emb.weight") == "tok_emb"
