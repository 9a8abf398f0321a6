"""One trajectory's memory: its attempts, its passing candidates, and the debugger's error streak.

GEAK's memory (geak.md §1.2 step 5) keeps, per kernel, the passing codes with their timings
(the optimizer's ancestors) and the current line being repaired. The debugger here watches the
error itself: when `max_repeated` verdicts in a row fail with the same error signature (status
and message with numbers and quoted values masked), the line is dropped: the next generation
starts from the task again, told which error to avoid, or, when passing candidates exist, from
the optimizer. GEAK instead counts failed tries while perf candidates exist (`max_perf_debug_num`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NUMBERS = re.compile(r"\b\d+(\.\d+)?(e[-+]?\d+)?\b")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


@dataclass
class Attempt:
    iteration: int
    code: str | None
    status: str
    feedback: str
    passed: bool
    speedup: float | None = None
    expert_speedup: float | None = None
    reflection: str = ""


def error_signature(status: str, feedback: str) -> str:
    """The kind of error, not its numbers: "wrong_output: case _x_-float16-s_: _ of _ values..."."""
    last = [line for line in feedback.strip().splitlines() if line.strip()][-1:] or [""]
    return f"{status}: {_QUOTED.sub('_', _NUMBERS.sub('_', last[0]))[:200]}"


@dataclass
class Trajectory:
    task: object
    index: int
    max_repeated: int = 3
    attempts: list[Attempt] = field(default_factory=list)
    passing: list[Attempt] = field(default_factory=list)
    last: Attempt | None = None  # the attempt the next generation repairs (None: start from the task)
    restart_note: str = ""
    streak: tuple[str, int] = ("", 0)
    resets: int = 0
    skipped: str = ""  # why the task cannot be judged (its reference failed): the trajectory is closed

    @property
    def solved_at(self) -> int | None:
        return next((a.iteration for a in self.attempts if a.passed), None)

    def record(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        if attempt.status == "not_judged":  # the evaluator's hiccup, not an answer: the next try repairs the same line
            return
        self.restart_note = ""
        if attempt.status == "task_error":  # nothing a next attempt could change
            self.skipped = attempt.feedback
            return
        if attempt.passed:
            self.passing.append(attempt)
            self.last, self.streak = attempt, ("", 0)
            return
        signature = error_signature(attempt.status, attempt.feedback)
        count = self.streak[1] + 1 if signature == self.streak[0] else 1
        self.streak = (signature, count)
        self.last = attempt
        if count >= self.max_repeated:  # the debugging trap: drop this line
            self.resets += 1
            self.streak, self.last = ("", 0), None
            self.restart_note = (f"Earlier attempts failed {count} times in a row with the same error:\n"
                                 f"{attempt.feedback[-800:]}\nStart over with a different approach.")
