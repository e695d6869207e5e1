"""Tests for utils.training.amp_utils: precision resolution and the AMP W&B callback.

CUDA paths run on CPU by patching torch.cuda's capability checks; plans built
that way are only inspected, never used for autocast or a scaler.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from utils.training import amp_utils
from utils.training.callbacks import AmpWandbCallback
from utils.training.precision import PrecisionPlan, compute_effective_precision, resolve_precision

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend a CUDA GPU with the given compute capability is present."""

    def install(capability: tuple[int, int], name: str = "Fake GPU") -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        # Pre-Ampere GPUs answer True here because they can emulate bf16; it must not be trusted.
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    return install


# -- resolve_precision on CPU ----------------------------------------------------------


@pytest.mark.parametrize("use_amp", [False, None])
def test_auto_without_amp_is_fp32(use_amp):
    plan = resolve_precision("auto", use_amp=use_amp, device="cpu")
    assert (plan.name, plan.dtype, plan.use_scaler, plan.amp_enabled) == ("fp32", torch.float32, False, False)
    assert plan.make_scaler() is None
    assert isinstance(plan.autocast(), contextlib.nullcontext)


def test_explicit_fp32_is_fp32():
    plan = resolve_precision("fp32", use_amp=False)
    assert plan.name == "fp32" and plan.make_scaler() is None


def test_fp16_on_cpu_gets_a_cpu_grad_scaler():
    plan = resolve_precision("fp16", use_amp=False, device="cpu")
    assert (plan.name, plan.device_type, plan.dtype, plan.use_scaler) == ("fp16", "cpu", torch.float16, True)
    assert plan.amp_enabled
    scaler = plan.make_scaler(init_scale=1024.0)
    assert isinstance(scaler, torch.amp.GradScaler)
    assert scaler._device == "cpu"  # no public accessor for the scaler's device
    assert scaler.is_enabled()
    assert scaler.get_scale() == 1024.0
    # Each call builds a fresh scaler: runs never share loss-scale state.
    assert plan.make_scaler() is not scaler


@pytest.mark.parametrize("native", [True, False])
def test_bf16_gets_no_scaler(native, cpu_bf16):
    cpu_bf16(native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = resolve_precision("bf16", use_amp=True, device="cpu")
    assert (plan.name, plan.dtype, plan.use_scaler) == ("bf16", torch.bfloat16, False)
    assert plan.make_scaler() is None
    # Emulated bf16 still runs, but the user is told it will be slow.
    assert any("no native bf16" in str(w.message) for w in caught) is (not native)


def test_use_amp_true_with_fp32_is_a_contradiction():
    with pytest.raises(ValueError, match=r"use_amp=True.*precision='fp32'"):
        resolve_precision("fp32", use_amp=True)


@pytest.mark.parametrize("precision", ["fp8", "FP16", "16-mixed", "", "float32"])
def test_unknown_precision_raises_value_error_naming_it(precision):
    with pytest.raises(ValueError, match=rf"precision='{precision}'"):
        resolve_precision(precision)


@pytest.mark.parametrize("use_amp", ["yes", 1, 0.0])
def test_non_bool_use_amp_raises_type_error(use_amp):
    with pytest.raises(TypeError, match="use_amp"):
        resolve_precision("auto", use_amp=use_amp)


def test_auto_amp_on_cpu_with_native_bf16_is_bf16(cpu_bf16):
    cpu_bf16(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = resolve_precision("auto", use_amp=True, device="cpu")
    assert (plan.name, plan.dtype, plan.use_scaler) == ("bf16", torch.bfloat16, False)


def test_auto_amp_on_cpu_without_bf16_warns_and_falls_back_to_fp32(cpu_bf16):
    cpu_bf16(False)
    with pytest.warns(UserWarning, match="training in FP32") as record:
        plan = resolve_precision("auto", use_amp=True, device="cpu")
    assert plan.name == "fp32" and not plan.amp_enabled and plan.make_scaler() is None
    # stacklevel points the warning at the caller, not at amp_utils.
    assert record[0].filename == __file__


def test_explicit_fp16_wins_over_use_amp_false_and_native_bf16(cpu_bf16):
    cpu_bf16(True)
    assert resolve_precision("fp16", use_amp=False).name == "fp16"
    assert resolve_precision("fp16", use_amp=True).name == "fp16"


def test_plan_records_a_reason():
    plan = resolve_precision("fp16", use_amp=False)
    assert isinstance(plan, PrecisionPlan)
    assert "GradScaler" in plan.reason


# -- resolve_precision on a patched GPU ----------------------------------------------------


def test_auto_amp_on_t4_is_fp16_with_scaler_despite_emulated_bf16(fake_gpu):
    fake_gpu((7, 5), "Tesla T4")
    assert torch.cuda.is_bf16_supported() is True  # the trap: T4 says yes
    plan = resolve_precision("auto", use_amp=True, device="cuda")
    assert (plan.name, plan.device_type, plan.dtype, plan.use_scaler) == ("fp16", "cuda", torch.float16, True)


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (9, 0)])
def test_auto_amp_on_ampere_or_newer_is_bf16(capability, fake_gpu):
    fake_gpu(capability)
    plan = resolve_precision("auto", use_amp=True, device="cuda")
    assert (plan.name, plan.device_type, plan.dtype, plan.use_scaler) == ("bf16", "cuda", torch.bfloat16, False)


