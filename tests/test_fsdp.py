"""Tests for utils.training.fsdp and utils.training.blocks: FSDP2 under a real 2-process torchrun (gloo, CPU).

The torchrun tests launch ``tests/fsdp_worker.py`` on two processes with ``strategy='fsdp'``
and compare it with the same worker's ``train`` run here in one process, unsharded, with twice
the per-rank batch: the optimizer steps see the same rows, so the loss, gradient-norm and
learning-rate histories must agree to float32 reduction-order tolerance. A run killed with
SIGKILL and resumed under FSDP must end as the uninterrupted one, its ``last.pt`` must resume in
one process too, and the gathered weights must reload with ``strict=True`` into a fresh model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import fsdp_worker
import pytest
import torch
import torch.nn as nn
from tiny_models import TorchEncoderLM

from utils import models
from utils.training import blocks, checkpoint, distributed, fsdp, parts
from utils.training.loop import train
from utils.training.precision import resolve_precision
from utils.training.settings import TrainingSettings

WORKER = Path(fsdp_worker.__file__)
REPO_ROOT = Path(__file__).resolve().parents[1]
TOL = dict(rtol=1e-5, atol=1e-5)  # float32: the ranks' reductions run in another order

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest


# --------------------------------------------------------------------------- the 2-process runs


def _torchrun(tmp_path: Path, *flags: str) -> subprocess.Popen:
    """Start the worker on 2 processes (it writes ``flags[0]``); ``_finish`` waits for it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))  # finds utils
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER)]
    return subprocess.Popen([*command, *flags], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(run: subprocess.Popen) -> tuple[int, str]:
    try:
        _, stderr = run.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        run.kill()
        raise
    return run.returncode, stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2-process runs: uninterrupted (with activation checkpointing); killed at the end of epoch 1 (at the
    same time, to save wall time); then resumed from the killed run's last.pt."""
    tmp = tmp_path_factory.mktemp("fsdp")
    straight = _torchrun(
        tmp,
        str(tmp / "straight.json"),
        f"--checkpoint-dir={tmp / 'straight'}",
        f"--gathered={tmp / 'gathered.pt'}",
        "--activation-checkpointing",
    )
    killed = _torchrun(tmp, str(tmp / "killed.json"), f"--checkpoint-dir={tmp / 'killed'}", "--kill-at-epoch=1")
    returncode, stderr = _finish(straight)
    assert returncode == 0, stderr[-4000:]
    returncode, stderr = _finish(killed)
    assert returncode != 0 and "SIGKILL" in stderr, stderr[-4000:]
    saved = checkpoint.load_checkpoint(tmp / "killed")  # epoch 0's, written before the kill
    resumed = _torchrun(
        tmp, str(tmp / "resumed.json"), f"--checkpoint-dir={tmp / 'killed'}", f"--resume-from={tmp / 'killed'}"
    )
    returncode, stderr = _finish(resumed)
    assert returncode == 0, stderr[-4000:]
    read = {name: json.loads((tmp / f"{name}.json").read_text()) for name in ("straight", "resumed")}
    return SimpleNamespace(tmp=tmp, saved=saved, **read)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The one-process reference: unsharded, 2 x the per-rank batch of 2, with its own checkpoints."""
    results, model = fsdp_worker.train(batch_size=4, checkpoint_dir=tmp_path_factory.mktemp("single"))
    return SimpleNamespace(results=results, model=model)


def _assert_same_run(actual: dict, expected: dict) -> None:
    assert actual["optimizer_steps"] == expected["optimizer_steps"] == 9  # 3 epochs x 3 steps
    for key in ("loss_history", "grad_norm_history"):
        torch.testing.assert_close(actual[key], expected[key], **TOL, msg=key)
    assert actual["lr_history"] == pytest.approx(expected["lr_history"], rel=1e-12)
    assert actual["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-5)
    train_losses = [row["train/loss"] for row in actual["epochs"]]
    assert train_losses == pytest.approx([row["train/loss"] for row in expected["epochs"]], rel=1e-5)


@pytest.mark.slow
def test_two_process_fsdp_matches_one_process(runs, single):
    straight = runs.straight
    assert (straight["world_size"], straight["strategy"]) == (2, "fsdp")
    assert straight["fsdp"]["sharded_modules"] == ["blocks.0", "blocks.1", "(root)"]
    assert straight["fsdp"]["mesh"] == "cpu x 2" and straight["fsdp"]["block_classes"] == ["Block"]
    assert straight["activation_checkpointing"] == ["blocks.0", "blocks.1"]  # recomputed: the same numbers
    assert single.results["strategy"] == "single" and single.results["fsdp"] is None
    _assert_same_run(straight, single.results)
    # Validation is split 3 and 2 rows (2 batches and 1): every row counts once, and the ranks stayed in step.
    assert straight["val_accuracy"] == pytest.approx(single.results["val_accuracy"], abs=1e-9)
    assert straight["epochs"][-1]["train/loss"] < straight["epochs"][0]["train/loss"]  # it learned
    assert straight["best_loaded"] is True  # best.pt loaded back into the shards
    assert sorted(p.name for p in (runs.tmp / "straight").iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.slow
def test_a_killed_fsdp_run_resumed_under_fsdp_ends_as_the_uninterrupted_one(runs):
    # The uninterrupted run recomputed its activations and these did not: fp32 gives the same numbers.
    assert runs.saved["epoch"] == 0 and runs.saved["optimizer_step"] == 3
    assert isinstance(next(iter(runs.saved["optimizer"]["state"])), int)  # the one-process format
    resumed, straight = runs.resumed, runs.straight
    assert resumed["optimizer_steps"] == straight["optimizer_steps"] == 9
    for key in ("loss_history", "grad_norm_history", "lr_history"):
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-6, atol=1e-6, msg=key)
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], rel=1e-6)


@pytest.mark.slow
def test_an_fsdp_last_pt_resumes_in_one_process(runs, single):
    last = runs.tmp / "killed" / "epoch0.pt"  # the killed run's epoch-0 file, before the resume overwrote it
    checkpoint.save_checkpoint(last, {k: v for k, v in runs.saved.items() if k != "format_version"})
    resumed, _ = fsdp_worker.train(batch_size=4, resume_from=last)
    assert resumed["strategy"] == "single"
    torch.testing.assert_close(resumed["loss_history"], single.results["loss_history"], **TOL)
    torch.testing.assert_close(resumed["grad_norm_history"], single.results["grad_norm_history"], **TOL)


@pytest.mark.slow
def test_the_gathered_weights_reload_strictly_with_the_same_logits(runs, single):
    gathered = torch.load(runs.tmp / "gathered.pt", weights_only=True)
    fresh, _ = fsdp_worker.build_model()
    fresh.load_state_dict(gathered["model"], strict=True)  # whole tensors, the plain model's keys
    with torch.no_grad():
        logits = fresh.eval()(fsdp_worker.PROBE)
    torch.testing.assert_close(logits, gathered["logits"], rtol=1e-6, atol=1e-6)
    for name, tensor in single.model.state_dict().items():  # and the same weights as the one-process run
        torch.testing.assert_close(gathered["model"][name], tensor, **TOL, msg=name)


# --------------------------------------------------------------------------- one process, a 1-rank mesh


def _tiny_run(**options) -> tuple[dict, nn.Module]:
    results, model = fsdp_worker.train(batch_size=4, **options)
    return results, model


def test_fsdp_in_one_process_matches_the_plain_run_and_leaves_a_sharded_model():
    plain, _ = _tiny_run()
    sharded, model = _tiny_run(strategy="fsdp", fsdp_wrap=models.Block)
    assert sharded["strategy"] == "fsdp" and sharded["fsdp"]["mesh"] == "cpu x 1"
    assert sharded["fsdp"]["sharded_modules"] == ["blocks.0", "blocks.1", "(root)"]
    torch.testing.assert_close(sharded["loss_history"], plain["loss_history"], **TOL)
    torch.testing.assert_close(sharded["grad_norm_history"], plain["grad_norm_history"], **TOL)
    assert fsdp.is_sharded(model) and sharded["parameters"] == plain["parameters"]  # whole sizes, not shards
    weights = fsdp.full_state_dict(model)  # one rank: rank 0 gets everything
    fresh, _ = fsdp_worker.build_model()
    fresh.load_state_dict(weights, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(fsdp_worker.PROBE), model.eval()(fsdp_worker.PROBE))
    with pytest.raises(ValueError, match=r"sharded by an earlier strategy='fsdp' run; train it with strategy='fsdp'"):
        _tiny_run(model=model)


def test_bf16_under_fsdp_gathers_bf16_parameters_and_keeps_fp32_shards(cpu_bf16):
    cpu_bf16(True)
    data = fsdp_worker.text_rows()
    losses = {}
    for precision in ("fp32", "bf16"):
        model, config = fsdp_worker.build_model()
        settings = _settings(strategy="fsdp", precision=precision, max_steps=4, batch_size=4, learning_rate=3e-3)
        results = train(model, config, settings, *data)
        losses[precision] = results["loss_history"]
    assert results["precision"] == "bf16" and results["fsdp"]["param_dtype"] == "bfloat16"
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the sharded master weights
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=2e-2, atol=0)  # bf16: ~3 significant digits


@pytest.mark.requires_cuda
def test_fsdp_on_one_gpu_matches_the_plain_run_in_fp32_and_bf16():
    # NCCL on a 1-rank mesh, FSDP's bf16 policy and the fused AdamW over DTensor shards.
    data = fsdp_worker.text_rows()
    for precision, tolerance in (("fp32", TOL), ("bf16", dict(rtol=2e-2, atol=0))):
        histories = []
        for strategy in ("auto", "fsdp"):
            model, config = fsdp_worker.build_model()
            settings = _settings(strategy=strategy, precision=precision, device="cuda", max_steps=4, batch_size=4)
            histories.append(train(model, config, settings, *data)["loss_history"])
        torch.testing.assert_close(histories[1], histories[0], **tolerance, msg=precision)


def test_activation_checkpointing_gives_the_same_fp32_losses_and_is_undone():
    plain, _ = _tiny_run()
    recomputed, model = _tiny_run(activation_checkpointing=True)
    assert recomputed["loss_history"] == plain["loss_history"]  # the same arithmetic, recomputed
    assert recomputed["grad_norm_history"] == plain["grad_norm_history"]
    assert all("forward" not in vars(block) for block in model.blocks)  # the blocks' own forward is back
    both, _ = _tiny_run(strategy="fsdp", activation_checkpointing=True)
    torch.testing.assert_close(both["loss_history"], plain["loss_history"], **TOL)


def test_activation_checkpointing_frees_the_blocks_activations():
    model, _ = fsdp_worker.build_model()
    x = torch.randint(0, 256, (4, fsdp_worker.SEQ_LEN))

    def saved_bytes() -> int:
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            model(x).sum()
        return sum(sizes)

    kept = saved_bytes()
    blocks.checkpoint_activations(blocks.find_blocks(model))
    assert saved_bytes() < kept / 2
    blocks.release_activation_checkpointing(model)
    assert saved_bytes() == kept


# --------------------------------------------------------------------------- which modules are blocks


class UserLM(nn.Module):
    """A user's own model: a list of layers, and a smaller list of heads that are not blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(64, 32)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)) for _ in range(3))
        self.heads = nn.ModuleList(nn.Linear(32, 64) for _ in range(2))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for layer in self.layers:
            x = x + layer(x)
        return self.heads[0](x)


def _names(found):
    return [name for name, _ in found]


def test_blocks_are_found_in_the_built_in_models_and_a_users_module_list():
    model, _ = fsdp_worker.build_model()
    assert _names(blocks.find_blocks(model)) == ["blocks.0", "blocks.1"]
    assert _names(blocks.find_blocks(TorchEncoderLM())) == ["encoder.layers.0", "encoder.layers.1"]
    assert _names(blocks.find_blocks(UserLM())) == ["layers.0", "layers.1", "layers.2"]  # the larger list
    assert blocks.find_blocks(nn.Linear(2, 2)) == []


def test_blocks_of_a_hugging_face_model_come_from_its_no_split_modules():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    assert blocks.hf_no_split_classes(model) == ("GPT2Block",)  # pins the Hugging Face attribute
    assert _names(blocks.find_blocks(model)) == ["transformer.h.0", "transformer.h.1"]


def test_fsdp_wrap_names_the_block_class_by_class_name_or_tuple():
    model = UserLM()
    linears = [f"layers.{i}.{j}" for i in range(3) for j in (0, 2)] + ["heads.0", "heads.1"]
    assert _names(blocks.find_blocks(model, ("Linear",))) == linears
    assert _names(blocks.find_blocks(model, (nn.Sequential,))) == ["layers.0", "layers.1", "layers.2"]
    both = blocks.find_blocks(model, (nn.Sequential, "Embedding"))
    assert _names(both) == ["embed", "layers.0", "layers.1", "layers.2"]  # outermost only: no Linear inside
    with pytest.raises(ValueError, match=r"fsdp_wrap='GPT2Block' names no module of this model; .*'Sequential'"):
        blocks.find_blocks(model, ("GPT2Block",))


def test_a_hugging_face_model_trains_under_fsdp_as_it_does_alone():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    data = torch.randint(0, 64, (12, 16), generator=torch.Generator().manual_seed(0))
    histories = []
    for strategy in ("auto", "fsdp"):
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config)
        settings = _settings(strategy=strategy, max_steps=2, batch_size=4, learning_rate=1e-3)
        results = train(model, config, settings, data[:8], data[8:])
        histories.append(results["loss_history"])
    assert results["fsdp"]["sharded_modules"] == ["transformer.h.0", "transformer.h.1", "(root)"]
    torch.testing.assert_close(histories[1], histories[0], **TOL)


