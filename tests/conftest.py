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

from utils import models

TINY = dict(d_model=32, n_layers=2, n_heads=2, max_seq_len=32)


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
def tiny_encoder():
    """A 2-layer, 32-wide BERT-like encoder and its config, with fixed initial weights."""
    torch.manual_seed(0)
    return models.tiny_encoder(**TINY)


@pytest.fixture
def wandb_dir(tmp_path, monkeypatch):
    """A private folder for offline W&B runs."""
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    return tmp_path
