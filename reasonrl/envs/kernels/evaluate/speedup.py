"""The parent's side of GPU timing: which verdicts get timed, and what the timings make of them.

A candidate is timed when it passed, the task is one of ours with timing shapes, and a GPU is
in use. Timing jobs run one at a time on a pool of their own (one worker: two timings on one
GPU would disturb each other), after every correctness verdict of the batch is in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from typing import TYPE_CHECKING

import torch

from ..task import KernelTask
from .timing import TimingConfig, speedup, summarize
from .verdict import Verdict

if TYPE_CHECKING:
    from .evaluator import KernelEvaluator


def timing_job(task: KernelTask, source: str, timing: TimingConfig) -> dict:
    dtype = torch.float16 if torch.float16 in task.dtypes else task.dtypes[0]
    return {"kind": "timing", "source": source, "entry": task.entry, "task_id": task.id,
            "expert_source": task.expert_source(), "shapes": [list(s) for s in task.perf_shapes],
            "dtype": str(dtype).removeprefix("torch."), "timing": asdict(timing)}


def time_candidates(evaluator: KernelEvaluator, pairs, verdicts: list[Verdict]) -> None:
    """Replace each timed verdict with one carrying its speedups (or its failure at scale)."""
    for i, ((task, source), verdict) in enumerate(zip(pairs, verdicts)):
        if verdict.exec_ok and isinstance(task, KernelTask) and task.perf_shapes:
            answer = evaluator.run_timing(timing_job(task, source, evaluator.timing_config))
            verdicts[i] = apply_timing(verdict, answer)


def apply_timing(verdict: Verdict, answer: dict | None) -> Verdict:
    if answer is None or answer.get("error"):
        reason = "no answer" if answer is None else answer["error"]
        return replace(verdict, flags=[*verdict.flags, f"timing failed: {reason}"[:300]])
    if answer.get("mismatch"):
        return replace(verdict, status="wrong_output", message=f"correct on the test shapes, wrong at scale: "
                       f"{answer['mismatch']}"[:3000])
    if not _valid_samples(answer.get("samples")):  # forged or broken clocks: no speedup, never a NaN
        return replace(verdict, flags=[*verdict.flags, "timing failed: samples missing, non-finite or not positive"])
    stats = {party: [summarize(s) for s in per_shape] for party, per_shape in answer["samples"].items()}
    means = {party: [s["mean_ms"] for s in per_shape] for party, per_shape in stats.items()}
    return Verdict(**{**asdict(verdict), "speedup": speedup(means["reference"], means["candidate"]),
                      "expert_speedup": speedup(means["expert"], means["candidate"]), "timings": stats,
                      "flags": list(verdict.flags)})


def _valid_samples(samples) -> bool:
    """Every party timed on every shape, each sample a finite positive number of milliseconds."""
    try:
        per_party = [samples[p] for p in ("reference", "expert", "candidate")]
        return all(shape and all(isinstance(ms, (int, float)) and math.isfinite(ms) and ms > 0 for ms in shape)
                   for shapes in per_party for shape in shapes) and all(per_party)
    except (KeyError, TypeError):
        return False
