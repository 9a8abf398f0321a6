"""Test-time scaling: pick one of N sampled solutions by a verifier, accuracy against N.

Selection rules (each a pure function of N candidates):
- `majority`: the most frequent final answer (self-consistency), answers equal in value counted as
  one (`envs/math/quick.answer_key`: `\\frac{1}{2}`, `1/2`, `0.5`); ties go to the first candidate drawn;
- `prm-<agg>`: the candidate whose step scores aggregate highest (min, mean, last, product; Athena-PRM,
  Qwen2.5-Math-PRM report best-of-N with such aggregations);
- `prm-vote`: PRM-weighted majority vote, each answer's weight the sum of its candidates' `vote_by` scores;
- `orm`: the candidate an outcome reward model scores highest;
- `oracle`: any candidate correct (pass@N), the ceiling of every rule.

Curves come from one pool of M >= N samples per problem: each bootstrap trial resamples the problems
with replacement and draws N of each problem's M candidates without replacement; a rule's accuracy
is its mean over trials, the interval the 2.5 and 97.5 percentiles of the trials' accuracies.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

from reasonrl.envs.math.quick import answer_key
from reasonrl.reward.prm.scoring import AGGREGATIONS, aggregate


@dataclass
class Candidate:
    answer: str | None  # the extracted final answer; None when there is none
    correct: bool
    step_scores: list[float] = field(default_factory=list)  # the PRM's
    orm_score: float | None = None


Rule = Callable[[Sequence[Candidate]], Candidate]


def majority(cands: Sequence[Candidate], weight: Callable[[Candidate], float] = lambda c: 1.0) -> Candidate:
    totals: dict[str, float] = defaultdict(float)
    keys = [None if c.answer is None else answer_key(c.answer) for c in cands]
    for c, key in zip(cands, keys):
        if key is not None:
            totals[key] += weight(c)
    if not totals:
        return cands[0]
    best = max(totals.values())
    return next(c for c, key in zip(cands, keys) if key is not None and totals[key] == best)


def rules(vote_by: str = "min", with_orm: bool = False) -> dict[str, Rule]:
    out: dict[str, Rule] = {"majority": majority}
    for name in AGGREGATIONS:
        out[f"prm-{name}"] = lambda cs, name=name: max(cs, key=lambda c: aggregate(c.step_scores, name))
    out["prm-vote"] = lambda cs: majority(cs, lambda c: aggregate(c.step_scores, vote_by))
    if with_orm:
        out["orm"] = lambda cs: max(cs, key=lambda c: c.orm_score)
    out["oracle"] = lambda cs: next((c for c in cs if c.correct), cs[0])
    return out


def curves(pools: Sequence[Sequence[Candidate]], ns: Sequence[int], rule_set: dict[str, Rule], trials: int = 200,
           seed: int = 0) -> dict[str, dict[int, dict[str, float]]]:
    """{rule: {N: {"accuracy", "low", "high"}}} over `trials` bootstrap trials."""
    if not pools or min(len(p) for p in pools) < max(ns):
        raise ValueError(f"every problem needs at least N={max(ns)} candidates, the smallest pool has "
                         f"{min((len(p) for p in pools), default=0)}")
    rng = random.Random(seed)
    per_trial: dict[str, dict[int, list[float]]] = {r: {n: [] for n in ns} for r in rule_set}
    for _ in range(trials):
        problems = [pools[rng.randrange(len(pools))] for _ in pools]
        for n in ns:
            drawn = [rng.sample(list(p), n) for p in problems]
            for name, rule in rule_set.items():
                per_trial[name][n].append(sum(rule(d).correct for d in drawn) / len(drawn))
    return {name: {n: _summary(acc) for n, acc in by_n.items()} for name, by_n in per_trial.items()}


def _summary(accuracies: list[float]) -> dict[str, float]:
    s = sorted(accuracies)
    return {"accuracy": sum(s) / len(s), "low": s[int(0.025 * (len(s) - 1))], "high": s[int(round(0.975 * (len(s) - 1)))]}