# --------------------------------------------------------------------------- bad input, before any work


def _settings(**overrides) -> TrainingSettings:
    base = dict(n_epochs=1, precision="fp32", device="cpu", progress=False, log_every=1, max_corpus_bytes=10_000)
    return TrainingSettings(**{**base, **overrides})


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"strategy": "zero"}, ValueError, r"strategy must be one of \('auto', 'ddp', 'fsdp'\), got 'zero'"),
        ({"strategy": "fsdp", "precision": "fp16"}, ValueError, r"strategy='fsdp' does not train in fp16"),
        ({"fsdp_wrap": 3, "strategy": "fsdp"}, TypeError, r"fsdp_wrap must name the model's block class"),
        ({"fsdp_wrap": (), "strategy": "fsdp"}, TypeError, r"fsdp_wrap must name"),
        ({"fsdp_wrap": "Block"}, ValueError, r"fsdp_wrap= names the blocks .* pass strategy='fsdp' or activation_"),
        ({"activation_checkpointing": "yes"}, ValueError, r"activation_checkpointing must be True or False"),
    ],
)
def test_bad_strategy_settings_are_refused_naming_the_argument(overrides, error, message):
    with pytest.raises(error, match=message):
        _settings(**overrides)


def test_a_block_class_the_model_lacks_is_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(parts, "setup_distributed", lambda *a, **k: pytest.fail("setup started"))
    model, config = fsdp_worker.build_model()
    with pytest.raises(ValueError, match=r"fsdp_wrap='GPT2Block' names no module of this model; .*'Block'"):
        train(model, config, _settings(strategy="fsdp", fsdp_wrap="GPT2Block"))
    with pytest.raises(ValueError, match=r"activation_checkpointing=True found no list of transformer blocks"):
        train(nn.Sequential(nn.Embedding(64, 8), nn.Linear(8, 64)), config, _settings(activation_checkpointing=True))


