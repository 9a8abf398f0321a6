"""`Progress`: a heartbeat line on stderr for a long loop over a known number of items.

    progress = Progress("generate", len(prompts), "prompts")
    for ... :
        progress.update(done)      # `generate: 37/500 prompts done (12.3 s)` every `every` seconds
    progress.close()               # the last count, if a line was printed and did not show it

On a terminal the line is rewritten in place; to anything else (a log file, a CI console) each
update is a whole line. Nothing is printed before `every` seconds have passed, so a quick job stays
silent (unless `final`); `every=0` prints at every update (deterministic, for tests),
`every=inf` never. Stdout is left alone: it carries results.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, TextIO

EVERY = 5.0
"""Default seconds between lines."""
LIVE_EVERY = 0.5
"""Seconds between rewrites of an in-place line, for `every=None`."""


def check_interval(value: float | str) -> float:
    """`value` (a number or its text) as seconds between progress lines: >= 0, inf allowed; else ValueError."""
    try:
        seconds = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not seconds >= 0:  # (NaN too)
        raise ValueError(f"progress interval must be a number of seconds >= 0 (inf: none), got {value!r}")
    return seconds


class Progress:
    """`label: done/total unit done (elapsed s, detail)`. `done`: items finished before this
    process started (resumed), counted in the line but not in `rate()`. `every=None`: LIVE_EVERY
    on a terminal, EVERY otherwise. `final`: `close` prints the last count even when nothing was
    printed before; `enabled=False` prints nothing at all. `detail` (or a subclass's `detail()`)
    makes what follows the time, called only when a line is printed: updates on a hot path cost a
    clock read."""

    def __init__(self, label: str, total: int, unit: str = "items", *, done: int = 0, every: float | None = EVERY,
                 stream: TextIO | None = None, final: bool = False, enabled: bool = True,
                 detail: Callable[[], str] | None = None):
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.live = bool(self.stream.isatty())
        except (AttributeError, ValueError):  # (no isatty, or a closed stream)
            self.live = False
        self.every = math.inf if not enabled else (LIVE_EVERY if self.live else EVERY) if every is None \
            else check_interval(every)
        self.final, self._detail = final and enabled, detail
        self.label, self.total, self.unit, self.done, self.resumed = label, total, unit, done, done
        self.start = self.last = time.monotonic()
        self.printed = self.pending = False  # a line was printed / an update was not shown
        self.width = 0

    def rate(self) -> float:
        """Items per second finished by this process."""
        seconds = time.monotonic() - self.start
        return (self.done - self.resumed) / seconds if seconds > 0 else 0.0

    def update(self, done: int) -> None:
        """`done` items of `total` are finished (a count, not an increment)."""
        self.done, self.pending = done, True
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._write(now)

    def detail(self) -> str:
        """What follows the time in a line."""
        return self._detail() if self._detail is not None else ""

    def close(self) -> None:
        """Show the last update if a line was printed and missed it, or if `final` and none was; end the line."""
        if (self.printed and self.pending) or (self.final and not self.printed):
            self._write(time.monotonic())
        if self.width:  # (a line in place)
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0  # (closing twice ends the line once)

    def _write(self, now: float) -> None:
        detail = self.detail()
        extra = f", {detail}" if detail else ""
        text = f"{self.label}: {self.done}/{self.total} {self.unit} done ({now - self.start:.1f} s{extra})"
        self.stream.write("\r" + text.ljust(self.width) if self.live else text + "\n")
        self.stream.flush()
        self.width = len(text) if self.live else 0
        self.printed, self.pending = True, False
