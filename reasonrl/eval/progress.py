"""The eval progress line, `eval: 1200/3296 samples done (85.0 s, 14.2/s, pass@1 0.405, 3 failed)`
(reasonrl.progress.Progress); the rate counts only this run's samples, not resumed ones."""

from __future__ import annotations

from typing import TextIO

from reasonrl.progress import Progress


class EvalProgress(Progress):
    def __init__(self, total: int, done: int, correct: int, *, enabled: bool = True, stream: TextIO | None = None):
        super().__init__("eval", total, "samples", done=done, every=None, stream=stream, final=True, enabled=enabled)
        self.correct, self.failed = correct, 0

    def update(self, finished: int, correct: int, failed: int) -> None:
        """Increments: samples finished, of them correct, samples failed."""
        self.correct += correct
        self.failed += failed
        self.done += finished
        super().update(self.done)

    def detail(self) -> str:
        parts = [f"{self.rate():.1f}/s"]
        if self.done:
            parts.append(f"pass@1 {self.correct / self.done:.3f}")
        if self.failed:
            parts.append(f"{self.failed} failed")
        return ", ".join(parts)