def test_fp16_chosen_by_auto_is_refused_under_fsdp():
    plan = resolve_precision("fp16", None, "cpu")  # what 'auto' with use_amp=True picks on a GPU without bf16
    with pytest.raises(ValueError, match=r"strategy='fsdp' does not train in fp16 .*precision='fp32'"):
        fsdp.check_fsdp_precision(plan)
    fsdp.check_fsdp_precision(resolve_precision("bf16", None, "cpu"))


@pytest.mark.filterwarnings("ignore:FSDP2-wrapped module .* returned a view tensor")  # its Linear output is a view
def test_a_model_without_blocks_is_one_fsdp_unit_with_a_warning():
    model = nn.Sequential(nn.Embedding(64, 8), nn.Linear(8, 64))
    data = torch.randint(0, 64, (8, 8), generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match=r"found no list of transformer blocks .* pass fsdp_wrap="):
        results = train(model, SimpleNamespace(vocab_size=64), _settings(strategy="fsdp"), data[:6], data[6:])
    assert results["fsdp"]["sharded_modules"] == ["(root)"]


# --------------------------------------------------------------------------- the helpers


def test_strategies_resolve_by_world_size():
    assert [fsdp.resolve_strategy(s, 1) for s in ("auto", "ddp", "fsdp")] == ["single", "single", "fsdp"]
    assert [fsdp.resolve_strategy(s, 2) for s in ("auto", "ddp", "fsdp")] == ["ddp", "ddp", "fsdp"]


