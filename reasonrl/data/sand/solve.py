"""The solve stage: N independent solutions per problem, each asked to box its final answer.

As in SAND-Math (`--n`, "Please reason step by step, and put your final answer within \\boxed{}"):
every solution is its own call with its own seed. Nothing is judged here; a problem is dropped
only when the server refuses a request for it (a problem too long for the solver's context).
"""

from __future__ import annotations

from dataclasses import replace

from . import prompts
from .calls import Call, ask, llm_client
from .problem import Problem, Verdict


def solution_key(problem_id: str, j: int) -> str:
    return f"{problem_id}/{j}"


def solve(ctx, name: str, todo: list[Problem]) -> list[Verdict]:
    cfg = ctx.recipe.solve
    calls = [Call(solution_key(p.id, j), prompts.solve(p.problem, cfg.system_prompt)) for p in todo for j in range(cfg.n)]
    answers = ask(ctx, name, lambda: llm_client(cfg), calls)
    verdicts = []
    for p in todo:
        rows = [answers[solution_key(p.id, j)] for j in range(cfg.n)]
        refused = next((r for r in rows if "rejected" in r), None)
        if refused is not None:
            verdicts.append(Verdict.drop(p, "request rejected by the server", refused["rejected"]))
            continue
        solutions = [{"text": r["text"], "finish_reason": r["finish_reason"]} for r in rows]
        verdicts.append(Verdict.keep(replace(p, solutions=solutions)))
    return verdicts
