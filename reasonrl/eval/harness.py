"""`reasonrl eval`: a model on a benchmark, n samples per problem, pass@k, resumable.

    summary = run_eval("ttt:all", model="ckpt/", out="runs/eval-ttt", n=8, temperature=0.6)
    summary = run_eval("math:data/math500.jsonl", model="Qwen/Qwen3-8B", base_url="http://127.0.0.1:8000/v1",
                       out="runs/eval-math", n=4, k=[1, 4], temperature=0.6, max_tokens=8192)

The driver: problems from the environment → the samples `out` lacks → the model (in-process
engine, or an OpenAI-compatible endpoint) → rewards and extracted answers → appended to
samples.jsonl → summary.json and summary.md. See docs/eval.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from reasonrl.config import check_template_kwargs, finite_numbers
from reasonrl.envs.base import Environment, Prompt
from reasonrl.envs.registry import load_environment

from .client import ClientConfig, EndpointError, OpenAIClient, RefusedAll
from .jobs import Completion, Failure, Job, jobs_for
from .progress import EvalProgress
from .store import SampleStore, fingerprint
from .summary import markdown, summarize

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    benchmark: str | Environment = field(metadata={"positional": True})
    """Environment spec: ttt:oTTT, ttt:all, math:FILE.jsonl, jsonl:FILE?..., sums: (or an Environment)."""
    model: str
    """Checkpoint directory (local), or the model name the endpoint serves (with base_url)."""
    out: str | Path
    """Run directory (run.json, samples.jsonl, summary.json, summary.md); rerunning resumes it."""
    base_url: str | None = None
    """OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (default: the local engine)."""
    n: int = 1
    """Samples per problem."""
    k: list[int] = field(default_factory=list)
    """pass@k to report (default: 1 and n; pass@1 is always reported)."""
    temperature: float = 0.0
    """0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling."""
    max_tokens: int = 1024
    """Response tokens per sample."""
    seed: int = 0
    """Sample j of problem p is drawn with seed (crc32(f"{seed}:{p.id}") & 0x3FFFFFFF) + j."""
    limit: int | None = None
    """Problems to use (default: the environment's set: all rows, TTT's published sizes)."""
    split: str = "eval"
    """Generated environments: train | eval (| published for TTT); files ignore it."""
    data_seed: int = 0
    """Which problems (generated sets, or a subset of a file)."""
    chat: bool = True
    """Chat messages (chat template / chat endpoint); --no-chat: their text as a plain prompt (base models)."""
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Variables for the chat template, locally or sent to the endpoint (enable_thinking=false: Qwen3's
    non-thinking mode)."""
    concurrency: int = 16
    """Remote: requests in flight."""
    retries: int = 5
    """Remote: retries of a 5xx / 408 / 429 / timeout / broken connection."""
    backoff: float = 0.5
    """Remote: seconds before the first retry, doubling per attempt (with jitter)."""
    request_timeout: float = 3600.0
    """Remote: seconds per request."""
    api_key_env: str | None = None
    """Remote: the variable holding the API key (default: OPENAI_API_KEY if set)."""
    threshold: float = 1.0
    """A sample is correct when its reward >= threshold."""
    group_by: list[str] | None = None
    """Metadata keys for subset tables (default: chosen from the prompts)."""
    prm: str | None = None
    """A process reward model directory: with n > 1, best-of-N curves (PRM aggregations, PRM-weighted vote,
    majority) for N = 1, 2, 4, ... n in the summary; works on a finished run without new samples."""
    orm: str | None = None
    """With prm: an outcome reward model directory as one more best-of-N rule."""
    vote_by: str = "min"
    """With prm: the step-score aggregation (min, mean, last, product) that weights the PRM-weighted vote."""
    bon_trials: int = 200
    """With prm: bootstrap trials of the best-of-N curves (problems resampled, N of n samples drawn)."""
    progress: bool = True
    """The stderr progress line."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})
    """Local: EngineConfig fields, device, dtype."""

    def __post_init__(self):
        self.out = Path(self.out)
        self.k = tuple(self.k) or (1, self.n)
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        bad = [k for k in self.k if not isinstance(k, int) or not 1 <= k <= self.n]
        if bad:
            raise ValueError(f"k must be between 1 and n={self.n} (pass@k needs at least k samples), got {bad}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be an integer >= 1, got {self.limit!r}")
        finite_numbers(self, at_least={"threshold": -math.inf})
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.prm is not None and self.n < 2:
            raise ValueError(f"prm: best-of-N needs n >= 2 samples per problem, got n={self.n}")
        if self.orm is not None and self.prm is None:
            raise ValueError("orm is a best-of-N rule next to the PRM's: give prm too")
        if self.prm is not None:  # refused now, not after every sample is generated
            from reasonrl.reward.prm.model import PRMConfig
            from reasonrl.reward.prm.scoring import check_aggregations
            check_aggregations([self.vote_by])
            for name in ("prm", "orm"):
                if getattr(self, name) is not None:
                    try:
                        PRMConfig.from_dir(getattr(self, name))
                    except (FileNotFoundError, ValueError) as exc:
                        raise ValueError(f"{name}: {exc}") from None
        if self.chat_template_kwargs and not self.chat:
            raise ValueError("chat_template_kwargs: --no-chat prompts are not rendered with the chat template")
        check_template_kwargs(self.chat_template_kwargs, "chat_template_kwargs")
        if not isinstance(self.bon_trials, int) or self.bon_trials < 1:
            raise ValueError(f"bon_trials must be an integer >= 1, got {self.bon_trials!r}")
        if self.base_url is None and not Path(self.model).is_dir():
            raise FileNotFoundError(f"checkpoint directory {self.model} does not exist (give base_url to evaluate "
                                    "a model behind an endpoint)")

    @property
    def benchmark_name(self) -> str:
        return self.benchmark if isinstance(self.benchmark, str) else self.benchmark.name

    def settings(self) -> dict[str, Any]:
        """What decides a sample: a rerun into the same directory must agree on all of it."""
        model = self.model if self.base_url else str(Path(self.model).resolve())
        return {"benchmark": self.benchmark_name, "model": model, "local": self.base_url is None, "chat": self.chat,
                "temperature": float(self.temperature), "top_p": float(self.top_p), "max_tokens": self.max_tokens,
                "seed": self.seed, "split": self.split, "data_seed": self.data_seed,
                **({"chat_template_kwargs": self.chat_template_kwargs} if self.chat_template_kwargs else {})}


class IncompleteEval(RuntimeError):
    """Some samples failed after their retries; the summary (also on disk) counts the others.
    `failures` names each failed sample (its job) and why (a `Failure`: refused or not)."""

    def __init__(self, message: str, summary: dict[str, Any], failures: list[tuple[Job, Failure]]):
        super().__init__(message)
        self.summary, self.failures = summary, failures


def run_eval(benchmark: str | Environment, *, model: str, out: str | Path, stop: Callable[[], bool] = lambda: False,
             **options: Any) -> dict[str, Any]:
    """Evaluate `model` on `benchmark`; `options` are EvalConfig fields. Returns the summary."""
    return evaluate(EvalConfig(benchmark, model, Path(out), **options), stop)


def evaluate(cfg: EvalConfig, stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """The samples `cfg.out` lacks, scored and saved; the summary over all of them. When `stop()`
    turns true, requests in flight are cancelled and the summary covers what finished
    (`"stopped": true`); rerunning the same command asks for the rest."""
    start = time.monotonic()
    env = load_environment(cfg.benchmark) if isinstance(cfg.benchmark, str) else cfg.benchmark
    try:
        prompts = select_prompts(env, cfg)
        with SampleStore(cfg.out, cfg.settings()) as store:
            check_problems(prompts, store)
            todo = missing_jobs(prompts, store, cfg)
            resumed = [store.rows[(p.id, j)] for p in prompts for j in range(cfg.n) if (p.id, j) in store.rows]
            failures = generate(env, cfg, todo, store, resumed, stop) if todo else []
            summary = build_summary(env, cfg, prompts, store, failures)
            summary["stopped"] = bool(stop())
            summary["complete"] = summary["complete"] and not summary["stopped"] and all(
                (p.id, j) in store.rows for p in prompts for j in range(cfg.n))
        summary["run"] = {"endpoint": cfg.base_url or "local", "elapsed_s": round(time.monotonic() - start, 3),
                          "asked": len(todo), "resumed": len(resumed), "samples_file": str(store.path)}
    finally:
        if isinstance(cfg.benchmark, str) and hasattr(env, "close"):
            env.close()  # e.g. the math verifier's worker pool
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (cfg.out / "summary.md").write_text(markdown(summary))
    if failures and not summary["stopped"]:
        advice = ("the model or server refused them, so a rerun with the same settings fails the same way: change "
                  "what the error names" if all(f.rejected for _, f in failures) else
                  "rerun the same command to ask only for the missing samples")
        raise IncompleteEval(f"{len(failures)} of {len(todo)} samples failed (first error: {failures[0][1].error}); "
                             f"the summary in {cfg.out} counts the rest; {advice}", summary, failures)
    return summary


def select_prompts(env: Environment, cfg: EvalConfig) -> list[Prompt]:
    prompts = env.prompts(cfg.limit, seed=cfg.data_seed, split=cfg.split)
    unique = list({p.id: p for p in reversed(prompts)}.values())[::-1]  # first of each id, in order
    if len(unique) < len(prompts):
        log.warning("%s gave %d prompts with %d distinct ids; evaluating the distinct ones",
                    cfg.benchmark_name, len(prompts), len(unique))
    if not unique:
        raise ValueError(f"{cfg.benchmark_name} has no problems for split {cfg.split!r}")
    return unique


def check_problems(prompts: list[Prompt], store: SampleStore) -> None:
    """Refuse samples drawn for another problem under the same id: a file's ids are its line
    numbers, so a benchmark file edited or regenerated in place would mix two runs. A row from
    before rows carried a fingerprint is taken to match, as it always was."""
    current = {p.id: fingerprint(p) for p in prompts}
    changed = sorted({pid for (pid, _), row in store.rows.items()
                      if pid in current and row.get("fingerprint", current[pid]) != current[pid]})
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise ValueError(f"{store.path} holds samples of other problems under the ids {shown} (the benchmark "
                         "changed since they were drawn); use another output directory, or delete this one to "
                         "start over")


def missing_jobs(prompts: list[Prompt], store: SampleStore, cfg: EvalConfig) -> list[Job]:
    """The samples `store` lacks, sample-major (sample 0 of every problem first), so that an
    early stop leaves a spread of problems and the running pass@1 is not one problem's."""
    jobs = [job for p in prompts
            for job in jobs_for(p, [j for j in range(cfg.n) if (p.id, j) not in store.rows], cfg.seed)]
    return sorted(jobs, key=lambda job: job.sample)  # stable: problem order kept within a sample index


