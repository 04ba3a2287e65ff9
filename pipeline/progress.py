"""A progress bar with rate and ETA on stderr; plain lines when stderr is not a terminal (logs, CI)."""

from __future__ import annotations

import sys
import time


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Counts units of work done out of `total`; prints a bar, the rate and the time left."""

    def __init__(self, total: int, desc: str, unit: str, stream=None, min_interval: float = 5.0):
        self.total = max(total, 0)
        self.desc = desc
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.min_interval = 0.2 if self.tty else min_interval
        self.done = 0
        self.start = time.perf_counter()
        self._last = float("-inf")
        self._render(force=True)

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate
        return (self.total - self.done) / rate if rate > 0 else None

    def update(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        self._render(force=self.done == self.total)

    def line(self) -> str:
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        eta = self.eta()
        left = "?" if eta is None else format_seconds(eta)
        elapsed = format_seconds(time.perf_counter() - self.start)
        return (
            f"{self.desc:<8} [{bar:<30}] {self.done}/{self.total} {self.unit} "
            f"{self.rate:.2f}/s elapsed {elapsed} ETA {left}"
        )

    def _render(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        end = "\r" if self.tty and self.done < self.total else "\n"
        self.stream.write(self.line() + end)
        self.stream.flush()
