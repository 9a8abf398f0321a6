"""The rate stage: K LLM difficulty ratings per problem, averaged and snapped to the 0.5 grid.

As in SAND-Math's `diffrating.py`: the rater sees the problem and a solution (cut to
`max_solution_chars`, its start) and answers on the AoPS-style 1-10 scale in 0.5 steps with a
summary in `<S>`, the rating in `<D>` and a justification in `<R>`; K=3 ratings at temperature
0.5 are averaged and snapped to the nearest 0.5. Departures: the solution shown is the first one
that agreed with the reference (the paper: `solution_1`); ratings that cannot be read are left
out of the mean, and a problem with none is dropped; `min_rating`/`max_rating` can filter.
"""

from __future__ import annotations

from dataclasses import replace

from . import parse, prompts
from .calls import Call, ask, llm_client
from .problem import Problem, Verdict


def rate(ctx, name: str, todo: list[Problem]) -> list[Verdict]:
    cfg = ctx.recipe.rate
    calls = []
    for p in todo:
        shown = (p.chosen_solution() or {"text": p.solution})["text"][:cfg.max_solution_chars]
        calls += [Call(f"{p.id}/{k}", prompts.rate(p.problem, shown)) for k in range(cfg.ratings)]
    answers = ask(ctx, name, lambda: llm_client(cfg), calls)
    return [rated(p, [answers[f"{p.id}/{k}"] for k in range(cfg.ratings)], cfg) for p in todo]


def rated(p: Problem, answers: list[dict], cfg) -> Verdict:
    values, reasons = [], []
    for answer in answers:
        if "rejected" in answer:
            return Verdict.drop(p, "request rejected by the server", answer["rejected"])
        value, why = parse.score(answer["text"], answer["finish_reason"])
        if value is None:
            reasons.append(why)
        else:
            values.append(value)
    if not values:
        return Verdict.drop(p, "no readable rating", "; ".join(dict.fromkeys(reasons)))
    rating = parse.snap(sum(values) / len(values))
    p = replace(p, ratings=values, rating=rating)
    if cfg.min_rating is not None and rating < cfg.min_rating:
        return Verdict.drop(p, "rated below min_rating", f"{rating:g} < {cfg.min_rating:g}")
    if cfg.max_rating is not None and rating > cfg.max_rating:
        return Verdict.drop(p, "rated above max_rating", f"{rating:g} > {cfg.max_rating:g}")
    return Verdict.keep(p)
