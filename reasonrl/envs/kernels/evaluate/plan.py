"""A task's test plan: the job a candidate runs and what its results must be.

For our own tasks (task.py) the parent makes every case's inputs and runs the PyTorch
reference on copies of them, here, out of any candidate's reach. For a published suite's task
(published.py: a script whose tests fill `result_gold`) the reference file is itself run in
the sandbox, once, and its `result_gold` is what candidates must reproduce.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..published import for_cpu
from ..task import KernelTask


@dataclass
class Plan:
    job: dict[str, Any]
    """The job without the candidate's source: kind, entry, serialized inputs."""
    case_names: list[str]
    expected: list[Any]
    """The reference's output per case (None when the reference itself failed)."""
    originals: list[tuple] | None
    """Each case's arguments before the call (None: no mutation check, scripts)."""
    tolerances: list[tuple[float, float]]
    reference_error: str | None = None


def make_plan(task, device: str, run_reference: Callable[[dict], dict | None]) -> Plan:
    if isinstance(task, KernelTask):
        return function_plan(task)
    return script_plan(task, device, run_reference)


def function_plan(task: KernelTask) -> Plan:
    cases = task.cases()
    inputs = [task.inputs(case) for case in cases]
    expected = [task.reference(*_copy(args)) for args in inputs]
    buffer = io.BytesIO()
    torch.save(inputs, buffer)
    return Plan({"kind": "function", "entry": task.entry, "inputs": buffer.getvalue()},
                [c.name for c in cases], expected, inputs, [task.tolerance_for(c.dtype) for c in cases])


def script_plan(task, device: str, run_reference: Callable[[dict], dict | None]) -> Plan:
    answer = run_reference({"kind": "script", "source": script_source(task.reference_source, task.tests, device)})
    expected, error = None, "the reference produced no result"
    if answer and answer.get("result"):
        result = torch.load(io.BytesIO(answer["result"]), weights_only=True)
        if result.get("stage") == "done" and result["outputs"][0] is not None:
            expected, error = result["outputs"][0], None
        else:
            error = f"the reference failed: {result.get('error', 'no result_gold')}"[-2000:]
    return Plan({"kind": "script", "tests": task.tests}, ["result_gold"], [expected], None, [task.tolerance],
                reference_error=error)


def script_source(answer: str, tests: str, device: str) -> str:
    """An answer with the task's tests appended, rewritten for the CPU when there is no GPU."""
    source = f"{answer}\n\n{tests}"
    return for_cpu(source) if device == "cpu" else source


def _copy(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
