"""Per-step timing without per-step syncs.

On CUDA each mark records an event on the stream (no sync); the times are
read once, at the end. On CPU the work is synchronous, so a clock read is exact.
"""

from __future__ import annotations

import time

import torch


class StepTimer:
    """Marks the end of each step; ``step_times_s()`` gives the gaps within each segment.

    Call ``start()`` before a run of steps and ``stop()`` after it, so that
    work between segments (validation, say) is never counted.
    """

    def __init__(self, device: torch.device) -> None:
        self.use_events = device.type == "cuda"
        self.segments: list[list] = []
        self._open = False

    def start(self) -> None:
        self.segments.append([])
        self._open = True
        self.mark()

    def mark(self) -> None:
        if not self._open:
            return
        if self.use_events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.segments[-1].append(event)
        else:
            self.segments[-1].append(time.perf_counter())

    def stop(self) -> None:
        self._open = False

    def step_times_s(self) -> list[float]:
        """Duration of every step, in order. Syncs once on CUDA (deliberately)."""
        if self.use_events:
            torch.cuda.synchronize()
        gap = _event_gap_s if self.use_events else _clock_gap_s
        return [gap(a, b) for marks in self.segments for a, b in zip(marks, marks[1:])]


def _event_gap_s(start: torch.cuda.Event, end: torch.cuda.Event) -> float:
    return start.elapsed_time(end) / 1000.0  # elapsed_time is in ms


def _clock_gap_s(start: float, end: float) -> float:
    return end - start
