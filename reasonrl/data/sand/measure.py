"""The measure stage: empirical difficulty, 1 minus the pass rate of a reference policy over k samples.

An LLM's rating says how hard a problem looks; this says how hard it is for a named policy. Each
problem goes to the reference policy `k` times (reasonrl eval's harness: our engine in process,
or any OpenAI-compatible endpoint; seeded, resumable in `measure/NAME/`), each sample is scored
by the math verifier against the problem's reference answer, and

    empirical_difficulty = 1 - correct / k     (0: always solved, 1: never)

is recorded next to the rating, and can filter (`min_difficulty`, `max_difficulty`). Not in
SAND-Math; with no `measure.model` the stage keeps every problem unmeasured.

The samples go to `measure/NAME/`, an eval run directory, which holds samples of one set of
settings. A recipe changed with --accept-changes (another k, temperature, model...) applies to the
problems not yet measured: their samples go to `measure/NAME/settings-DIGEST/`, and the problems
already decided keep their verdicts and their samples.

A sample the policy's server refuses (HTTP 400: the problem too long for its context) drops its
problem, as the other stages do: the refusal is recorded in `calls/NAME.jsonl` (keyed by problem
id and sample index), so a rerun does not ask for that problem again. Samples that failed
otherwise end the stage with StageIncomplete, and a rerun asks for them again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from reasonrl.envs.base import Prompt
from reasonrl.envs.math import MathEnvironment
from reasonrl.eval import EvalConfig, IncompleteEval, evaluate
from reasonrl.eval.jobs import Failure, Job
from reasonrl.eval.store import SETTINGS_FILE, read_json, read_samples

from . import prompts
from .calls import StageIncomplete, Stopped
from .problem import Problem, Verdict
from .solve import solution_key


def measure(ctx, name: str, todo: list[Problem]) -> list[Verdict]:
    cfg = ctx.recipe.measure
    if cfg.model is None:
        return [Verdict.keep(p) for p in todo]
    asked = [p for p in todo if p.id not in refusals(ctx, name)]  # a refused problem is not asked again
    correct = pass_counts(ctx, name, asked) if asked else {}
    refused = refusals(ctx, name)  # with this run's
    return [Verdict.drop(p, "request rejected by the server", refused[p.id]) if p.id in refused
            else judged(p, correct[p.id], cfg) for p in todo]


def pass_counts(ctx, name: str, todo: list[Problem]) -> dict[str, int]:
    """problem id -> correct samples out of k (asking the policy only for samples not yet on disk)."""
    cfg, out = ctx.recipe.measure, ctx.out / "measure" / name
    env = MathEnvironment([Prompt(p.id, prompts.solve(p.problem, cfg.system_prompt), answer=p.answer) for p in todo],
                          name=benchmark_name(name, cfg.system_prompt), verifier=ctx.verifier)
    options = dict(base_url=cfg.base_url, n=cfg.k, k=[1], temperature=cfg.temperature, top_p=cfg.top_p,
                   max_tokens=cfg.max_tokens, seed=ctx.recipe.run.seed, chat=cfg.chat, concurrency=cfg.concurrency,
                   api_key_env=cfg.api_key_env, progress=ctx.recipe.run.progress)
    if cfg.base_url is None and cfg.device:
        options["engine_kwargs"] = {"device": cfg.device}
    config = EvalConfig(env, cfg.model, out, **options)
    config = replace(config, out=samples_dir(out, config.settings()))
    try:
        summary = evaluate(config, ctx.stop)
    except IncompleteEval as exc:
        record_refusals(ctx, name, exc.failures)
        failed = [f for _, f in exc.failures if not f.rejected]
        if failed:
            raise StageIncomplete(f"{name}: {len(failed)} policy samples failed after their retries (first error: "
                                  f"{failed[0].error}); the others are saved: rerun the same command to ask again") \
                from None
        summary = exc.summary
    if summary.get("stopped"):
        raise Stopped(name)
    correct = {p.id: 0 for p in todo}
    for row in read_samples(Path(config.out) / "samples.jsonl"):
        if row["problem_id"] in correct and row["sample"] < cfg.k and row["reward"] >= 1.0:
            correct[row["problem_id"]] += 1
    return correct


def benchmark_name(name: str, system_prompt: str | None) -> str:
    """The eval run's benchmark name: the stage's, plus a digest of the system prompt when it is not
    the default. The name is part of the eval settings, so an accepted change of system prompt puts
    the problems not yet measured in a `settings-DIGEST/` directory of their own (their samples
    under the old prompt would not be theirs); the default keeps the names of earlier runs."""
    if system_prompt == prompts.SOLVE_SYSTEM:
        return name
    digest = hashlib.blake2b(json.dumps(system_prompt).encode(), digest_size=4).hexdigest()
    return f"{name}+system-{digest}"


def refusals(ctx, name: str) -> dict[str, str]:
    """problem id -> the server's message, for the problems whose samples it refused."""
    rows = ctx.ledger("calls", name).rows.values()
    return {row["key"].rsplit("/", 1)[0]: row["rejected"] for row in rows if "rejected" in row}


def record_refusals(ctx, name: str, failures: list[tuple[Job, Failure]]) -> None:
    ctx.ledger("calls", name).append({"key": solution_key(job.prompt.id, job.sample), "rejected": failure.error}
                                     for job, failure in failures if failure.rejected)


def samples_dir(out: Path, settings: dict[str, Any]) -> Path:
    """`out` for the settings of its first samples (or when it has none), else a directory of its
    own for these settings inside it (see the module docstring)."""
    stored, samples = out / SETTINGS_FILE, out / "samples.jsonl"
    if not (stored.exists() and samples.exists() and samples.stat().st_size):  # nothing binds it yet
        return out
    if read_json(stored) == json.loads(json.dumps(settings)):  # compared as stored
        return out
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=6).hexdigest()
    return out / f"settings-{digest}"


def judged(p: Problem, correct: int, cfg) -> Verdict:
    difficulty = 1.0 - correct / cfg.k
    p = replace(p, empirical_difficulty=difficulty, passes=correct, samples=cfg.k)
    if cfg.min_difficulty is not None and difficulty < cfg.min_difficulty:
        return Verdict.drop(p, "empirically too easy", f"difficulty {difficulty:.2f} < {cfg.min_difficulty:g}")
    if cfg.max_difficulty is not None and difficulty > cfg.max_difficulty:
        return Verdict.drop(p, "empirically too hard", f"difficulty {difficulty:.2f} > {cfg.max_difficulty:g}")
    return Verdict.keep(p)
