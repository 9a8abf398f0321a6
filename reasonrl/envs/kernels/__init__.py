"""Triton kernel tasks (GEAK, arXiv 2507.23194): the task format, our task set, loaders for the
published suites, the sandboxed evaluator and the RL environment. See docs/kernels.md.

task.py (KernelTask) · suite/ (our tasks, one module per family) · published.py (TritonBench
and ROCm file formats) · evaluate/ (sandbox, verdicts, timing) · prompt.py (what the model is
told, how its code is found) · environment.py (KernelEnvironment).

Environment specs (`load_environment`):

    kernels:                                      every task of ours
    kernels:?family=softmax,norm&level=1-3&cpu=1  a subset (cpu=1: checks that run on a CPU)
    kernels:?ids=matmul,flip&workers=4&timeout=120&timing=0   (timing=0: correctness only on a GPU too)
    kernels:tritonbench=DIR?instructions=FILE     a TritonBench-G style directory
    kernels:rocm=DIR                              a ROCm-bench style directory
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from .environment import KernelEnvironment, KernelRewardConfig
from .task import Case, KernelTask

__all__ = ["Case", "KernelEnvironment", "KernelRewardConfig", "KernelTask", "TASK_OPTIONS", "from_spec",
           "select_tasks"]

TASK_OPTIONS = {"family", "level", "cpu", "ids", "instructions"}
"""The options that select tasks; the others set the evaluator (workers, timeout, timing) and the reward."""
_OPTIONS = TASK_OPTIONS | {"workers", "timeout", "timing", "holdout", "call_credit", "speedup_weight"}


def select_tasks(tasks, family: str | None = None, level: str | None = None, cpu: bool | None = None,
                 ids: str | None = None) -> list:
    """Tasks filtered by comma lists of families or ids, a level or level range ("2-4"), CPU support."""
    lo, _, hi = (level or "").partition("-")
    out = [t for t in tasks
           if (not family or t.family in family.split(","))
           and (not ids or t.id in ids.split(","))
           and (not level or int(lo) <= t.level <= int(hi or lo))
           and (cpu is None or bool(t.cpu) == cpu)]
    if ids:
        missing = set(ids.split(",")) - {t.id for t in out}
        if missing:
            raise ValueError(f"kernels: unknown or filtered-out task ids: {', '.join(sorted(missing))}")
    if not out:
        raise ValueError("kernels: no task matches the filters")
    return out


def from_spec(argument: str) -> KernelEnvironment:
    from .evaluate import EvaluatorConfig, SandboxLimits

    source, _, query = argument.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} for kernels:; known: {', '.join(sorted(_OPTIONS))}")
    try:
        tasks = select_tasks(_source_tasks(source, options.get("instructions")), options.get("family"),
                             options.get("level"), {"1": True, "0": False}.get(options.get("cpu", "")),
                             options.get("ids"))
        reward = KernelRewardConfig(float(options.get("call_credit", 0.0)), float(options.get("speedup_weight", 0.5)),
                                    holdout=float(options.get("holdout", 0.25)))
        config = EvaluatorConfig(workers=int(options.get("workers", 2)), timing=options.get("timing", "1") != "0")
        limits = SandboxLimits(timeout=float(options.get("timeout", 60.0)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"kernels:{argument}: {exc}") from None
    return KernelEnvironment(tasks, reward=reward, evaluator_config=config, limits=limits)


def _source_tasks(source: str, instructions: str | None) -> list:
    kind, _, directory = source.partition("=")
    if not source:
        from .suite import TASKS

        return TASKS
    if kind == "tritonbench" and directory:
        from .published import load_tritonbench

        return load_tritonbench(directory, instructions)
    if kind == "rocm" and directory:
        from .published import load_rocm

        return load_rocm(directory, instructions)
    raise ValueError(f"kernels: expected nothing, tritonbench=DIR or rocm=DIR before '?', got {source!r}")
