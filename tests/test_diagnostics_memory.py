"""diagnostics.memory: one training step's memory (what the wizard and the comparison read) and the CUDA peak."""

from __future__ import annotations

import pytest
import torch

from utils.device import MB
from utils.diagnostics import memory
from utils.model_helpers import count_parameters


def _forward_backward_row(model, config, batch_size, seq_len, optimizer="adamw"):
    footprint = memory.test_memory_footprint(
        model, config, batch_sizes=(batch_size,), seq_len=seq_len, optimizer=optimizer, progress=False
    )
    return footprint["table"].query("mode == 'forward_backward'").iloc[0], footprint["static"]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "none"])
def test_training_memory_is_the_footprint_forward_backward_row(tiny_gpt, optimizer):
    model, config = tiny_gpt
    row, static = _forward_backward_row(model, config, 3, 16, optimizer)
    measured = memory.measure_training_memory(model, config, batch_size=3, seq_len=16, optimizer=optimizer)
    assert measured["method"] == row["method"] == "estimate"
    assert (measured["batch_size"], measured["seq_len"]) == (3, 16)
    # On CPU both read the same saved-tensor estimate, so the figures are equal, not just close.
    torch.testing.assert_close(measured["activation_mb"], float(row["activation_mb"]), rtol=0, atol=0)
    torch.testing.assert_close(measured["total_mb"], float(row["total_mb"]), rtol=0, atol=0)
    assert {name: measured[name] for name in static} == static
    parts = static["params_mb"] + static["grads_mb"] + static["optimizer_mb"]
    torch.testing.assert_close(measured["static_mb"], parts, rtol=1e-12, atol=0)
    torch.testing.assert_close(measured["total_mb"], parts + measured["activation_mb"], rtol=1e-12, atol=0)
    assert all(p.grad is None for p in model.parameters())


def test_training_memory_defaults(tiny_gpt):
    model, config = tiny_gpt
    measured = memory.measure_training_memory(model, config)
    assert (measured["batch_size"], measured["seq_len"]) == (1, min(128, config.max_seq_len))
    assert measured["n_params"] == count_parameters(model)["total"]
    expected_params_mb = count_parameters(model)["total"] * 4 / MB  # fp32 weights
    torch.testing.assert_close(measured["optimizer_mb"], 2 * expected_params_mb, rtol=1e-9, atol=0)  # AdamW


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": True}, "batch_size must be a positive integer"),
        ({"seq_len": "8"}, "seq_len must be a positive integer"),
        ({"optimizer": "lion"}, r"optimizer must be one of \(.*'adamw'.*\), got 'lion'"),
    ],
)
def test_training_memory_checks_its_arguments_before_the_model_runs(watched_gpt, kwargs, message):
    model, config, calls = watched_gpt
    with pytest.raises(ValueError, match=message):
        memory.measure_training_memory(model, config, **kwargs)
    assert calls == []


def test_training_memory_names_itself_for_a_bad_config(tiny_gpt):
    model, _ = tiny_gpt
    with pytest.raises(ValueError, match="vocab_size"):
        memory.measure_training_memory(model, {"max_seq_len": 16})


@pytest.mark.requires_cuda
def test_cuda_peak_bytes_counts_kept_and_freed_allocations():
    device = torch.device("cuda")
    kept = []
    # 1 MiB and 4 MiB are multiples of the allocator's 512-byte rounding, so they are counted exactly.
    assert memory.cuda_peak_bytes(lambda: kept.append(torch.empty(MB, dtype=torch.uint8, device=device)), device) == MB
    assert memory.cuda_peak_bytes(lambda: torch.empty(4 * MB, dtype=torch.uint8, device=device), device) == 4 * MB
    assert memory.cuda_peak_bytes(lambda: None, device) == 0


@pytest.mark.requires_cuda
def test_training_memory_on_cuda_reads_the_allocator(tiny_gpt):
    model, config = tiny_gpt
    model = model.cuda()
    memory.measure_training_memory(model, config, batch_size=2, seq_len=16)  # warm: cuBLAS workspaces, first backward
    row, _ = _forward_backward_row(model, config, 2, 16)
    measured = memory.measure_training_memory(model, config, batch_size=2, seq_len=16)
    assert measured["method"] == row["method"] == "cuda_allocator"
    assert measured["activation_mb"] > 0
    assert measured["activation_mb"] == pytest.approx(float(row["activation_mb"]), abs=0.5)  # MB; same measurement
