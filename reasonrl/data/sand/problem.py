"""`Problem`: one candidate as it passes through the stages, and `Verdict`: what a stage made of it.

A problem is a plain record (it is written to every stage's ledger as JSON and read back on
resume), so every field is a JSON value. Stages fill fields in as they go: generate sets the text
and the reference solution, solve the independent solutions, consistency the reference answer and
which solutions agree with it, rate the rating, measure the empirical difficulty, hike the
theorem and concept a hiked problem was built on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Problem:
    id: str
    origin: str  # "generated", "seed" (from run.seed_problems) or "hiked"
    branch: str | None = None  # the primary topic branch it was generated for
    mix: str | None = None  # the other branch the generator was asked to mix in
    problem: str = ""
    solution: str = ""  # the reference solution (the generator's <S>, or the seed file's)
    answer: str | None = None  # the reference final answer, once known
    solutions: list[dict[str, Any]] = field(default_factory=list)  # {"text", "finish_reason", "answer"} per solve call
    agreed: list[int] = field(default_factory=list)  # indices of solutions whose final answer agrees with the reference
    ratings: list[float] = field(default_factory=list)  # the parsable LLM ratings
    rating: float | None = None  # their mean, snapped to 0.5
    empirical_difficulty: float | None = None  # 1 - pass rate of the reference policy
    passes: int | None = None  # correct samples of the reference policy
    samples: int | None = None  # its samples
    hiked_from: str | None = None  # the base problem a hiked one was rewritten from
    theorem: str | None = None  # the central theorem the rewrite had to depend on
    concept: str | None = None  # the supporting concept or tool
    source_rating: float | None = None  # the base problem's rating, given to the rewriter

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Problem:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in known})

    def chosen_solution(self) -> dict[str, Any] | None:
        """The first solution that agrees with the reference and was not cut off."""
        for j in self.agreed:
            if self.solutions[j].get("finish_reason") != "length":
                return self.solutions[j]
        return None


@dataclass(frozen=True)
class Verdict:
    """A stage's decision about one problem: kept (with its updated record) or dropped, and why."""

    problem: Problem
    kept: bool
    reason: str | None = None  # a short category, counted in the accounting ("no <Q> tag", ...)
    detail: str | None = None  # what exactly (an excerpt, the server's message, the duplicate's id)

    @classmethod
    def keep(cls, problem: Problem) -> Verdict:
        return cls(problem, True)

    @classmethod
    def drop(cls, problem: Problem, reason: str, detail: str | None = None) -> Verdict:
        return cls(problem, False, reason, detail[:300] if detail else detail)

    def row(self) -> dict[str, Any]:
        return {"id": self.problem.id, "kept": self.kept, "reason": self.reason, "detail": self.detail,
                "problem": self.problem.to_dict()}
