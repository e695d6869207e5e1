"""Shared fixtures. Everything runs on CPU with tiny models; W&B is always offline."""

from __future__ import annotations

import os

# Set before anything imports matplotlib or wandb.
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("WANDB_API_KEY", None)

import pytest
import torch
from tiny_models import TINY  # tests/ is on sys.path in pytest's prepend mode

from utils import models


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_gpt():
    """A 2-layer, 32-wide causal LM and its config, with fixed initial weights."""
    torch.manual_seed(0)
    return models.tiny_gpt(**TINY)


@pytest.fixture
def watched_gpt(tiny_gpt):
    """The tiny GPT, its config, and a list that grows by one on every forward call."""
    model, config = tiny_gpt
    calls = []

    def count_call(module, args):
        calls.append(1)

    model.register_forward_pre_hook(count_call)
    return model, config, calls


@pytest.fixture
def tiny_encoder():
    """A 2-layer, 32-wide BERT-like encoder and its config, with fixed initial weights."""
    torch.manual_seed(0)
    return models.tiny_encoder(**TINY)


@pytest.fixture
def wandb_dir(tmp_path, monkeypatch):
    """A private folder for offline W&B runs."""
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def one_cpu_thread():
    """One intra-op thread for a whole test module, restored after it.

    Tiny models gain nothing from intra-op threads, and on a shared CPU two spinning
    OpenMP threads can make a step 10-30x slower. Use it in a training-heavy module with
    ``pytestmark = pytest.mark.usefixtures("one_cpu_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set whether this 'CPU' has native bf16: ``cpu_bf16(True)`` or ``cpu_bf16(False)``."""
    from utils import device

    def set_support(supported: bool) -> None:
        monkeypatch.setattr(device, "cpu_supports_bf16", lambda: supported)

    return set_support


@pytest.fixture
def offline_wandb_log(wandb_dir):
    """Wait (bounded) until the one offline run's .wandb log holds every needle, and return its bytes.

    wandb-core writes that file asynchronously, so it can still be a bare header
    right after ``run.finish()`` returns; reading it once races the writer.
    """
    import time

    def read(*needles: bytes, timeout_s: float = 60.0) -> bytes:
        deadline = time.monotonic() + timeout_s
        while True:
            logs = sorted((wandb_dir / "wandb").glob("offline-run-*/*.wandb"))
            written = logs[0].read_bytes() if len(logs) == 1 else b""
            if len(logs) > 1 or all(n in written for n in needles) or time.monotonic() > deadline:
                assert len(logs) == 1, logs  # exactly one run
                return written
            time.sleep(0.2)

    return read
