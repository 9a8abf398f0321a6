"""`reasonrl data sand RECIPE --out DIR`: the whole pipeline, resumable, with its accounting.

    open the run directory (recipe saved; a changed recipe refused) ->
    base:  generate (+ seed problems) -> solve -> consistency -> dedupe -> decontaminate -> rate -> measure
    hiked: hike -> solve -> consistency -> dedupe (against the base set too) -> decontaminate -> rate -> measure
    export (problems.jsonl, sft*.jsonl) -> accounting (report.json, report.md, plots, console table)

Every stage records its decisions and every answered call as it goes (stage.py, calls.py), so
rerunning the same command after a crash, a kill or Ctrl-C asks only for what is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from reasonrl.rl.run import open_run

from . import accounting
from .consistency import consistency
from .decontam import decontaminate
from .dedupe import dedupe_stage
from .export import by_origin, export, write_files
from .hike import hike
from .measure import measure
from .problem import Problem
from .rate import rate
from .recipe import Recipe, free_keys
from .report import console, write_report
from .solve import solve
from .source import generate, load_seed_problems, slots
from .stage import Context, run_stage


def run_sand(recipe: Recipe, out: str | Path, stop: Callable[[], bool] = lambda: False, *, overwrite: bool = False,
             accept_changes: bool = False, console_output: bool = True) -> dict:
    """Run (or resume) the pipeline into `out`; the summary (also in OUT/report.json). Raises
    calls.Stopped when `stop()` turned true, StageIncomplete or EndpointError when calls failed:
    what finished is saved either way, and rerunning resumes."""
    out = open_run(out, recipe.to_dict(), overwrite=overwrite, accept_changes=accept_changes, free_keys=free_keys(),
                   console=console_output, work=("calls", "ledger"))  # nothing answered or decided: nothing binds
    ctx = Context(recipe, out, stop)
    try:
        base = sources(ctx)
        base, unique = refine(ctx, "base", base, reference=[])
        hiked = run_stage(ctx, "hiked.hike", base, hike) if recipe.hike.enabled else []
        hiked, _ = refine(ctx, "hiked", hiked, reference=unique)
        accepted = run_stage(ctx, "export", base + hiked, export)
    finally:
        ctx.close()
    eval_embeddings = accounting.StageReport("eval-sets.embed", 0, 0)
    for calls in accounting.call_ledgers(out, "eval-sets.embed"):
        accounting.add_calls(eval_embeddings, calls)
    reports = ctx.reports + ([eval_embeddings] if eval_embeddings.embedding_calls else [])
    exported_base, exported_hiked = by_origin(accepted)  # the report describes what was exported
    summary = accounting.summary(reports, exported_base, exported_hiked, base,
                                 write_files(out, accepted, recipe.export))
    report = write_report(out, summary, exported_base, exported_hiked)
    if console_output:
        print(console(summary), file=sys.stderr)
        print(f"report: {report}", file=sys.stderr)
    return summary


def sources(ctx: Context) -> list[Problem]:
    gen = ctx.recipe.generate
    generated = run_stage(ctx, "base.generate", slots(ctx.recipe, ctx.stop), generate) if gen.problems else []
    return generated + (load_seed_problems(gen.seed_problems) if gen.seed_problems else [])


def refine(ctx: Context, name: str, problems: list[Problem], reference: list[Problem]):
    """(the problems that pass every filter, the ones that passed dedupe: the next pass's reference)."""
    problems = run_stage(ctx, f"{name}.solve", problems, solve)
    problems = run_stage(ctx, f"{name}.consistency", problems, consistency)
    unique = run_stage(ctx, f"{name}.dedupe", problems, dedupe_stage(problems, reference))
    problems = run_stage(ctx, f"{name}.decontaminate", unique, decontaminate)
    problems = run_stage(ctx, f"{name}.rate", problems, rate)
    problems = run_stage(ctx, f"{name}.measure", problems, measure)
    return problems, unique
