"""Test-time scaling in `reasonrl eval`: with `--prm DIR` and n > 1 samples per problem, the summary
adds best-of-N accuracy curves (Athena-PRM, arXiv 2506.09532, section on verification).

The n stored samples of each problem are its candidate pool. A process reward model scores every
step of every sample (and an outcome reward model, `--orm DIR`, the whole sample); the rules of
`reward/prm/best_of_n.py` then pick one of N candidates: majority vote, best-of-N by each PRM
aggregation (min, mean, last, product), PRM-weighted vote, the ORM, and the oracle (pass@N). Curves
are bootstrap means with 95% intervals for N = 1, 2, 4, ... up to n. Scoring reads the samples
file only, so `--prm` on a finished run adds the curves without asking for a single new sample.
Steps past a reward model's max_len are left out of its aggregates (not scored 0.0, which read as
"wrong"); `unread` counts the samples that had some, per reward model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from reasonrl.envs.base import Prompt
from reasonrl.reward.prm.best_of_n import Candidate, curves, rules
from reasonrl.reward.prm.scoring import StepScores, aggregate

if TYPE_CHECKING:
    from reasonrl.eval.harness import EvalConfig

Scorer = Callable[[list[tuple[list[dict], str]]], list[StepScores]]  # (messages, response) -> step scores


def sizes(n: int) -> list[int]:
    """N = 1, 2, 4, ... and n itself."""
    return sorted({*(2 ** i for i in range(n.bit_length()) if 2 ** i <= n), n})


def prm_scorer(path: str, device: str | None) -> Scorer:
    from reasonrl.reward.prm.model import load_prm
    from reasonrl.reward.prm.scoring import PRMScorer

    return PRMScorer(*load_prm(path, device=device)).score


def pools(problems: Sequence[tuple[Prompt, list[dict]]], threshold: float, prm: Scorer,
          orm: Scorer | None = None) -> tuple[list[list[Candidate]], dict[str, int]]:
    """Each problem's samples as candidates with their reward models' scores of the steps they read,
    and how many samples each reward model did not read to the end ({"prm": k, "orm": k})."""
    items = [(p.messages, row["response"]) for p, rows in problems for row in rows]
    scored = {"prm": prm(items), **({"orm": orm(items)} if orm else {})}
    outcome = [aggregate(s.read, "last") for s in scored["orm"]] if orm else [None] * len(items)
    out, i = [], 0
    for _, rows in problems:
        out.append([Candidate(row.get("extracted"), row["reward"] >= threshold, scored["prm"][i + j].read,
                              outcome[i + j]) for j, row in enumerate(rows)])
        i += len(rows)
    return out, {name: sum(s.unread for s in steps) for name, steps in scored.items()}


def best_of_n(problems: Sequence[tuple[Prompt, list[dict]]], cfg: EvalConfig, prm: Scorer | None = None,
              orm: Scorer | None = None) -> dict[str, Any]:
    """{"ns", "problems", "unread", "curves": {rule: {N: {accuracy, low, high}}}} over the problems that
    have all `cfg.n` samples, scored by `cfg.prm` and `cfg.orm` (or the scorers given)."""
    complete = [(p, rows) for p, rows in problems if len(rows) >= cfg.n]
    head = {"prm": cfg.prm, "orm": cfg.orm, "vote_by": cfg.vote_by, "trials": cfg.bon_trials, "ns": sizes(cfg.n),
            "problems": len(complete)}
    if not complete:  # e.g. a run stopped early: the summary is still written, without curves
        return {**head, "unread": {}, "curves": {}}
    device = cfg.engine_kwargs.get("device")
    prm = prm or prm_scorer(cfg.prm, device)
    orm = orm or (prm_scorer(cfg.orm, device) if cfg.orm else None)
    candidates, unread = pools(complete, cfg.threshold, prm, orm)
    result = curves(candidates, head["ns"], rules(cfg.vote_by, orm is not None), cfg.bon_trials, cfg.seed)
    return {**head, "unread": unread,
            "curves": {rule: {str(k): v for k, v in by_n.items()} for rule, by_n in result.items()}}


def markdown(scaling: dict[str, Any]) -> list[str]:
    """The curves as a table: one row per rule, one column per N, accuracy [low, high] in percent."""
    if not scaling["curves"]:
        return ["## Test-time scaling (best of N)", "", "No problem has all its samples yet: no curves."]
    ns = [str(k) for k in scaling["ns"]]
    lines = ["## Test-time scaling (best of N)", "",
             f"{scaling['problems']} problems, {scaling['trials']} bootstrap trials; PRM {scaling['prm']}"
             + (f", ORM {scaling['orm']}" if scaling["orm"] else "") + f"; vote weighted by {scaling['vote_by']}."
             + _unread_note(scaling.get("unread", {})), "",
             "| rule | " + " | ".join(f"N={k}" for k in ns) + " |", "|---" * (len(ns) + 1) + "|"]
    for rule, by_n in scaling["curves"].items():
        cells = [f"{100 * by_n[k]['accuracy']:.1f} [{100 * by_n[k]['low']:.1f}, {100 * by_n[k]['high']:.1f}]" for k in ns]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return lines


def _unread_note(unread: dict[str, int]) -> str:
    said = ", ".join(f"{name.upper()} {k}" for name, k in unread.items() if k)
    return f" Samples past a reward model's max_len, ranked on the steps it read: {said}." if said else ""
