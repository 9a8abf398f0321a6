"""Trusted code judged in this process, without a sandbox: the serial baseline of
`reasonrl bench kernels`, and a quick check of the experts. Never for a model's answer.

The same plan, runner and judge as the sandboxed path (the result goes through the same
serialization), minus the fork, the namespaces and the limits.
"""

from __future__ import annotations

import io
import itertools
import os
import tempfile
import time

import torch

from .judge import judge
from .plan import function_plan
from .runner import LaunchCounter, execute_function
from .verdict import Verdict

_COUNTER: LaunchCounter | None = None  # one per process: it wraps Triton's launch methods once
_NAMES = itertools.count()
_PLANS: dict[str, object] = {}  # task id -> plan (references computed once, as the evaluator does)


def cached_plan(task):
    if task.id not in _PLANS:
        _PLANS[task.id] = function_plan(task)
    return _PLANS[task.id]


def evaluate_in_process(task, source: str, device: str = "cpu") -> Verdict:
    global _COUNTER
    _COUNTER = _COUNTER or LaunchCounter()
    plan = cached_plan(task)
    cases = torch.load(io.BytesIO(plan.job["inputs"]), weights_only=True)  # fresh copies, as a sandbox gets
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kernel-inprocess-") as directory:
        path = os.path.join(directory, "candidate.py")
        with open(path, "w") as f:
            f.write(source)
        result = execute_function(path, task.entry, cases, device, _COUNTER, f"_inprocess_{next(_NAMES)}")
    buffer = io.BytesIO()
    torch.save(result, buffer)
    answer = {"result": buffer.getvalue(), "exit_code": 0, "signal": None, "timed_out": False,
              "elapsed": time.monotonic() - start, "stdout": "", "stderr": ""}
    return judge(task.id, plan, answer)
