"""Tests for utils.device: resolving the device, naming it."""

from __future__ import annotations

import pytest
import torch

from utils import device as hardware


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("device", ["auto", None])
def test_resolve_device_auto_is_cpu_without_cuda(device, no_cuda):
    assert hardware.resolve_device(device) == torch.device("cpu")


def test_resolve_device_auto_is_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_resolve_device_accepts_cpu(device):
    assert hardware.resolve_device(device) == torch.device("cpu")


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_resolve_device_cuda_without_cuda_names_device(device, no_cuda):
    with pytest.raises(ValueError, match=rf"device='{device}'.*CUDA is not available"):
        hardware.resolve_device(device)


@pytest.mark.parametrize("device", ["gpu", "not-a-device"])
def test_resolve_device_bad_string_raises_value_error(device):
    with pytest.raises(ValueError, match=rf"device='{device}' is not a device name"):
        hardware.resolve_device(device)


def test_device_name_on_cpu():
    assert hardware.device_name(torch.device("cpu")) == "cpu"


def test_resolve_device_refuses_device_types_the_library_does_not_run_on():
    with pytest.raises(ValueError, match=r"device='meta': the library runs on cpu, cuda, mps"):
        hardware.resolve_device("meta")


def test_resolve_device_refuses_a_gpu_index_the_machine_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert hardware.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"device='cuda:2': this machine has 2 GPU\(s\), cuda:0 to cuda:1"):
        hardware.resolve_device("cuda:2")
