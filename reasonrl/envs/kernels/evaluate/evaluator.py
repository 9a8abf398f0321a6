"""The evaluator: candidates in, verdicts out.

    with KernelEvaluator(EvaluatorConfig(workers=2)) as ev:
        verdicts = ev.evaluate_many([(task, source), ...])

For each candidate the parent (this process, trusted) builds a plan once per task: the test
cases' inputs (fresh random tensors per (shape, dtype, seed)), the reference's outputs and the
tolerances (plan.py). It sends the candidate's source and the serialized inputs to a warm
worker (zygote.py), which runs it in a sandbox and returns the raw result; the comparison,
the input-mutation check and every other judgement happen here (judge.py), where no
candidate code runs. The reference and the expert never enter a candidate's process.

On a GPU, a candidate that passes is then timed against the reference and the expert
(speed.py). Without a GPU only correctness is checked, under Triton's interpreter; tasks
whose check needs a GPU get the verdict `not_on_cpu`.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from reasonrl.envs.math.pool import WorkerPool

from .judge import judge, no_code, reference_failed
from .limits import SandboxLimits, worker_memory
from .plan import Plan, make_plan, script_source
from .sandbox import remove_tree
from .timing import TimingConfig
from .verdict import Verdict

log = logging.getLogger(__name__)
WORKER_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR", "HOME", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES",
              "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_HOME", "ROCM_PATH", "LD_LIBRARY_PATH")
SLACK = 30.0  # seconds the pool waits past a job's own timeout before it kills the worker itself
TIMING_TIMEOUT_FACTOR = 4  # a timing job (warm-up, rounds, larger shapes) gets this many correctness timeouts


@dataclass
class EvaluatorConfig:
    workers: int = 2
    """Sandboxed worker processes (one candidate at a time each)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where candidates run: auto is cuda when a GPU is visible, else cpu under Triton's interpreter."""
    namespaces: bool = True
    """Isolate candidates in user/mount/network/PID namespaces where the kernel allows it."""
    timing: bool = True
    """On a GPU, time passing candidates against the reference and the expert."""
    hidden_paths: list[str] = field(default_factory=list)
    """Extra directories candidates must not see (the task suite and the repository are always hidden)."""

    def __post_init__(self):
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {self.workers!r}")