def generate(env: Environment, cfg: EvalConfig, todo: list[Job], store: SampleStore, resumed: list[dict],
             stop: Callable[[], bool] = lambda: False) -> list[tuple[Job, Failure]]:
    """Ask the model for `todo`, scoring and recording samples as they finish, until done or
    `stop()`; the failed samples."""
    if cfg.temperature == 0 and cfg.n > 1:
        log.warning("temperature 0 is greedy: the %d samples of a problem will be identical", cfg.n)
    model = make_model(cfg)
    correct = sum(r["reward"] >= cfg.threshold for r in resumed)
    progress = EvalProgress(len(resumed) + len(todo), len(resumed), correct, enabled=cfg.progress)
    failures: list[tuple[Job, Failure]] = []
    batches = model.generate(todo)
    try:
        for batch in batches:
            finished = [(job, out) for job, out in batch if isinstance(out, Completion)]
            failed = [(job, out) for job, out in batch if isinstance(out, Failure)]
            rows = score(env, finished)
            store.append(rows)
            failures += failed
            progress.update(len(rows), sum(r["reward"] >= cfg.threshold for r in rows), len(failed))
            if stop():
                break  # closing the generator cancels what is in flight
    except RefusedAll:
        if not store.rows:  # nothing was ever answered with these settings: the server's are wrong
            raise
        # else samples of these settings were answered before: these prompts are refused for their own sake
    except EndpointError as exc:
        raise EndpointError(f"{exc}. {len(store.rows)} finished samples are saved in {store.path}; rerun the same "
                            "command to resume") from None
    finally:
        batches.close()  # cancels requests still in flight (stopped, or an error)
        progress.close()
    return failures


