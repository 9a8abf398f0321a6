"""Speedup statistics: how timing samples become one number per kernel, and kernels a report.

Per kernel (GEAK's definition, geak.md §2.3): speedup = sum over timing shapes of the reference's
time / sum of the candidate's. Each shape's time is the mean of its samples after Tukey's
outlier rejection (outside [Q1 - 1.5 IQR, Q3 + 1.5 IQR]); samples come from interleaved rounds
(reference, expert, candidate, then the reverse order), so a slow drift of the GPU's clock or a
noisy neighbour hits all three alike.

Over kernels, four ways (geak.md §6.3), none dropping a kernel:

- `mean_speedup_correct`: GEAK's arithmetic mean over correct kernels, for comparison with it;
- `geomean_speedup`: geometric mean over all tasks, a failed kernel counted as 1.0 (the
  PyTorch reference is what runs when the kernel is wrong);
- `fast_1`, `fast_2`: KernelBench's fast_p, the share of all tasks that are correct and faster
  than the reference by more than p (fast_0 is execution accuracy);
- `faster_than_expert`: how many correct kernels beat the expert solution.

Speedups of 10x or more are listed in `flagged` for a person to look at; they stay in every
mean (GEAK's evaluator silently dropped them).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from .verdict import SUSPICIOUS_SPEEDUP


@dataclass(frozen=True)
class TimingConfig:
    warmup: int = 25
    """Untimed calls per party before the first round (compilation, autotuning, caches)."""
    reps: int = 20
    """Timed calls per party per round."""
    rounds: int = 10
    """Interleaved rounds: reference, expert, candidate, then in reverse order, and so on."""
    input_sets: int = 3
    """Distinct input sets rotated through one set of buffers, each call's floating-point inputs
    scaled anew (speed.py), so results cannot be cached by pointer or by contents."""
    checked_calls: int = 3
    """Per timing shape, how many of the candidate's timed calls, chosen at random, have their outputs
    compared with the reference's on the same inputs."""
    flush_cache: bool = True
    """Overwrite a 256 MiB buffer before every timed call so no call starts with a warm L2."""

    def __post_init__(self):
        if min(self.reps, self.rounds, self.input_sets, self.checked_calls) < 1 or self.warmup < 0:
            raise ValueError("timing: reps, rounds, input_sets and checked_calls must be >= 1, warmup >= 0")


def round_order(parties: Sequence[str], round_index: int) -> list[str]:
    """Who is timed in which order in a round: as given in even rounds, reversed in odd ones."""
    return list(parties) if round_index % 2 == 0 else list(parties)[::-1]


def reject_outliers(samples: Sequence[float]) -> list[float]:
    """Samples inside Tukey's fences; fewer than 4 samples are all kept."""
    if len(samples) < 4:
        return list(samples)
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    low, high = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    return [s for s in samples if low <= s <= high]


def summarize(samples: Sequence[float]) -> dict[str, float]:
    kept = reject_outliers(samples)
    mean = statistics.fmean(kept)
    std = statistics.pstdev(kept) if len(kept) > 1 else 0.0
    return {"mean_ms": mean, "median_ms": statistics.median(kept), "cv": std / mean if mean > 0 else 0.0,
            "samples": len(samples), "rejected": len(samples) - len(kept)}


def speedup(reference_ms: Sequence[float], candidate_ms: Sequence[float]) -> float:
    """Total reference time over total candidate time, across shapes."""
    total = sum(candidate_ms)
    return sum(reference_ms) / total if total > 0 else math.inf


@dataclass(frozen=True)
class KernelResult:
    task_id: str
    correct: bool
    speedup: float | None = None  # None: not timed (no GPU, or no timing shapes)
    expert_speedup: float | None = None


def aggregate(results: Sequence[KernelResult]) -> dict[str, object]:
    """The four summaries of the module docstring, over every task given."""
    timed = [r for r in results if r.correct and r.speedup is not None]
    n = len(results)
    if not n:
        return {"tasks": 0}
    logs = [math.log(r.speedup) if r.correct and r.speedup is not None and r.speedup > 0 else 0.0 for r in results]
    return {
        "tasks": n,
        "correct": sum(r.correct for r in results),
        "timed": len(timed),
        "mean_speedup_correct": statistics.fmean(r.speedup for r in timed) if timed else None,
        "geomean_speedup": math.exp(statistics.fmean(logs)) if timed else None,
        "fast_0": sum(r.correct for r in results) / n,
        "fast_1": sum(r.speedup > 1 for r in timed) / n if timed else None,
        "fast_2": sum(r.speedup > 2 for r in timed) / n if timed else None,
        "faster_than_expert": sum(r.expert_speedup is not None and r.expert_speedup > 1 for r in timed),
        "flagged": [r.task_id for r in timed if r.speedup >= SUSPICIOUS_SPEEDUP],
    }