def test_explicit_bf16_on_t4_raises_value_error(fake_gpu):
    fake_gpu((7, 5), "Tesla T4")
    with pytest.raises(ValueError, match=r"compute capability >= 8\.0.*Tesla T4.*precision='fp16'"):
        resolve_precision("bf16", use_amp=False, device="cuda")


def test_explicit_bf16_on_a100_is_bf16_without_warning(fake_gpu):
    fake_gpu((8, 0), "NVIDIA A100")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = resolve_precision("bf16", device="cuda:0")
    assert plan.name == "bf16" and plan.device_type == "cuda"


def test_auto_without_amp_on_gpu_is_fp32(fake_gpu):
    fake_gpu((9, 0))
    plan = resolve_precision("auto", use_amp=False, device="cuda")
    assert plan.name == "fp32" and not plan.use_scaler


def test_cuda_supports_bf16_is_false_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert amp_utils.cuda_supports_bf16() is False


def test_mps_has_no_native_bf16_for_auto():
    # No MPS needed: resolving a plan only inspects the device type.
    with pytest.warns(UserWarning, match="mps"):
        plan = resolve_precision("auto", use_amp=True, device="mps")
    assert plan.name == "fp32"


# -- autocast really changes the compute dtype on CPU ------------------------------------------


def _matmul_dtype(plan: PrecisionPlan) -> torch.dtype:
    a = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    b = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    with plan.autocast():
        return (a @ b).dtype


def test_bf16_autocast_on_cpu_produces_bfloat16(cpu_bf16):
    cpu_bf16(True)
    assert _matmul_dtype(resolve_precision("auto", use_amp=True)) == torch.bfloat16


def test_fp16_autocast_on_cpu_produces_float16():
    assert _matmul_dtype(resolve_precision("fp16")) == torch.float16


def test_fp32_plan_produces_float32():
    assert _matmul_dtype(resolve_precision("auto", use_amp=False)) == torch.float32


def test_bf16_autocast_matches_fp32_within_bf16_tolerance(tiny_gpt, cpu_bf16):
    cpu_bf16(True)
    model, config = tiny_gpt
    model.eval()
    ids = torch.randint(0, config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids)
        with resolve_precision("bf16").autocast():
            low = model(ids)
    assert low.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits; logits here are O(0.1-1).
    torch.testing.assert_close(low.float(), reference, atol=5e-2, rtol=5e-2)


# -- compute_effective_precision ------------------------------------------------------------------


@pytest.mark.parametrize("requested", ["16-mixed", "bf16", "bf16-mixed", "32", "32-true", "16"])
@pytest.mark.parametrize(("cuda_available", "use_gpu"), [(True, True), (False, True), (True, False), (False, False)])
def test_effective_precision_use_amp_none_returns_requested(requested, cuda_available, use_gpu):
    assert compute_effective_precision(requested, None, cuda_available, use_gpu) == requested


@pytest.mark.parametrize(
    ("use_amp", "cuda_available", "use_gpu", "expected"),
    [
        (True, True, True, "16"),
        (True, False, True, "32"),
        (True, True, False, "32"),
        (True, False, False, "32"),
        (False, True, True, "32"),
        (False, False, True, "32"),
        (False, True, False, "32"),
        (False, False, False, "32"),
    ],
)
@pytest.mark.parametrize("requested", ["16-mixed", "32", "bf16"])
def test_effective_precision_truth_table(requested, use_amp, cuda_available, use_gpu, expected):
    assert compute_effective_precision(requested, use_amp, cuda_available, use_gpu) == expected


# -- AmpWandbCallback ----------------------------------------------------------------------------------


@pytest.fixture
def no_wandb_run():
    wandb = pytest.importorskip("wandb")
    if wandb.run is not None:
        wandb.run.finish()
    assert wandb.run is None
    return wandb


