"""Progress of long work as periodic log lines with count, rate and ETA.

Plain lines rather than a redrawn bar: they read the same in a terminal, a Slurm log file
and the store's log.txt, and never garble when several processes share one output.
"""

from __future__ import annotations

import logging
import time


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress:
    """Counts units of work and logs ``desc: n/total unit (rate/s, ETA h:mm:ss)`` at most
    every ``interval`` seconds, and once at the end."""

    def __init__(
        self, total: int | None, desc: str, unit: str = "items", *, logger: logging.Logger, interval: float = 2.0
    ) -> None:
        self.total, self.desc, self.unit, self.log, self.interval = total, desc, unit, logger, interval
        self.n = 0
        self.start = time.monotonic()
        self._last = self.start

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.log.info(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.n / elapsed
        if self.total:
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            eta_s = _fmt_duration(eta) if eta != float("inf") else "?"
            pct = 100.0 * self.n / self.total
            return f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%, {rate:.1f}/s, ETA {eta_s})"
        return f"{self.desc}: {self.n} {self.unit} ({rate:.1f}/s, {_fmt_duration(elapsed)} elapsed)"

    def close(self) -> None:
        elapsed = time.monotonic() - self.start
        self.log.info(f"{self.desc}: done, {self.n} {self.unit} in {_fmt_duration(elapsed)}")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
