"""What every stage shares: the run's context, and `run_stage`, which makes a stage resumable.

A stage is a function `decide(ctx, name, problems) -> [Verdict]` over the problems it has not
decided yet. `run_stage` gives it only those (the ones `ledger/NAME.jsonl` lacks), appends its
verdicts to that ledger, and returns the kept problems in input order, read back from the ledger,
so a resumed run and an uninterrupted one hand the next stage the same list. It then accounts
for the stage (accounting.py) from the ledgers: every input, every drop and its reason, every
answered call, over all the runs that built this directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .accounting import StageReport, stage_report
from .calls import Stopped
from .ledger import Ledger
from .problem import Problem, Verdict
from .recipe import Recipe

Decide = Callable[["Context", str, list[Problem]], list[Verdict]]


@dataclass
class Context:
    recipe: Recipe
    out: Path
    stop: Callable[[], bool] = lambda: False
    reports: list[StageReport] = field(default_factory=list)
    _ledgers: dict[tuple[str, str], Ledger] = field(default_factory=dict)
    _verifier: object = None

    def ledger(self, kind: str, name: str) -> Ledger:
        """`OUT/KIND/NAME.jsonl`: "ledger" (verdicts by problem id), "calls" (answers by call key),
        "verdicts" (the math verifier's, by call key)."""
        if (kind, name) not in self._ledgers:
            self._ledgers[(kind, name)] = Ledger(self.out / kind / f"{name}.jsonl", "id" if kind == "ledger" else "key")
        return self._ledgers[(kind, name)]

    @property
    def verifier(self):
        """The math verifier (its worker pool starts on first use; `close` stops it)."""
        if self._verifier is None:
            from reasonrl.envs.math import MathVerifier

            cfg = self.recipe.consistency
            self._verifier = MathVerifier(workers=cfg.verifier_workers, timeout=cfg.verifier_timeout)
        return self._verifier

    def close(self) -> None:
        if self._verifier is not None:
            self._verifier.close()


def run_stage(ctx: Context, name: str, problems: list[Problem], decide: Decide) -> list[Problem]:
    """The kept problems of stage `name` over `problems` (see the module docstring)."""
    start = time.monotonic()
    ledger = ctx.ledger("ledger", name)
    todo = [p for p in problems if p.id not in ledger]
    if ctx.stop():
        raise Stopped(name)
    if todo:
        verdicts = decide(ctx, name, todo)
        # keyed by the input's id: a stage may hand on a new problem (hike: ORIGINAL.h)
        ledger.append({**v.row(), "id": p.id} for p, v in zip(todo, verdicts, strict=True))
    missing = [p.id for p in problems if p.id not in ledger]
    if missing:  # a stage must decide every problem it is given
        raise RuntimeError(f"{name} left {len(missing)} problems undecided (first: {missing[0]})")
    report = stage_report(ctx, name, problems, ledger, time.monotonic() - start)
    ctx.reports.append(report)
    return [Problem.from_dict(ledger.rows[p.id]["problem"]) for p in problems if ledger.rows[p.id]["kept"]]