@pytest.mark.parametrize("log_every", [0, -1, 1.5, "2", None])
def test_callback_rejects_bad_log_every(log_every):
    with pytest.raises(ValueError, match="log_every"):
        AmpWandbCallback(log_every=log_every)


def test_callback_accepts_positive_log_every():
    assert AmpWandbCallback(log_every=5).log_every == 5
    assert AmpWandbCallback().log_every == 1


def test_on_train_begin_without_run_raises(no_wandb_run):
    with pytest.raises(RuntimeError, match="needs an active W&B run"):
        AmpWandbCallback().on_train_begin(SimpleNamespace())


def test_on_train_start_without_run_raises(no_wandb_run):
    with pytest.raises(RuntimeError, match="needs an active W&B run"):
        AmpWandbCallback().on_train_start(trainer=None, pl_module=None)


def test_on_log_skips_steps_off_the_log_every_boundary(no_wandb_run):
    callback = AmpWandbCallback(log_every=2)
    state = SimpleNamespace(optimizer_step=3, plan=resolve_precision("fp16"))
    # Off-boundary: returns without touching W&B (which would raise: there is no run).
    callback.on_log(state, {"amp/loss_scale": 1.0})
    state.optimizer_step = 4
    with pytest.raises(RuntimeError, match="active W&B run"):
        callback.on_log(state, {"amp/loss_scale": 1.0})


def test_on_log_writes_amp_metrics_to_an_offline_run(wandb_dir, no_wandb_run):
    wandb = no_wandb_run
    run = wandb.init(mode="offline", dir=str(wandb_dir), project="amp-utils-test")
    try:
        callback = AmpWandbCallback()
        callback.on_train_begin(SimpleNamespace())

        # fp32 has no loss scale: the key is left out rather than logged as None.
        callback.on_log(SimpleNamespace(optimizer_step=1, plan=resolve_precision("fp32")), {"train/loss": 2.0})
        assert run.summary.get("amp/enabled") is False
        assert run.summary.get("amp/precision") == "fp32"
        assert "amp/loss_scale" not in run.summary.keys()

        callback.on_log(SimpleNamespace(optimizer_step=2, plan=resolve_precision("fp16")), {"amp/loss_scale": 1024.0})
        assert run.summary.get("amp/enabled") is True
        assert run.summary.get("amp/precision") == "fp16"
        assert run.summary.get("amp/loss_scale") == 1024.0

        # The Lightning hook reads precision and the scaler from the trainer.
        trainer = SimpleNamespace(
            precision="bf16-mixed", precision_plugin=SimpleNamespace(scaler=torch.amp.GradScaler("cpu", init_scale=8.0))
        )
        callback.on_train_batch_end(trainer, None, None, None, batch_idx=0)
        assert run.summary.get("amp/precision") == "bf16-mixed"
        assert run.summary.get("amp/enabled") is True
        assert run.summary.get("amp/loss_scale") == 8.0
    finally:
        run.finish()
    assert wandb.run is None


def test_for_lightning_without_lightning_says_how_to_install(monkeypatch):
    # Hide Lightning whether or not it is installed: a None entry makes its import fail.
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install lightning"):
        AmpWandbCallback.for_lightning()