class KernelEvaluator:
    def __init__(self, config: EvaluatorConfig | None = None, limits: SandboxLimits | None = None,
                 timing: TimingConfig | None = None):
        self.config = config or EvaluatorConfig()
        self.limits = limits or SandboxLimits()
        self.timing_config = timing or TimingConfig()
        self.device = resolve_device(self.config.device)
        self.hidden = hidden_paths() + [str(Path(p).resolve()) for p in self.config.hidden_paths]
        self._jobs_dir = tempfile.mkdtemp(prefix="reasonrl-kernels-")  # every job's directory, gone at close()
        self._cleanup = weakref.finalize(self, remove_tree, self._jobs_dir)
        self._plans: dict[str, Plan] = {}
        self._pool = self._make_pool(self.config.workers, self.limits.timeout)
        self._timing_pool: WorkerPool | None = None

    def _make_pool(self, workers: int, timeout: float) -> WorkerPool:
        return WorkerPool("reasonrl.envs.kernels.evaluate.zygote:run_job", workers, timeout + SLACK,
                          worker_memory(self.limits) >> 20,
                          worker="reasonrl.envs.kernels.evaluate.zygote", result_type=dict,
                          environment={**worker_environment(self.device), "TMPDIR": self._jobs_dir})

    def evaluate(self, task, source: str | None) -> Verdict:
        return self.evaluate_many([(task, source)])[0]

    def evaluate_many(self, pairs: Sequence[tuple[object, str | None]]) -> list[Verdict]:
        """A verdict per (task, source); None or empty source is `no_code`. Never raises on
        what a candidate does."""
        verdicts: list[Verdict | None] = [None] * len(pairs)
        todo, plans = [], {}
        for i, (task, source) in enumerate(pairs):
            if not source or not source.strip():
                verdicts[i] = no_code(task.id)
            elif not task.cpu and self.device == "cpu":
                verdicts[i] = Verdict(task.id, "not_on_cpu", f"this task's check needs a GPU: {task.cpu_note}")
            elif (plan := self._plan_once(task, plans)).reference_error:
                verdicts[i] = reference_failed(task.id, plan)
            else:
                todo.append((i, task, plan, source))
        answers = self._pool.run([(self._job(plan, source),) for _, _, plan, source in todo]) if todo else []
        for (i, task, plan, _), answer in zip(todo, answers):
            try:
                verdicts[i] = judge(task.id, plan, answer)
            except Exception as exc:  # a bug in judging one answer: that candidate's verdict, not the batch's
                log.error("judging a candidate for %s failed: %r", task.id, exc)
                verdicts[i] = Verdict(task.id, "crashed", f"its result could not be judged ({type(exc).__name__})")
        self._time(pairs, verdicts)
        return verdicts

    def _plan_once(self, task, plans: dict[str, Plan]) -> Plan:
        """The task's plan for one call: its reference runs at most once per call, even when its
        failure is transient (not kept), not once per candidate."""
        if task.id not in plans:
            plans[task.id] = self.plan(task)
        return plans[task.id]

    def plan(self, task) -> Plan:
        """The task's plan, made once (a transient failure of its reference is not kept: the next
        call plans again). A published suite's directory is hidden from every run from then on."""
        if task.id in self._plans:
            return self._plans[task.id]
        self._hide(getattr(task, "directory", ""))
        plan = make_plan(task, self.device, self._run_reference)
        if not plan.transient:
            self._plans[task.id] = plan
        return plan

    def _hide(self, directory: str) -> None:
        """Add a suite's directory (its reference files are the answer keys) to the hidden paths,
        unless it holds what a run needs: the jobs' directory or the Python installation."""
        if not directory:
            return
        path = Path(directory).resolve()
        needed = [Path(self._jobs_dir).resolve(), *(Path(p).resolve() for p in (sys.prefix, sys.base_prefix))]
        if any(path == n or path in n.parents for n in needed):
            log.warning("cannot hide %s from candidates: it holds the evaluator's job directory or Python", path)
        elif str(path) not in self.hidden:
            self.hidden.append(str(path))

    def _job(self, plan: Plan, source: str) -> dict:
        if plan.job["kind"] == "script":  # the published suites append their tests to the answer
            source = script_source(source, plan.job["tests"], self.device)
        return self._complete({**plan.job, "source": source, "result_bytes": plan.result_bytes})

    def _complete(self, job: dict, limits: SandboxLimits | None = None) -> dict:
        return {**job, "limits": asdict(limits or self.limits), "hidden": self.hidden,
                "namespaces": self.config.namespaces, "device": self.device}

    def _run_reference(self, job: dict) -> dict | None:
        """Run a published suite's reference file (untrusted like any file: sandboxed too)."""
        return self._pool.run([(self._complete(job),)])[0]

    def run_timing(self, job: dict) -> dict | None:
        """One timing job (speedup.py builds them), alone on its own one-worker pool."""
        timeout = self.limits.timeout * TIMING_TIMEOUT_FACTOR
        if self._timing_pool is None:
            self._timing_pool = self._make_pool(1, timeout)
        limits = SandboxLimits(**{**asdict(self.limits), "timeout": timeout, "cpu_seconds": int(timeout) + 1})
        return self._timing_pool.run([(self._complete(job, limits),)])[0]

    def _time(self, pairs, verdicts: list[Verdict]) -> None:
        if self.device != "cuda" or not self.config.timing:
            return
        from .speedup import time_candidates

        time_candidates(self, pairs, verdicts)

    def close(self) -> None:
        self._pool.close()
        if self._timing_pool is not None:
            self._timing_pool.close()
        self._cleanup()  # what a killed worker could not clean up

    def __enter__(self) -> KernelEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def worker_environment(device: str) -> dict[str, str]:
    """The workers' environment: a short list of variables, so that no API key or token is in
    the memory a candidate process is forked from."""
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")  # one core per worker
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    return env


def hidden_paths() -> list[str]:
    """What candidates must not see: the reasonrl package (task suite, references, experts), the
    repository it sits in and that repository's git objects, unless the Python installation
    lives inside them (a virtualenv in the checkout), in which case the package and .git only."""
    package = Path(__file__).resolve().parents[3]  # .../reasonrl
    root = package.parent
    paths = [package]
    git = root / ".git"
    if git.is_dir():
        paths.append(git)
    elif git.is_file():  # a worktree: "gitdir: <common>/worktrees/<name>"
        text = git.read_text().strip()
        if text.startswith("gitdir:"):
            paths.append(Path(text.removeprefix("gitdir:").strip()).resolve().parents[1])
    python_homes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    if (root / "pyproject.toml").exists() and not any(root in (h, *h.parents) for h in python_homes):
        paths.append(root)
    return [str(p) for p in dict.fromkeys(paths)]