def test_bf16_gathers_bf16_parameters_and_reduces_in_fp32():
    policy = fsdp.mixed_precision_policy(resolve_precision("bf16", None, "cpu"))
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert fsdp.mixed_precision_policy(resolve_precision("fp32", None, "cpu")).param_dtype is None


def test_plain_models_pass_through_the_state_dict_helpers():
    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    assert fsdp.full_state_dict(model).keys() == model.state_dict().keys()
    assert fsdp.full_optimizer_state_dict(model, optimizer) == optimizer.state_dict()
    tensor = torch.ones(2)
    assert fsdp.plain_tensor(tensor) is tensor and fsdp.plain_tensor(None) is None
    assert distributed.max_host_value(3, distributed.DistributedContext(), torch.device("cpu")) == 3


def test_without_fsdp2_the_engine_still_imports_and_fsdp_is_refused_clearly():
    # A torch without FSDP2 (older, or built without torch.distributed): every import of it fails.
    script = (
        "import sys\n"
        "sys.modules['torch.distributed.fsdp'] = sys.modules['torch.distributed._composable.fsdp'] = None\n"
        "import utils.tier3_training_utilities\n"
        "from utils.training import fsdp_api, settings\n"
        "assert not fsdp_api.fsdp2_available() and not fsdp_api.is_sharded(object())\n"
        "settings.TrainingSettings(strategy='fsdp', device='cpu')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert "ValueError: strategy='fsdp' needs PyTorch's FSDP2 (fully_shard" in done.stderr, done.stderr[-2000:]
