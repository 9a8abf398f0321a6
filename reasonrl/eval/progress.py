"""One updating stderr line: samples done/total, samples per second, running pass@1, failures."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, done: int, correct: int, *, enabled: bool = True, stream: TextIO | None = None,
                 every: float = 0.2):
        self.total, self.done, self.correct, self.failed = total, done, correct, 0
        self.resumed = done  # finished before this process started: not part of the rate
        self.enabled, self.stream, self.every = enabled, stream or sys.stderr, every
        self.start = self.last = time.monotonic()
        self.width = 0

    def update(self, finished: int, correct: int, failed: int) -> None:
        self.done += finished
        self.correct += correct
        self.failed += failed
        self.refresh()

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < self.every):
            return
        self.last = now
        rate = (self.done - self.resumed) / max(now - self.start, 1e-9)
        line = f"eval {self.done}/{self.total} samples  {rate:.1f}/s"
        if self.done:
            line += f"  pass@1 {self.correct / self.done:.3f}"
        if self.failed:
            line += f"  failed {self.failed}"
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = len(line)

    def close(self) -> None:
        if self.enabled:
            self.refresh(force=True)
            self.stream.write("\n")
            self.stream.flush()