def make_model(cfg: EvalConfig):
    if cfg.base_url is None:
        from .local import LocalModel  # imports torch and the engine: not needed for endpoints

        return LocalModel(cfg.model, chat=cfg.chat, max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                          top_p=cfg.top_p, engine_kwargs=cfg.engine_kwargs, template_kwargs=cfg.chat_template_kwargs)
    config = ClientConfig(cfg.base_url, cfg.model, api_key=api_key(cfg.api_key_env), chat=cfg.chat,
                          concurrency=cfg.concurrency, retries=cfg.retries, backoff=cfg.backoff,
                          timeout=cfg.request_timeout)
    template = {"chat_template_kwargs": cfg.chat_template_kwargs} if cfg.chat_template_kwargs else None
    client = OpenAIClient(config, cfg.max_tokens, cfg.temperature, cfg.top_p, extra_body=template)
    client.probe()
    return client


def api_key(variable: str | None) -> str | None:
    if variable is None:
        return os.environ.get("OPENAI_API_KEY") or None
    value = os.environ.get(variable)
    if not value:
        raise ValueError(f"the API key variable {variable} is not set")
    return value


def score(env: Environment, finished: list[tuple[Job, Completion]]) -> list[dict[str, Any]]:
    """Sample rows: rewards in one batched call (a verifier pool uses every worker), answers."""
    if not finished:
        return []
    rewards = env.rewards([job.prompt for job, _ in finished], [out.text for _, out in finished])
    return [{"problem_id": job.prompt.id, "sample": job.sample, "seed": job.seed, "response": out.text,
             "extracted": extract(env, job.prompt, out.text), "reward": float(reward), "tokens": out.tokens,
             "finish_reason": out.finish_reason, "fingerprint": fingerprint(job.prompt)}
            for (job, out), reward in zip(finished, rewards, strict=True)]


