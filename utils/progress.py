"""Progress bars that suit where the output goes.

In a notebook or a terminal, a tqdm bar. Anywhere else (CI logs, ``| tee``, a
file), tqdm would write hundreds of redrawn lines, so a few plain lines are
written instead: at the start, at each quarter, and at the end.

Example:
    >>> bar = progress_bar(total=200, desc="fine-tuning (bf16)", unit="step")
    >>> bar.update(1); bar.set_postfix(loss="2.301")
    >>> bar.close()
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

# The plain writer reports at these fractions of the total (and at the end).
PLAIN_MILESTONES = (0.25, 0.5, 0.75)


def is_interactive(stream: TextIO | None = None) -> bool:
    """True in a Jupyter/Colab kernel, or when ``stream`` (default stderr) is a terminal."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and "IPKernelApp" in getattr(shell, "config", {}):
            return True
    except ImportError:
        pass
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
) -> Any:
    """A tqdm bar when the output is interactive, a few plain lines otherwise, or a silent stand-in.

    The result supports what the library uses of tqdm: iteration, ``update``,
    ``set_postfix``, ``set_postfix_str`` and ``close``.
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if enabled and is_interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, enabled=enabled)


class PlainProgress:
    """Writes a line at the start, at each quarter and at the end; nothing at all when disabled."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None,
        desc: str,
        unit: str,
        initial: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = initial
        self.enabled = enabled
        self.stream = stream
        self.postfix = ""
        self._next_milestone = 0
        self._start_s = time.perf_counter()
        self._closed = False
        self._skip_milestones_below(initial)
        self._write()

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable if self.iterable is not None else ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self._next_milestone < len(PLAIN_MILESTONES):
            if self.n >= PLAIN_MILESTONES[self._next_milestone] * self.total and self.n < self.total:
                self._skip_milestones_below(self.n)
                self._write()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._write(done=True)

    def _skip_milestones_below(self, n: int) -> None:
        while (
            self.total
            and self._next_milestone < len(PLAIN_MILESTONES)
            and n >= PLAIN_MILESTONES[self._next_milestone] * self.total
        ):
            self._next_milestone += 1

    def _write(self, done: bool = False) -> None:
        if not self.enabled:
            return
        count = f"{self.n}/{self.total}" if self.total else str(self.n)
        line = f"{self.desc}: {count} {self.unit}s" if self.desc else f"{count} {self.unit}s"
        if done:
            line += f" in {time.perf_counter() - self._start_s:.1f} s"
        if self.postfix:
            line += f" ({self.postfix})"
        print(line, file=self.stream if self.stream is not None else sys.stderr, flush=True)
