"""A task's test plan: the job a candidate runs and what its results must be.

For our own tasks (task.py) the parent makes every case's inputs and runs the PyTorch
reference on copies of them, here, out of any candidate's reach. For a published suite's task
(published.py: a script whose tests fill `result_gold`) the reference file is itself run in
the sandbox, once, and its `result_gold` is what candidates must reproduce. A reference that
fails makes the plan a `task_error` (the task's problem, never a candidate's or the machine's);
one that ran out of time or got no answer is `transient` and `not_judged` (it may not recur, so it
blames neither), and the evaluator plans it again at its next call instead of keeping it.

A plan also bounds the result file a candidate's run may leave (`result_bytes`): the judge never
unpickles a larger one, so a forged file (millions of strings in `layers`, say) costs the parent
no more than a right answer's would.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..published import for_cpu
from ..task import KernelTask
from .sandbox import CHILD_ERROR

RESULT_SLACK = 1 << 20  # a result's bytes besides outputs and inputs: the error text, denials, layers, structure


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
    result_bytes: int
    """The largest result file a run can need: twice the serialized outputs and inputs (an answer
    in another dtype still reaches the comparison, which names it), plus RESULT_SLACK."""
    reference_error: str | None = None
    """Why no candidate can be judged on this task (its reference failed); None when it can."""
    reference_status: str = "task_error"
    """The verdict every candidate then gets: task_error, not_judged (a timeout, no answer), or
    sandbox_error when the sandbox did not start."""
    transient: bool = False
    """The failure may not recur (a timeout, a lost worker, a sandbox that did not start): plan again."""


def make_plan(task, device: str, run_reference: Callable[[dict], dict | None]) -> Plan:
    if isinstance(task, KernelTask):
        return function_plan(task)
    return script_plan(task, device, run_reference)


def function_plan(task: KernelTask) -> Plan:
    cases = task.cases()
    inputs = [task.inputs(case) for case in cases]
    expected = [task.reference(*_copy(args)) for args in inputs]
    blob = _serialized(inputs)
    return Plan({"kind": "function", "entry": task.entry, "inputs": blob}, [c.name for c in cases], expected, inputs,
                [task.tolerance_for(c.dtype) for c in cases], _result_bytes(len(blob) + len(_serialized(expected))))


def script_plan(task, device: str, run_reference: Callable[[dict], dict | None]) -> Plan:
    answer = run_reference({"kind": "script", "source": script_source(task.reference_source, task.tests, device)})
    plan = Plan({"kind": "script", "tests": task.tests}, ["result_gold"], [None], None, [task.tolerance],
                _result_bytes(len(answer.get("result") or b"") if answer else 0))
    if answer is None or answer["timed_out"]:
        plan.reference_error = ("the evaluator's worker did not answer for the reference" if answer is None
                                else "the reference passed the wall-clock limit")
        plan.reference_status, plan.transient = "not_judged", True
    elif not answer.get("result") and answer["exit_code"] == CHILD_ERROR:
        plan.reference_error, plan.reference_status = "the sandbox failed to start", "sandbox_error"
        plan.transient = True
    else:
        expected, error = _gold(answer)
        plan.expected[0], plan.reference_error = expected, error and f"the reference failed: {error}"[-2000:]
    return plan


def _gold(answer: dict) -> tuple[Any, str | None]:
    """The reference run's `result_gold`, or why there is none (the reference file is a suite's
    file, untrusted: its result is read as carefully as a candidate's)."""
    if answer.get("result_error"):
        return None, f"its result file was not read: {answer['result_error']}"
    if "result_size" in answer:
        return None, f"its result file holds {answer['result_size']} bytes, more than the file-size limit"
    blob = answer.get("result")
    try:
        result = torch.load(io.BytesIO(blob), weights_only=True) if blob else None
    except Exception as exc:  # noqa: BLE001 - unreadable is a failed reference
        return None, f"its result could not be read ({type(exc).__name__})"
    if not isinstance(result, dict):
        return None, "it saved no result"
    outputs = result.get("outputs")
    if result.get("stage") == "done" and type(outputs) is list and outputs and outputs[0] is not None:
        return outputs[0], None
    error = result.get("error")
    return None, error if isinstance(error, str) and error else "no result_gold"


def script_source(answer: str, tests: str, device: str) -> str:
    """An answer with the task's tests appended, rewritten for the CPU when there is no GPU."""
    source = f"{answer}\n\n{tests}"
    return for_cpu(source) if device == "cpu" else source


def _serialized(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _result_bytes(needed: int) -> int:
    return 2 * needed + RESULT_SLACK


def _copy(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