def knows_answers(env: Environment) -> bool:
    """Whether the environment implements `extract` (else parse failures are unknown)."""
    return type(env).extract is not Environment.extract


def extract(env: Environment, prompt: Prompt, response: str) -> str | None:
    if not knows_answers(env):
        return None
    try:
        answer = env.extract(prompt, response)
    except Exception as exc:  # model output is untrusted: a parser bug is no answer, not a crash
        log.debug("extract failed for %s: %r", prompt.id, exc)
        return None
    return None if answer is None else str(answer)


def build_summary(env: Environment, cfg: EvalConfig, prompts: list[Prompt], store: SampleStore,
                  failures: list[tuple[Job, Failure]]) -> dict[str, Any]:
    problems = [(p, [store.rows[(p.id, j)] for j in range(cfg.n) if (p.id, j) in store.rows]) for p in prompts]
    summary = {"benchmark": cfg.benchmark_name, "model": cfg.model, "n": cfg.n, "k": sorted({1, *cfg.k}),
               "threshold": cfg.threshold, "complete": not failures, "failed": len(failures)}
    summary.update(summarize(problems, cfg.k, cfg.threshold, knows_answers(env), cfg.group_by))
    summary["env_metrics"] = env_metrics(env, problems)
    if cfg.prm is not None:
        from .scaling import best_of_n  # the reward models' code and torch only when asked for
        summary["best_of_n"] = best_of_n(problems, cfg)
    summary["settings"] = cfg.settings()
    return summary


def env_metrics(env: Environment, problems: list[tuple[Prompt, list[dict]]]) -> dict[str, Any]:
    pairs = [(p, r) for p, rows in problems for r in rows]
    if not pairs:
        return {}
    try:
        return env.metrics([p for p, _ in pairs], [r["response"] for _, r in pairs], [r["reward"] for _, r in pairs])
    except Exception as exc:  # the harness's own numbers stand without the environment's extras
        log.warning("%s.metrics failed: %r", type(env).__name__, exc)
        return {"error": repr(exc)}

