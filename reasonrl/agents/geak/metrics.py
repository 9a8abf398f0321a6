"""What a kernel-agent run measured: the GEAK scaling curves and the cost of a solved task.

- `pass@k` (k = 1 .. parallel): the unbiased estimator (eval/passk.py) over each task's
  trajectories, solved meaning any iteration passed;
- `by_iteration[i]`: after iteration i, the mean share of a task's trajectories solved (pass@1
  after i iterations: the sequential-scaling curve), the share of tasks any trajectory solved
  (GEAK's parallel runs merged), and the share where some candidate at least ran (call accuracy);
- `by_trajectories[k]`: the share of tasks solved by trajectories 0..k-1 (the parallel-scaling
  curve as run, next to the pass@k estimate);
- cost: LLM calls, completion and prompt tokens, per task solved; how often an answer held no
  code, how often a call failed, how often the debugger restarted a line;
- on a GPU, each task's best speedup aggregated four ways (evaluate/timing.py);
- `skipped`: the tasks that could not be judged (their reference failed), with the reason; they
  count as unsolved.
"""

from __future__ import annotations

import json
from statistics import fmean
from typing import Any, Sequence

from reasonrl.envs.kernels.evaluate.timing import KernelResult, aggregate
from reasonrl.envs.kernels.evaluate.verdict import CALL_OK
from reasonrl.envs.kernels.prompt import extract_code
from reasonrl.eval.passk import mean_pass_at_k

from .config import AgentConfig
from .log import RunLog
from .memory import Trajectory


def summarize(trajectories: Sequence[Trajectory], run: RunLog, config: AgentConfig, timed: bool) -> dict[str, Any]:
    by_task: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        by_task.setdefault(t.task.id, []).append(t)
    n = config.parallel
    solved_tasks = [tid for tid, ts in by_task.items() if any(t.solved_at is not None for t in ts)]
    counts = [(n, sum(t.solved_at is not None for t in ts)) for ts in by_task.values()]
    keys = {f"{t.task.id}/t{t.index}/" for t in trajectories}
    calls = [row for key, row in run.calls.items()  # this run's trajectories, not a longer earlier run's iterations
             if key[: key.rfind("/i")] + "/" in keys and row.get("iteration", 0) < config.iterations]
    out: dict[str, Any] = {
        "kind": "kernel-agent", "model": config.model, "tasks": len(by_task), "parallel": n,
        "iterations": config.iterations, "solved": len(solved_tasks),
        **{f"pass@{k}": mean_pass_at_k(counts, k) for k in range(1, n + 1)},
        "by_iteration": by_iteration(by_task, config.iterations),
        "by_trajectories": [sum(any(t.solved_at is not None for t in ts[:k]) for ts in by_task.values()) / len(by_task)
                            for k in range(1, n + 1)],
        "cost": cost(calls, len(solved_tasks)),
        "debugger_resets": sum(t.resets for t in trajectories),
        "tasks_detail": {tid: _task_detail(ts) for tid, ts in by_task.items()},
        "skipped": {tid: next(t.skipped for t in ts if t.skipped) for tid, ts in by_task.items()
                    if any(t.skipped for t in ts)},
    }
    if timed:
        out["speedup"] = aggregate([_best(tid, ts) for tid, ts in by_task.items()])
    return out


def by_iteration(by_task: dict[str, list[Trajectory]], iterations: int) -> list[dict[str, float]]:
    rows = []
    for i in range(iterations):
        def solved(t: Trajectory) -> bool:
            return t.solved_at is not None and t.solved_at <= i

        def ran(t: Trajectory) -> bool:
            return any(a.status in CALL_OK for a in t.attempts if a.iteration <= i)

        rows.append({
            "iteration": i,
            "exec_pass@1": fmean(sum(map(solved, ts)) / len(ts) for ts in by_task.values()),
            "exec_any": fmean(any(map(solved, ts)) for ts in by_task.values()),
            "call_any": fmean(any(map(ran, ts)) for ts in by_task.values()),
        })
    return rows


def cost(calls: list[dict], solved: int) -> dict[str, Any]:
    generations = [c for c in calls if c.get("role") == "generate"]
    tokens = [c.get("tokens") for c in calls]
    prompt_tokens = [c.get("prompt_tokens") for c in calls]
    known = all(isinstance(t, int) for t in tokens)
    out: dict[str, Any] = {
        "calls": len(calls), "generations": len(generations), "reflections": len(calls) - len(generations),
        "failed_calls": sum(bool(c.get("error")) for c in calls),
        "completion_tokens": sum(tokens) if known and calls else None,
        "prompt_tokens": sum(prompt_tokens) if calls and all(isinstance(t, int) for t in prompt_tokens) else None,
        "unparsable_rate": sum(not _has_code(c) for c in generations) / len(generations) if generations else None,
    }
    out["calls_per_solved"] = out["calls"] / solved if solved else None
    out["tokens_per_solved"] = out["completion_tokens"] / solved if solved and out["completion_tokens"] is not None \
        else None
    return out


def _has_code(call: dict) -> bool:
    return extract_code(call.get("text")) is not None


def _task_detail(trajectories: list[Trajectory]) -> dict[str, Any]:
    return {"solved_at": [t.solved_at for t in trajectories], "resets": sum(t.resets for t in trajectories),
            "last_status": [t.attempts[-1].status if t.attempts else None for t in trajectories]}


def _best(task_id: str, trajectories: list[Trajectory]) -> KernelResult:
    passing = [a for t in trajectories for a in t.passing if a.speedup is not None]
    if not passing:
        return KernelResult(task_id, any(t.solved_at is not None for t in trajectories))
    best = max(passing, key=lambda a: a.speedup)
    return KernelResult(task_id, True, best.speedup, best.expert_speedup)


def markdown(summary: dict[str, Any]) -> str:
    cost_ = summary["cost"]
    lines = [f"# kernel-agent — {summary['model']}", "",
             f"{summary['tasks']} tasks, {summary['parallel']} trajectories each, up to {summary['iterations']} "
             f"iterations. Solved: {summary['solved']} of {summary['tasks']}.", "",
             "| k | pass@k (unbiased) | solved by the first k trajectories |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(summary[f'pass@{k}'])} | {_fmt(share)} |"
              for k, share in enumerate(summary["by_trajectories"], start=1)]
    lines += ["", "| iteration | exec pass@1 | exec (any trajectory) | call (any trajectory) |", "|---|---|---|---|"]
    lines += [f"| {r['iteration'] + 1} | {_fmt(r['exec_pass@1'])} | {_fmt(r['exec_any'])} | {_fmt(r['call_any'])} |"
              for r in summary["by_iteration"]]
    lines += ["", "| cost | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in cost_.items()]
    lines += [f"| debugger_resets | {summary['debugger_resets']} |"]
    if summary.get("skipped"):
        lines += ["", "Skipped (the task's reference failed; counted as unsolved):", ""]
        lines += [f"- {tid}: {reason.splitlines()[-1][:300] if reason.strip() else '-'}"
                  for tid, reason in summary["skipped"].items()]
    if "speedup" in summary:
        lines += ["", "| speedup | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in summary["speedup"].items()]
    return "\n".join(lines) + "\n"


def write_summary(run: RunLog, summary: dict[str, Any]) -> None:
    run.write("summary.json", json.dumps(summary, indent=2) + "\n")
    run.write("summary.md", markdown(summary))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)
