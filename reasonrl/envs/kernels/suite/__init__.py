"""Our task set: one module per family, each a list of `KernelTask`s (task.py) with their
expert Triton solutions. `TASKS` is all of them, in family order; `get_task(id)` one of them.
"""

from __future__ import annotations

import importlib

from ..task import KernelTask

FAMILIES = ("elementwise", "reduction", "softmax", "norm", "rotary", "matmul", "attention", "quant", "indexing",
            "reasonrl_ops")


def _load() -> list[KernelTask]:
    tasks = [t for family in FAMILIES for t in importlib.import_module(f"{__name__}.{family}").TASKS]
    ids = [t.id for t in tasks]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise RuntimeError(f"duplicate kernel task ids: {duplicates}")
    return tasks


TASKS: list[KernelTask] = _load()
BY_ID = {t.id: t for t in TASKS}


def get_task(task_id: str) -> KernelTask:
    if task_id not in BY_ID:
        raise ValueError(f"unknown kernel task {task_id!r}; known: {', '.join(BY_ID)}")
    return BY_ID[task_id]
