"""The export stage: the accepted problems, and SFT examples for `reasonrl sft`.

As in SAND-Math's `traindataPrpe.py`, a problem's training example is a verified solution with
at least `min_solution_words` whitespace-separated words (500 in the paper: short traces are
usually cut off or skipped work), under the system message "Please reason step by step ...".
Departures: the solution is the first one that agreed with the reference and was not cut off
(the paper: `solution_1`); the format is reasonrl's SFT JSONL ({"prompt": chat messages,
"response"}), not Alpaca.

Files (rewritten whole from the ledgers on every run, so a resumed run writes what an
uninterrupted one would):
    problems.jsonl     every accepted problem: text, answer, branch, origin, rating, empirical
                       difficulty, and for hiked ones the source, theorem and concept
    sft.jsonl          one example per accepted problem
    sft_base.jsonl     the base problems' examples    sft_hiked.jsonl   the hiked problems'
"""

from __future__ import annotations

import os
from pathlib import Path

from reasonrl.eval.store import json_line

from . import parse, prompts
from .problem import Problem, Verdict

PROBLEM_FIELDS = ("id", "origin", "problem", "answer", "branch", "rating", "ratings", "empirical_difficulty",
                  "hiked_from", "theorem", "concept", "source_rating")


def export(ctx, name: str, todo: list[Problem]) -> list[Verdict]:
    words = ctx.recipe.export.min_solution_words
    verdicts = []
    for p in todo:
        chosen = p.chosen_solution()
        if chosen is None:
            verdicts.append(Verdict.drop(p, "no agreeing solution that was not cut off"))
        elif len(chosen["text"].split()) < words:
            verdicts.append(Verdict.drop(p, "solution shorter than min_solution_words",
                                         f"{len(chosen['text'].split())} < {words} words"))
        else:
            verdicts.append(Verdict.keep(p))
    return verdicts


def sft_row(p: Problem, cfg) -> dict:
    text = p.chosen_solution()["text"]
    if not cfg.keep_reasoning:
        final, _ = parse.after_reasoning(text)
        text = (final or text).strip()
    return {"id": p.id, "prompt": prompts.solve(p.problem, cfg.system_prompt), "response": text}


def write_files(out: Path, accepted: list[Problem], cfg) -> dict[str, int]:
    """The export files (see the module docstring); how many examples each holds."""
    base, hiked = by_origin(accepted)
    write_jsonl(out / "problems.jsonl", [{k: getattr(p, k) for k in PROBLEM_FIELDS} | {
        "solution": p.chosen_solution()["text"]} for p in accepted])
    for file, group in (("sft.jsonl", accepted), ("sft_base.jsonl", base), ("sft_hiked.jsonl", hiked)):
        write_jsonl(out / file, [sft_row(p, cfg) for p in group])
    return {"all": len(accepted), "base": len(base), "hiked": len(hiked)}


def by_origin(problems: list[Problem]) -> tuple[list[Problem], list[Problem]]:
    """(the base problems: generated or seed, the hiked ones)."""
    return [p for p in problems if p.origin != "hiked"], [p for p in problems if p.origin == "hiked"]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json_line(row))
    os.replace(tmp, path)  # a reader never sees half a file
