"""Tests for utils.training.flops: the FLOPs-per-token count, the GPU peak table and MFU."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn as nn

from utils.models import tiny_gpt
from utils.training import flops


@pytest.mark.parametrize(
    "name, key",
    [
        ("Tesla T4", "T4"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA GH200 480GB", "H100 SXM"),
        ("Tesla V100-SXM2-16GB", "V100 SXM2"),
        ("Tesla V100-PCIE-32GB", "V100 PCIe"),
        ("NVIDIA A10G", None),  # not an A10: a different part, not in the table
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_gpu_names_map_to_the_right_table_row(name, key):
    assert flops.gpu_table_key(name) == key


def test_the_table_covers_the_issue_gpus_with_dense_peaks():
    for key in ("T4", "L4", "A100", "H100 SXM", "H200 SXM"):
        row = flops.GPU_PEAK_TFLOPS[key]
        assert row["fp16"] > row["fp32"] > 0
    # Dense figures, not the 2:4-sparsity ones NVIDIA leads with (1979 for H100 SXM bf16).
    assert flops.GPU_PEAK_TFLOPS["H100 SXM"]["bf16"] == pytest.approx(989.5)
    assert flops.GPU_PEAK_TFLOPS["A100"]["bf16"] == 312.0
    assert flops.GPU_PEAK_TFLOPS["T4"]["bf16"] is None  # emulated there: no peak, no MFU


def _fake_gpu(monkeypatch, name):
    monkeypatch.setattr(flops, "device_name", lambda device: name)
    return torch.device("cuda")


def test_peak_picks_the_precision_column(monkeypatch):
    device = _fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3")
    assert flops.peak_tflops(device, "bf16").tflops == pytest.approx(989.5)
    assert flops.peak_tflops(device, "fp32", tf32=False).tflops == 67.0
    tf32 = flops.peak_tflops(device, "fp32", tf32=True)
    assert (tf32.tflops, tf32.column) == (494.5, "tf32")


def test_no_peak_on_cpu_an_unknown_gpu_or_an_emulated_precision(monkeypatch):
    assert flops.peak_tflops(torch.device("cpu"), "bf16").tflops is None
    unknown = flops.peak_tflops(_fake_gpu(monkeypatch, "NVIDIA GeForce RTX 4090"), "bf16")
    assert unknown.tflops is None and "not in GPU_PEAK_TFLOPS" in unknown.note
    t4 = flops.peak_tflops(_fake_gpu(monkeypatch, "Tesla T4"), "bf16")
    assert t4.tflops is None and "no bf16 tensor-core peak" in t4.note


def test_matmul_parameters_leave_out_lookup_tables_but_keep_a_tied_head():
    class Untied(nn.Module):
        def __init__(self, tie: bool):
            super().__init__()
            self.emb = nn.Embedding(10, 4)  # 40
            self.pos = nn.Embedding(8, 4)  # 32, always a lookup
            self.body = nn.Linear(4, 4)  # 20
            self.head = nn.Linear(4, 10, bias=False)  # 40
            if tie:
                self.head.weight = self.emb.weight

    assert flops.matmul_parameter_count(Untied(tie=False)) == 20 + 40
    assert flops.matmul_parameter_count(Untied(tie=True)) == 20 + 40  # the shared table counted once, as the head


def test_flops_per_token_is_6n_plus_attention():
    model, config = tiny_gpt(d_model=64, n_layers=2, n_heads=2, max_seq_len=32)
    n = flops.matmul_parameter_count(model)
    result = flops.model_flops_per_token(model, config, seq_len=32)
    assert result.matmul_params == n
    assert result.attention_flops == 12 * 2 * 32 * 64
    assert result.flops == 6 * n + 12 * 2 * 32 * 64


def test_gpt2_small_shape_is_about_124m_parameters():
    """GPT-2 small: 12 x 768, 1024 positions, 50257 tokens. nanoGPT counts 124M, 85M of them outside embeddings."""
    model, config = tiny_gpt(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, max_seq_len=1024)
    total = sum(p.numel() for p in model.parameters())
    assert total == pytest.approx(124.4e6, rel=0.01)
    result = flops.model_flops_per_token(model, config, seq_len=1024)
    # N excludes only the position table here (the head is tied to the token embedding).
    assert result.matmul_params == total - 1024 * 768


def test_a_config_without_sizes_gives_6n_and_says_so():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    result = flops.model_flops_per_token(model, types.SimpleNamespace(vocab_size=10), seq_len=16)
    assert result.flops == 6 * 50 and result.attention_flops == 0
    assert "attention FLOPs are left out" in result.note


def test_mfu_arithmetic():
    # 1e5 tokens/s x 1e9 FLOPs/token = 1e14 FLOP/s = 100 TFLOP/s, over 2 devices of 250 peak = 20%.
    assert flops.compute_mfu(1e5, 1e9, 250.0, world_size=2) == pytest.approx(0.2)
    assert flops.compute_mfu(1e5, 1e9, None) is None
    assert flops.compute_mfu(None, 1e9, 250.0) is None
