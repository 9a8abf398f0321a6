"""`reasonrl bench kernels`: correctness verdicts per minute on this machine, and on a GPU the
experts' speedups over the PyTorch references.

Three ways of judging the same candidates (the experts of every task whose check runs here):

- `serial`: one process, no sandbox, one after another (evaluate/inprocess.py), in a fresh
  interpreter with one thread (as each sandboxed worker has);
- `sandboxed_1`: the evaluator with one worker: what the sandbox costs;
- `sandboxed_N`: the evaluator with `workers` workers: what parallel workers buy.

Each is repeated `repeats` times; the load average is recorded before each (the machine may be
shared, and verdicts per minute are only comparable on a quiet one). Also reported: the share of
tasks whose correctness check runs on this CPU (experts that pass under Triton's interpreter,
measured, not declared) with the reasons for the others. On a GPU, each expert is timed against
its reference (evaluate/speed.py) and the speedups are aggregated (evaluate/timing.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from statistics import median
from typing import Callable

SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class KernelBenchConfig:
    tasks: str = "kernels:"
    """Which tasks: a kernels: spec or comma-separated task ids."""
    workers: int = 2
    """Sandboxed workers for the parallel run."""
    repeats: int = 3
    """Times each way is measured (the result lists every run and their median)."""
    timeout: float = 120.0
    """Seconds per candidate run in the sandbox."""

    def __post_init__(self):
        if self.workers < 1 or self.repeats < 1:
            raise ValueError("workers and repeats must be >= 1")


def bench_kernels(cfg: KernelBenchConfig) -> dict:
    from reasonrl.agents.geak.agent import resolve_tasks
    from reasonrl.envs.kernels.evaluate.evaluator import resolve_device

    tasks = resolve_tasks(cfg.tasks)
    device = resolve_device("auto")
    out = {"device": _device(device), "tasks": len(tasks), "workers": cfg.workers, "runs": []}
    coverage = _sandboxed(tasks, 1, cfg.timeout)
    checked = [t for t, v in zip(tasks, coverage["verdicts"]) if v.exec_ok]
    if not checked:
        raise ValueError(f"none of the tasks {', '.join(t.id for t in tasks)} can be checked on this {device}: "
                         + "; ".join(f"{v.task_id}: {v.message}" for v in coverage["verdicts"])[:500])
    out["cpu_share"] = len(checked) / len(tasks) if device == "cpu" else None
    out["not_on_this_cpu"] = {v.task_id: v.message for v in coverage["verdicts"] if not v.exec_ok}
    ids = ",".join(t.id for t in checked)
    for _ in range(cfg.repeats):
        run = {"load_average": os.getloadavg()[0], "serial": _serial(ids)}
        run["sandboxed_1"] = _rates(_sandboxed(checked, 1, cfg.timeout))
        run[f"sandboxed_{cfg.workers}"] = _rates(_sandboxed(checked, cfg.workers, cfg.timeout))
        run["parallel_over_serial"] = run[f"sandboxed_{cfg.workers}"]["per_minute"] / run["serial"]["per_minute"]
        out["runs"].append(run)
    out["median_parallel_over_serial"] = median(r["parallel_over_serial"] for r in out["runs"])
    if device == "cuda":
        out["gpu_speedups"] = expert_speedups(tasks, cfg.timeout)
    return out


def _sandboxed(tasks, workers: int, timeout: float) -> dict:
    from reasonrl.envs.kernels.evaluate import EvaluatorConfig, KernelEvaluator, SandboxLimits

    with KernelEvaluator(EvaluatorConfig(workers=workers, timing=False), SandboxLimits(timeout=timeout)) as ev:
        ev.evaluate_many([(tasks[0], tasks[0].expert_source())])  # workers started and warm
        for task in tasks:
            ev.plan(task)  # references computed before the clock starts, as in the serial run
        start = time.monotonic()
        verdicts = ev.evaluate_many([(t, t.expert_source()) for t in tasks])
        return {"seconds": time.monotonic() - start, "verdicts": verdicts}


def _rates(run: dict) -> dict:
    n = len(run["verdicts"])
    return {"verdicts": n, "passed": sum(v.exec_ok for v in run["verdicts"]), "seconds": round(run["seconds"], 2),
            "per_minute": 60 * n / run["seconds"]}


def _serial(ids: str) -> dict:
    """The serial baseline, in a fresh single-threaded interpreter (`python -m reasonrl.bench.kernels`)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        env = {**os.environ, **SINGLE_THREAD, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
        subprocess.run([sys.executable, "-m", "reasonrl.bench.kernels", ids, f.name], check=True, env=env)
        return json.loads(open(f.name).read())


def serial_main(ids: str, path: str) -> None:
    import torch

    from reasonrl.envs.kernels.evaluate.inprocess import cached_plan, evaluate_in_process
    from reasonrl.envs.kernels.suite import get_task

    torch.set_num_threads(1)
    tasks = [get_task(i) for i in ids.split(",")]
    evaluate_in_process(tasks[0], tasks[0].expert_source())  # warm, like the workers
    for task in tasks:  # plans (references) before the clock starts, as in the sandboxed runs
        cached_plan(task)
    start = time.monotonic()
    verdicts = [evaluate_in_process(t, t.expert_source()) for t in tasks]
    with open(path, "w") as f:
        json.dump(_rates({"seconds": time.monotonic() - start, "verdicts": verdicts}), f)


def expert_speedups(tasks, timeout: float, device: str = "cuda", stop: Callable[[], bool] | None = None,
                    interrupt: tuple[type[BaseException], ...] = ()) -> dict:
    """Every task's expert judged in the sandbox on `device` (timed against its reference on a GPU),
    one task at a time until `stop()` says the time is up or one of `interrupt` is raised (the
    evaluator is closed first): {"per_task": {id: status, speedup, flags, and for a failure its
    message}, "summary": timing.aggregate over those judged, "not_run": ids}."""
    from reasonrl.envs.kernels.evaluate import EvaluatorConfig, KernelEvaluator, SandboxLimits
    from reasonrl.envs.kernels.evaluate.timing import KernelResult, aggregate

    timed = [t for t in tasks if getattr(t, "perf_shapes", ())]
    verdicts = []
    try:
        with KernelEvaluator(EvaluatorConfig(workers=1, device=device), SandboxLimits(timeout=timeout)) as ev:
            for task in timed:
                if stop is not None and stop():
                    break
                verdicts += ev.evaluate_many([(task, task.expert_source())])
    except interrupt:
        pass  # what was judged before still counts
    per_task = {v.task_id: {"status": v.status, "speedup": v.speedup, "flags": v.flags,
                            **({} if v.exec_ok else {"message": v.message[:400]})} for v in verdicts}
    summary = aggregate([KernelResult(v.task_id, v.exec_ok, v.speedup, v.expert_speedup) for v in verdicts])
    return {"per_task": per_task, "summary": summary, "not_run": [t.id for t in timed[len(verdicts):]]}


def _device(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    cores = len(os.sched_getaffinity(0))
    return f"CPU, {cores} cores (Triton interpreter)"


if __name__ == "__main__":
    serial_main(sys.argv[1], sys.argv[2])
