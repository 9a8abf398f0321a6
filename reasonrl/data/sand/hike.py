"""Difficulty Hiking: rewrite a rated problem so that it depends on a sampled theorem and concept.

As in SAND-Math's `diffhiking_guided.py`: for each problem rated within [min_rating, max_rating]
a central theorem is drawn from its branch and a supporting concept from any branch (topics.py,
seeded per problem, so a resumed run draws the same), and the rewriter is asked for an
olympiad-level problem that critically depends on them, theorem unnamed, several non-trivial
steps, one numerical answer, in `<Q>`/`<S>`, shown the original, its reference solution (cut to
20k characters) and its rating (as the dataset card says). The hiked problem (id `ORIGINAL.h`)
then goes through solve, consistency, dedupe (against the base set too), decontaminate, rate and
measure again, like any candidate.

Problems outside the rating window are not hiked: the stage counts them as such (they stay in the
base set).
"""

from __future__ import annotations

import random

from . import prompts
from .calls import Call, ask, llm_client
from .problem import Problem, Verdict
from .source import read_problem
from .topics import load_topics

MAX_SOLUTION_CHARS = 20_000


def shown_solution(p: Problem) -> str:
    """The reference solution (the generator's, short), else the agreeing solution, cut to its start."""
    return (p.solution or (p.chosen_solution() or {}).get("text", ""))[:MAX_SOLUTION_CHARS]


def hike(ctx, name: str, todo: list[Problem]) -> list[Verdict]:
    cfg, seed = ctx.recipe.hike, ctx.recipe.run.seed
    topics = load_topics(cfg.topics)
    chosen, verdicts = {}, {}
    for p in todo:
        if p.rating is not None and not cfg.min_rating <= p.rating <= cfg.max_rating:
            verdicts[p.id] = Verdict.drop(p, "not hiked: rating outside the window",
                                          f"{p.rating:g} not in [{cfg.min_rating:g}, {cfg.max_rating:g}]")
            continue
        theorem, concept = topics.draw(p.branch, random.Random(f"{seed}:hike:{p.id}"))
        chosen[p.id] = Problem(id=f"{p.id}.h", origin="hiked", branch=p.branch, mix=p.mix, hiked_from=p.id,
                               theorem=theorem, concept=concept, source_rating=p.rating)
    calls = [Call(p.id, prompts.hike(p.problem, shown_solution(p), chosen[p.id].theorem, chosen[p.id].concept,
                                     p.rating if cfg.include_rating else None)) for p in todo if p.id in chosen]
    answers = ask(ctx, name, lambda: llm_client(cfg), calls)
    for source_id, new in chosen.items():
        verdicts[source_id] = read_problem(new, answers[source_id], ctx.recipe.generate.max_problem_chars)
    return [verdicts[p.id] for p in todo]
