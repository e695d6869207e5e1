"""Tests for utils.wandb_helpers: real wandb, always offline (conftest sets WANDB_MODE=offline)."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from utils import wandb_helpers
from utils.records import environment_record
from utils.training import amp_utils
from utils.training.callbacks import AmpWandbCallback
from utils.training.wandb_config import build_wandb_config
from utils.training.wandb_run import (
    active_run,
    finish_wandb_run,
    has_wandb_api_key,
    import_wandb,
    initialize_wandb_run,
    print_wandb_summary,
    require_active_run,
    start_run_unless_active,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_wandb_key(monkeypatch, tmp_path):
    """No API key anywhere, even if the machine running the tests has a ~/.netrc."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-such-netrc"))


# --------------------------------------------------------------------------- import


def test_module_does_not_import_wandb_at_top_level():
    # Read the source: this test process may already have imported wandb elsewhere.
    from utils.training import wandb_config, wandb_run

    trees = [ast.parse(Path(m.__file__).read_text()) for m in (wandb_helpers, wandb_run, wandb_config)]
    top_level = [node for tree in trees for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = {alias.name for node in top_level for alias in node.names}
    names |= {node.module for node in top_level if isinstance(node, ast.ImportFrom)}
    assert "torch.nn" in names and "utils.records" in names  # the scan does see the real imports
    assert not any(name and name.split(".")[0] == "wandb" for name in names)


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
    with pytest.raises(RuntimeError, match="print_wandb_summary.*needs an active W&B run.*initialize_wandb_run"):
        print_wandb_summary()


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


# --------------------------------------------------------------------------- the seam: import_wandb, active_run


@pytest.fixture
def without_wandb(monkeypatch):
    """Hide wandb: a None entry in sys.modules makes `import wandb` fail, as if it were not installed."""
    monkeypatch.setitem(sys.modules, "wandb", None)


def test_import_wandb_returns_the_module():
    wandb = pytest.importorskip("wandb")
    assert import_wandb() is wandb


@pytest.mark.parametrize(
    "entry_point",
    [
        lambda model, config: import_wandb(),
        lambda model, config: active_run(),
        lambda model, config: initialize_wandb_run(mode="offline"),
        lambda model, config: start_run_unless_active(model, config, precision="fp32"),
        lambda model, config: print_wandb_summary(),
        lambda model, config: AmpWandbCallback().on_train_begin(SimpleNamespace()),
        lambda model, config: AmpWandbCallback().on_train_start(trainer=None, pl_module=None),
    ],
    ids=[
        "import_wandb",
        "active_run",
        "initialize_wandb_run",
        "start_run_unless_active",
        "print_wandb_summary",
        "AmpWandbCallback.on_train_begin",
        "AmpWandbCallback.on_train_start",
    ],
)
def test_every_entry_point_without_wandb_gives_the_install_hint(without_wandb, wandb_dir, tiny_gpt, entry_point):
    with pytest.raises(ImportError, match=r"install it with `pip install wandb`") as excinfo:
        entry_point(*tiny_gpt)
    assert type(excinfo.value) is ImportError  # not the bare ModuleNotFoundError it used to be
    assert not (wandb_dir / "wandb").exists()


def test_active_run_and_require_active_run_follow_wandb_run(wandb_dir):
    wandb = pytest.importorskip("wandb")
    assert active_run() is None
    with pytest.raises(RuntimeError, match=r"^my check needs an active W&B run.*initialize_wandb_run\(\)"):
        require_active_run("my check")
    run = initialize_wandb_run(mode="offline")
    try:
        assert active_run() is run and wandb.run is run
        assert require_active_run("my check") is run
    finally:
        run.finish()
    assert active_run() is None


# --------------------------------------------------------------------------- AmpWandbCallback's home


def test_amp_wandb_callback_lives_in_callbacks_and_is_still_importable_from_amp_utils():
    from utils.training.callbacks import AmpWandbCallback as from_amp_utils

    assert from_amp_utils is AmpWandbCallback is amp_utils.AmpWandbCallback
    assert AmpWandbCallback.__module__ == "utils.training.callbacks"
    assert not hasattr(amp_utils, "no_such_name")  # other names still raise AttributeError


@pytest.mark.parametrize(
    "first_import",
    ["import utils.training.amp_utils as m", "import utils.wandb_helpers as m", "import utils.records as m"],
)
def test_fresh_interpreter_imports_without_a_cycle_or_heavy_modules(first_import):
    # The cycle to avoid: amp_utils <- records <- wandb_helpers. Each order must work from a cold start.
    code = (
        f"import json, sys; {first_import}; import utils.training.amp_utils as a; cls = a.AmpWandbCallback; "
        "print(json.dumps([cls.__module__, [n for n in ('wandb', 'pandas') if n in sys.modules]]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    module, heavy = json.loads(result.stdout.strip().splitlines()[-1])
    assert module == "utils.training.callbacks"
    assert heavy == [], f"{first_import} loaded {heavy}; they must be imported where they are used"


def test_amp_wandb_callback_without_a_run_names_itself():
    pytest.importorskip("wandb")
    with pytest.raises(RuntimeError, match=r"^AmpWandbCallback needs an active W&B run"):
        AmpWandbCallback().on_log(
            SimpleNamespace(optimizer_step=1, plan=SimpleNamespace(amp_enabled=True, name="bf16")), {}
        )


# --------------------------------------------------------------------------- one environment record


def test_build_wandb_config_environment_comes_from_the_one_record(tiny_gpt):
    wandb_config = build_wandb_config(*tiny_gpt, precision="fp32")
    record = environment_record(torch.device("cpu"))
    for key in ("device", "device_name", "torch_version", "cuda_version", "python_version"):
        assert wandb_config[key] == record[key], key
    # Only those five keys: the rest of the record would be new keys, able to clash with hyperparameters.
    assert not {"tf32_matmul", "platform", "compile"} & set(wandb_config)


def test_build_wandb_config_values_go_through_to_jsonable(tiny_gpt):
    np = pytest.importorskip("numpy")
    wandb_config = build_wandb_config(
        *tiny_gpt, precision="fp32", ratio=np.float32(0.5), steps=np.int64(7), bad=float("nan"), layers=[1, 2]
    )
    assert wandb_config["ratio"] == 0.5 and type(wandb_config["ratio"]) is float
    assert wandb_config["steps"] == 7 and type(wandb_config["steps"]) is int
    assert wandb_config["bad"] is None  # NaN is not JSON; to_jsonable turns it into None
    assert wandb_config["layers"] == "[1, 2]"  # the config stays flat: a list is recorded as its text


# --------------------------------------------------------------------------- settings and init_timeout_s


@pytest.mark.parametrize("bad", [0, -1.0, True, "30", float("nan")])
def test_initialize_rejects_bad_init_timeout(wandb_dir, bad):
    with pytest.raises(ValueError, match="init_timeout_s must be a positive finite number"):
        initialize_wandb_run(mode="offline", init_timeout_s=bad)
    assert not (wandb_dir / "wandb").exists()  # validated before wandb.init


def test_initialize_rejects_settings_of_the_wrong_type(wandb_dir):
    pytest.importorskip("wandb")
    with pytest.raises(ValueError, match="settings must be a wandb.Settings or a dict, got str"):
        initialize_wandb_run(mode="offline", settings="silent")
    assert not (wandb_dir / "wandb").exists()


def test_user_settings_are_merged_with_the_timeout_and_win(wandb_dir):
    wandb = pytest.importorskip("wandb")
    user_settings = wandb.Settings(silent=False)
    run = initialize_wandb_run(mode="offline", init_timeout_s=12, settings=user_settings)
    try:
        assert run.settings.init_timeout == 12 and run.settings.silent is False
    finally:
        run.finish()
    assert user_settings.model_fields_set == {"silent"}  # the caller's Settings is left as it was
    run = initialize_wandb_run(mode="offline", init_timeout_s=12, settings={"init_timeout": 7})
    try:
        assert run.settings.init_timeout == 7 and run.settings.silent is True
    finally:
        run.finish()


# --------------------------------------------------------------------------- an API key but no network

# Run in a fresh interpreter: wandb reads WANDB_* variables once per process, so in this
# process (where earlier tests already started wandb) a new WANDB_BASE_URL would be ignored
# and the fake key sent to the real host.
_NO_NETWORK_SCRIPT = """
import json, sys, warnings
from utils.wandb_helpers import initialize_wandb_run
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    run = initialize_wandb_run(name="no-network", mode="online", init_timeout_s=float(sys.argv[1]))
mode = run.settings.mode
run.log({"fallback/metric": 1.25})
run.finish()
print(json.dumps({"mode": mode, "warnings": [str(w.message) for w in caught]}))
"""


@pytest.fixture
def closed_loopback_port():
    """A loopback port that refuses connections: bound, so nothing else takes it, but never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_online_start_without_network_falls_back_offline_with_one_warning(
    wandb_dir, closed_loopback_port, offline_wandb_log
):
    pytest.importorskip("wandb")
    env = {key: value for key, value in os.environ.items() if key != "WANDB_MODE"}
    env.update(
        WANDB_API_KEY="f" * 40,  # a well-formed but fake key: wandb goes online and tries the host
        WANDB_BASE_URL=f"http://127.0.0.1:{closed_loopback_port}",
        WANDB_DIR=str(wandb_dir),
        WANDB_ERROR_REPORTING="false",  # nothing may leave the machine, not even a crash report
    )
    # Safety net only: 60 s is far above the 2 s asked for, and below wandb's own 90 s
    # default, so a timeout that is not passed through still fails this test.
    result = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK_SCRIPT, "2"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["mode"] == "offline"
    fallback = [message for message in outcome["warnings"] if message.startswith("W&B:")]
    assert len(fallback) == 1, outcome["warnings"]
    message = fallback[0]
    assert "\n" not in message
    assert f"127.0.0.1:{closed_loopback_port} did not start within init_timeout_s=2" in message
    assert "CommError" in message and "wandb sync " in message and str(wandb_dir) in message
    assert b"fallback/metric" in offline_wandb_log(b"fallback/metric")
