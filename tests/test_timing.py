"""Tests for utils.training.timing: per-step gaps, with a fake clock (no real timing asserted)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from utils.training import timing
from utils.training.timing import StepTimer


@pytest.fixture
def clock(monkeypatch):
    """A fake perf_counter the test moves by hand."""
    now = SimpleNamespace(t=100.0)
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: now.t))

    def advance(seconds: float) -> None:
        now.t += seconds

    return advance


def test_one_time_per_mark_gap(clock):
    timer = StepTimer(torch.device("cpu"))
    assert not timer.use_events
    timer.start()
    for seconds in (0.5, 0.25, 2.0):
        clock(seconds)
        timer.mark()
    timer.stop()
    assert timer.step_times_s() == pytest.approx([0.5, 0.25, 2.0])


def test_time_between_stop_and_start_is_excluded(clock):
    timer = StepTimer(torch.device("cpu"))
    timer.start()
    clock(1.0)
    timer.mark()
    timer.stop()
    clock(50.0)  # validation, say
    timer.mark()  # a mark while stopped is ignored
    clock(7.0)
    timer.start()
    clock(3.0)
    timer.mark()
    clock(4.0)
    timer.mark()
    timer.stop()
    assert timer.step_times_s() == pytest.approx([1.0, 3.0, 4.0])
    assert [len(s) for s in timer.segments] == [2, 3]


def test_segment_without_steps_adds_nothing(clock):
    timer = StepTimer(torch.device("cpu"))
    timer.start()
    clock(5.0)
    timer.stop()
    assert timer.step_times_s() == []


def test_cuda_device_uses_events():
    assert StepTimer(torch.device("cuda")).use_events  # constructing records nothing, so no GPU needed
