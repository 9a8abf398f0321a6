"""The GEAK loop (arXiv 2507.23194): generate, evaluate, reflect, remember; sequential iterations
times parallel trajectories.

    summary = run_agent(AgentConfig(endpoint=URL, model=M, tasks="kernels:?family=softmax"))

Per iteration, for every trajectory still open, all at once (one batch of calls, one batch of
verdicts, so the endpoint and the evaluator's workers stay busy):

1. generate: the task, a one-shot example (retrieval.py) and, after the first try, either the
   previous attempt with its verdict and reflection (repair), the passing candidates with their
   speedups (optimizer, GPU only), or the debugger's restart note (memory.py);
2. evaluate the extracted code in the sandbox (reasonrl/envs/kernels/evaluate);
3. reflect: the candidate and its verdict back to the model, for a short analysis;
4. remember: memory.py; a trajectory without GPU timings closes once it passes (there is
   nothing left to optimize); with timings it goes on optimizing.

As in GEAK v1's code, the reflector runs for every candidate and the optimizer is a branch of
the generator prompt. Departures from GEAK v1: the debugger watches
repeated identical errors rather than counting failures after a pass; retrieval is over our own
corpus (retrieval.py); answers are a Python code block, not JSON (JSON is accepted too); the
evaluator is our sandbox, never `shell=True`. Every call, candidate and verdict is logged
(log.py), and rerunning the same command resumes by replay.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence
from urllib.parse import parse_qsl

from reasonrl.engine.sampling_params import stable_seed
from reasonrl.envs.kernels.prompt import extract_code

from . import prompts
from .config import AgentConfig
from .llm import LLM, Call
from .log import RunLog
from .memory import Attempt, Trajectory
from .retrieval import BM25

log = logging.getLogger(__name__)


def run_agent(config: AgentConfig, llm: LLM | None = None, evaluator=None, tasks: Sequence | None = None,
              progress: bool = True) -> dict:
    """Run (or resume) the agent; the summary (also in `out`/summary.json and summary.md)."""
    from reasonrl.envs.kernels.evaluate import KernelEvaluator

    from .metrics import summarize, write_summary

    tasks = list(tasks) if tasks is not None else resolve_tasks(config.tasks)
    run = RunLog(config.out, {**config.settings(), "task_ids": [t.id for t in tasks]})
    if llm is None:
        from .llm import EndpointLLM

        llm = EndpointLLM(config)
        llm.probe()
    own = evaluator is None
    evaluator = evaluator or KernelEvaluator()
    try:
        trajectories = Loop(config, llm, evaluator, run, tasks, progress).run()
    finally:
        if own:
            evaluator.close()
    summary = summarize(trajectories, run, config, timed=evaluator.device == "cuda")
    write_summary(run, summary)
    return summary


class Loop:
    def __init__(self, config: AgentConfig, llm: LLM, evaluator, run: RunLog, tasks: Sequence, progress: bool):
        self.config, self.llm, self.evaluator, self.run_log = config, llm, evaluator, run
        self.progress = progress
        self.timed = evaluator.device == "cuda" and getattr(evaluator.config, "timing", False)
        self.trajectories = [Trajectory(t, k, config.max_repeated_errors) for t in tasks for k in range(config.parallel)]
        self.corpus = corpus(tasks) if config.one_shot == "experts" else BM25()

    def run(self) -> list[Trajectory]:
        for iteration in range(self.config.iterations):
            active = [t for t in self.trajectories if not self._done(t)]
            if not active:
                break
            codes, gen_replies = self._generate(active, iteration)
            verdicts = self.run_log.evaluate(self.evaluator, [
                (_key(t, iteration, "candidate"), t.task, code, _meta(t, iteration)) for t, code in zip(active, codes)])
            attempts = [Attempt(iteration, code, v.status, _feedback(v, r), v.exec_ok, v.speedup, v.expert_speedup)
                        for code, v, r in zip(codes, verdicts, gen_replies)]
            judged = [(t, a) for t, a in zip(active, attempts) if a.status not in ("task_error", "not_judged")]
            if self.config.reflect and judged:
                self._reflect(*map(list, zip(*judged)), iteration)
            for trajectory, attempt in zip(active, attempts):
                trajectory.record(attempt)
                if attempt.passed and attempt.code:
                    self.corpus.add(f"solved:{trajectory.task.id}", trajectory.task.family, trajectory.task.instruction,
                                    attempt.code, solved=True)
            self._report(iteration)
        return self.trajectories

    def _done(self, trajectory: Trajectory) -> bool:
        if trajectory.skipped:  # its task cannot be judged: reported in the summary, no more calls
            return True
        return trajectory.solved_at is not None and not (self.timed and self.config.optimizer)

    def _generate(self, active: list[Trajectory], iteration: int):
        calls = [Call(_key(t, iteration, "generate"), "generate",
                      prompts.generation(t, self._example(t), self.config.knowledge,
                                         self.timed and self.config.optimizer, self.config.ancestors),
                      self._seed(t, iteration, "generate")) for t in active]
        replies = self.run_log.complete(self.llm, calls, [_meta(t, iteration) for t in active])
        return [extract_code(r.text, t.task.entry) for t, r in zip(active, replies)], replies

    def _reflect(self, active: list[Trajectory], attempts: list[Attempt], iteration: int) -> None:
        calls = [Call(_key(t, iteration, "reflect"), "reflect", prompts.reflection(t, a, self.config.knowledge),
                      self._seed(t, iteration, "reflect")) for t, a in zip(active, attempts)]
        replies = self.run_log.complete(self.llm, calls, [_meta(t, iteration) for t in active])
        for attempt, reply in zip(attempts, replies):
            attempt.reflection = prompts.clean_reflection(reply.text)

    def _example(self, trajectory: Trajectory) -> tuple[str, str] | None:
        if self.config.one_shot == "none":
            return None
        task = trajectory.task
        query = trajectory.last.code if trajectory.last is not None and trajectory.last.code else task.instruction
        doc = self.corpus.best(query, exclude_ids={task.id, f"solved:{task.id}"}, exclude_family=task.family)
        return (doc.instruction, doc.code) if doc else None

    def _seed(self, trajectory: Trajectory, iteration: int, role: str) -> int:
        return stable_seed(self.config.seed, _key(trajectory, iteration, role))

    def _report(self, iteration: int) -> None:
        if not self.progress:
            return
        tasks = {t.task.id for t in self.trajectories}
        solved = {t.task.id for t in self.trajectories if t.solved_at is not None}
        print(f"[kernel-agent] iteration {iteration + 1}/{self.config.iterations}: {len(solved)}/{len(tasks)} tasks "
              "solved", file=sys.stderr, flush=True)


def _key(trajectory: Trajectory, iteration: int, role: str) -> str:
    return f"{trajectory.task.id}/t{trajectory.index}/i{iteration}/{role}"


def _meta(trajectory: Trajectory, iteration: int) -> dict:
    return {"task": trajectory.task.id, "trajectory": trajectory.index, "iteration": iteration}


def _feedback(verdict, reply) -> str:
    if reply.error:
        return f"status: no_code\nthe model call failed: {reply.error}"[:2000]
    return verdict.feedback()


def corpus(tasks: Sequence) -> BM25:
    """Our task set's experts (all families: the query's own family's experts are excluded at query time)."""
    from reasonrl.envs.kernels.suite import TASKS

    index = BM25()
    for task in TASKS:
        index.add(task.id, task.family, task.instruction, task.expert_source())
    return index


def resolve_tasks(spec: str) -> list:
    """Tasks from a kernels: spec, or from comma-separated task ids. The spec selects tasks only:
    the agent's evaluator is set by its own flags, and it has no reward or split, so any other
    option is refused by name rather than silently ignored."""
    from reasonrl.envs.kernels import TASK_OPTIONS, from_spec

    argument = spec.removeprefix("kernels:") if spec.startswith("kernels:") else f"?ids={spec}"
    tasks = list(from_spec(argument).tasks.values())  # unknown options and bad values are refused here
    unused = sorted({key for key, _ in parse_qsl(argument.partition("?")[2], keep_blank_values=True)} - TASK_OPTIONS)
    if unused:
        raise ValueError(f"--tasks {spec}: option(s) {', '.join(unused)} do nothing for the agent, which takes only "
                         f"task filters ({', '.join(sorted(TASK_OPTIONS))}); set the evaluator with its flags "
                         "(--workers, --timeout, --timing, --cpu-seconds, ...)")
    return tasks
