"""Where problems come from: the generate stage (one call per candidate), and seed problems from a file.

Generation as in SAND-Math's `datageneration.py`: candidate i takes branch i of a seeded shuffle
of the branches (round robin) as its subject and one other branch, drawn per candidate, to mix
in; the teacher returns the problem in `<Q>` and a solution in `<S>`, and the last pair after
any reasoning block is read (parse.py). Everything that cannot be read is dropped with its
reason: cut off at max_tokens, no or empty `<Q>`, no `<S>`, an unclosed reasoning block, a
problem over `max_problem_chars`, a request the server refused.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Callable

from reasonrl.envs.math.extract import reference_answer
from reasonrl.eval.store import jsonl_lines

from . import parse, prompts
from .calls import Call, Stopped, ask, llm_client
from .problem import Problem, Verdict


def slots(recipe, stop: Callable[[], bool] = lambda: False) -> list[Problem]:
    """The candidates to generate: ids and branches, a pure function of the recipe. Stopped when
    `stop()` turns true (a million take seconds to build)."""
    gen, seed = recipe.generate, recipe.run.seed
    order = list(dict.fromkeys(gen.branches))
    random.Random(f"{seed}:branches").shuffle(order)
    out = []
    for i in range(gen.problems):
        if i % 10_000 == 0 and stop():
            raise Stopped("base.generate")
        branch = order[i % len(order)]
        mix = random.Random(f"{seed}:mix:{i}").choice([b for b in order if b != branch])
        out.append(Problem(id=f"g{i:06d}", origin="generated", branch=branch, mix=mix))
    return out


def generate(ctx, name: str, todo: list[Problem]) -> list[Verdict]:
    gen = ctx.recipe.generate
    template = gen.instructions or prompts.TEMPLATES[gen.template]
    calls = [Call(p.id, prompts.generate(template, p.branch, p.mix)) for p in todo]
    answers = ask(ctx, name, lambda: llm_client(gen), calls)
    return [read_problem(p, answers[p.id], gen.max_problem_chars) for p in todo]


def read_problem(problem: Problem, answer: dict, max_chars: int) -> Verdict:
    """A generator's or rewriter's answer as the problem's text and reference solution, or a drop."""
    if "rejected" in answer:
        return Verdict.drop(problem, "request rejected by the server", answer["rejected"])
    parsed, why = parse.problem_and_solution(answer["text"], answer["finish_reason"])
    if parsed is None:
        return Verdict.drop(problem, why, excerpt(answer["text"]))
    question, solution = parsed
    if len(question) > max_chars:
        return Verdict.drop(problem, "problem too long", f"{len(question)} characters")
    return Verdict.keep(replace(problem, problem=question, solution=solution))


def excerpt(text: str, chars: int = 160) -> str:
    """The end of a response on one line (where a missing tag should have been)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= chars else "..." + flat[-chars:]


def load_seed_problems(path: str | Path) -> list[Problem]:
    """Problems from a JSONL file: "problem", and "answer" or "solution"; optional "id", "branch"."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"seed problem file {path} does not exist")
    out, seen = [], set()
    for n, line in enumerate(jsonl_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not valid JSON ({exc})") from None
        problem = seed_problem(row, f"s{n:06d}", f"{path}:{n}")
        if problem.id in seen:
            raise ValueError(f"{path}:{n}: id {problem.id!r} repeats an earlier line's")
        seen.add(problem.id)
        out.append(problem)
    if not out:
        raise ValueError(f"{path}: no problems")
    return out


def seed_problem(row, default_id: str, where: str) -> Problem:
    if not isinstance(row, dict) or not isinstance(row.get("problem"), str) or not row["problem"].strip():
        raise ValueError(f"{where}: needs a non-empty string \"problem\"")
    answer, solution = row.get("answer"), row.get("solution")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float, type(None))):
        raise ValueError(f"{where}: \"answer\" must be a string or a number")
    if isinstance(answer, (int, float)):
        # as the verifier writes a float reference, positionally: str(1e-07) reads as Euler's e minus 7
        answer = reference_answer(answer)
        if answer is None:
            raise ValueError(f"{where}: \"answer\" must be a finite number")
    if answer is None and not isinstance(solution, str):
        raise ValueError(f"{where}: needs an \"answer\" or a \"solution\" string")
    ident = row.get("id", default_id)
    if isinstance(ident, bool) or not isinstance(ident, (str, int)):
        raise ValueError(f"{where}: \"id\" must be a string or an integer")
    branch = row.get("branch")
    return Problem(id=f"s-{ident}" if "id" in row else default_id, origin="seed",
                   branch=branch if isinstance(branch, str) else None, problem=row["problem"].strip(),
                   solution=solution if isinstance(solution, str) else "",
                   answer=answer)
