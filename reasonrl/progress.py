"""`Progress`: a heartbeat line on stderr for a long loop over a known number of items.

    progress = Progress("generate", len(prompts), "prompts")
    for ... :
        progress.update(done)      # prints `generate: 37/500 prompts done (12.3 s)` every `every` seconds
    progress.close()               # the final count, if anything was printed

Whole lines (no carriage returns), so a log file or a CI console reads them as they are. Nothing is
printed before `every` seconds have passed, so a quick job stays silent; `every=0` prints at every
update (deterministic, for tests), `every=inf` never. Stdout is left alone: it carries results.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

EVERY = 5.0
"""Default seconds between lines."""


class Progress:
    def __init__(self, label: str, total: int, unit: str = "items", *, every: float = EVERY,
                 stream: TextIO | None = None):
        if isinstance(every, bool) or not isinstance(every, (int, float)) or math.isnan(every) or every < 0:
            raise ValueError(f"progress interval must be >= 0 seconds (inf: none), got {every!r}")
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.stream = stream if stream is not None else sys.stderr
        self.start = self.last = time.monotonic()
        self.done, self.shown, self.printed = 0, -1, False

    def update(self, done: int, detail: str = "") -> None:
        """`done` items of `total` are finished (a count, not an increment); `detail` is shown after the time."""
        self.done = done
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._write(now, detail)

    def close(self, detail: str = "") -> None:
        """The final count, when a line was printed before (a quick job prints none) and it showed less."""
        if self.printed and self.shown != self.done:
            self._write(time.monotonic(), detail)

    def _write(self, now: float, detail: str) -> None:
        extra = f", {detail}" if detail else ""
        self.stream.write(f"{self.label}: {self.done}/{self.total} {self.unit} done ({now - self.start:.1f} s{extra})\n")
        self.stream.flush()
        self.shown, self.printed = self.done, True