class _TinyLightningLM:
    """Built inside the test, once Lightning is known to be importable."""

    @staticmethod
    def build(pl):
        import torch.nn.functional as F

        from utils.models import tiny_gpt

        class LM(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.model, _ = tiny_gpt(d_model=32, n_layers=2, n_heads=2, max_seq_len=16)

            def training_step(self, batch, batch_idx):
                (ids,) = batch
                logits = self.model(ids)
                return F.cross_entropy(logits[:, :-1].reshape(-1, 256).float(), ids[:, 1:].reshape(-1))

            def configure_optimizers(self):
                return torch.optim.AdamW(self.parameters(), lr=1e-3)

        return LM()


@pytest.mark.parametrize(("precision", "enabled"), [("32-true", False), ("bf16-mixed", True)])
def test_for_lightning_logs_in_a_real_lightning_trainer(precision, enabled, wandb_dir):
    pl = pytest.importorskip("lightning.pytorch")
    wandb = pytest.importorskip("wandb")
    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randint(0, 256, (8, 16))), batch_size=4)
    callback = AmpWandbCallback.for_lightning()
    assert isinstance(callback, pl.Callback) and isinstance(callback, AmpWandbCallback)
    run = wandb.init(mode="offline", dir=str(wandb_dir))
    try:
        trainer = pl.Trainer(
            max_steps=2,
            precision=precision,
            accelerator="cpu",
            callbacks=[callback],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(_TinyLightningLM.build(pl), data)
        summary = dict(run.summary)
    finally:
        run.finish()
    assert summary.get("amp/enabled") is enabled
    assert summary.get("amp/precision") == precision


# -- TF32 ------------------------------------------------------------------------------------


def test_tf32_allowed_sets_and_restores_the_legacy_flags():
    before = amp_utils.tf32_settings()
    with amp_utils.tf32_allowed(not before["matmul"]):
        assert amp_utils.tf32_settings() == {"matmul": not before["matmul"], "cudnn": not before["matmul"]}
    assert amp_utils.tf32_settings() == before


def test_tf32_helpers_speak_the_newer_api_when_the_process_uses_it():
    """torch refuses to read the legacy flag once fp32_precision was set: a fresh process, so no state leaks."""
    code = (
        "import torch\n"
        "from utils.training import amp_utils\n"
        "torch.backends.cuda.matmul.fp32_precision = 'tf32'\n"
        "torch.backends.cudnn.fp32_precision = 'tf32'\n"
        "assert amp_utils.tf32_enabled() is True\n"
        "with amp_utils.tf32_allowed(False):\n"
        "    assert amp_utils.tf32_settings() == {'matmul': False, 'cudnn': False}\n"
        "assert torch.backends.cuda.matmul.fp32_precision == 'tf32'\n"
        "print('ok')\n"
    )
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("this torch has only the legacy TF32 flags")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# -- MixedPrecisionStep -----------------------------------------------------------------------------


def _linear_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _loss(model, scale=1.0):
    x = torch.arange(8.0).view(2, 4) / 8
    return model(x).pow(2).sum() * scale


def test_grad_scaler_keeps_its_scale_in_the_private_attribute_we_read():
    """Pins GradScaler._scale, which scaler_scale_tensor reads to record the scale without a sync."""
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    assert scaler._scale is None  # created lazily, by the first scale()
    with pytest.raises(RuntimeError, match="no scale tensor yet"):
        amp_utils.scaler_scale_tensor(scaler)
    scaler.scale(torch.ones(()))
    scale = amp_utils.scaler_scale_tensor(scaler)
    assert isinstance(scale, torch.Tensor) and scale.item() == scaler.get_scale() == 256.0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_without_a_scaler_the_step_is_the_plain_step(precision, cpu_bf16):
    cpu_bf16(True)
    plan = resolve_precision(precision, device="cpu")
    model, optimizer = _linear_and_optimizer()
    reference, reference_optimizer = _linear_and_optimizer()
    step = amp_utils.MixedPrecisionStep(plan, optimizer, grad_clip=0.5)
    assert not step.enabled and step.loss_scale() is None and step.state_dict() is None

    step.backward(_loss(model))
    grad_norm = step.update(model.parameters())
    _loss(reference).backward()
    expected_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    reference_optimizer.step()
    assert step.stepped
    assert grad_norm.item() == expected_norm.item() > 0.5  # the pre-clip norm
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        assert ours.grad is None  # zero_grad(set_to_none=True)


def test_fp16_step_skips_on_inf_gradients_and_says_so_without_a_sync():
    plan = resolve_precision("fp16", device="cpu")
    model, optimizer = _linear_and_optimizer()
    step = amp_utils.MixedPrecisionStep(plan, optimizer, init_scale=1024.0)
    before = [p.detach().clone() for p in model.parameters()]

    step.backward(_loss(model, scale=float("inf")))
    step.update(model.parameters())
    assert step.enabled and not step.stepped
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # skipped: weights untouched
    assert step.loss_scale().item() == 512.0  # backed off by half

    step.backward(_loss(model))
    step.update(model.parameters())
    assert step.stepped
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_fp16_step_state_round_trips():
    plan = resolve_precision("fp16", device="cpu")
    model, optimizer = _linear_and_optimizer()
    step = amp_utils.MixedPrecisionStep(plan, optimizer, init_scale=1024.0)
    step.backward(_loss(model, scale=float("inf")))
    step.update(model.parameters())
    state = step.state_dict()
    other = amp_utils.MixedPrecisionStep(plan, _linear_and_optimizer()[1], init_scale=2.0**16)
    other.load_state_dict(state)
    assert other.scaler.get_scale() == 512.0


def test_every_precision_list_comes_from_the_one_table():
    assert amp_utils.PRECISION_NAMES == tuple(amp_utils.PRECISION_TABLE)
    assert amp_utils.PRECISIONS == ("auto", *amp_utils.PRECISION_TABLE)
    assert amp_utils.AMP_PRECISIONS == ("fp16", "bf16")
