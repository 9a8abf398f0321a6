"""From a worker's raw answer to a verdict, in the parent, where no candidate code runs.

The order of checks is the order of the statuses in verdict.py: how the process ended (the
wall clock, the disk, the CPU limit), whether the result file it left is well formed (the
candidate's process can write anything there), what the sandbox denied, how far the run got,
then per case the outputs (compare.py), the inputs (untouched) and the Triton launch count.

What the parent loads is bounded before it is unpickled: a result file larger than the plan's
`result_bytes` is `output_too_large` unread, and of what is loaded only the known layer names and
the first MAX_VIOLATIONS denials (VIOLATION_CHARS each) are kept.
"""

from __future__ import annotations

import io
import pickle
import re
import signal
from typing import Any

import torch

from .compare import compare, identical
from .guard import MAX_VIOLATIONS, VIOLATION_CHARS
from .plan import Plan
from .sandbox import CHILD_ERROR, LAYERS
from .verdict import Verdict

STAGE_STATUS = {"import": "import_error", "entry": "missing_entry", "call": "runtime_error",
                "save": "output_too_large"}
DENIED = re.compile(r"^\[sandbox\] denied (.+)$", re.MULTILINE)


def no_code(task_id: str) -> Verdict:
    return Verdict(task_id, "no_code", "the response has no code: put the whole module in one ```python block")


def reference_failed(task_id: str, plan: Plan) -> Verdict:
    if plan.reference_status == "sandbox_error":
        return Verdict(task_id, "sandbox_error", f"cannot judge: {plan.reference_error}")
    if plan.reference_status == "not_judged":
        return Verdict(task_id, "not_judged", f"not judged this time: {plan.reference_error}, which may not "
                       "recur (not the candidate's doing); it is judged again when asked again")
    return Verdict(task_id, "task_error", "this task's reference failed, so no candidate can be judged on it (the "
                   f"task's problem, not the candidate's): {plan.reference_error}")


def judge(task_id: str, plan: Plan, answer: dict[str, Any] | None) -> Verdict:
    if plan.reference_error:
        return reference_failed(task_id, plan)
    if answer is None:  # the pool's own deadline or a dead worker: the worker was replaced
        return Verdict(task_id, "timeout", "the evaluator's worker did not answer in time")
    base = dict(elapsed=round(answer["elapsed"], 3), stdout=answer["stdout"], stderr=answer["stderr"],
                cases=len(plan.case_names))
    ended = _ending(task_id, answer, base) or _unread(task_id, plan, answer, base)
    if ended:
        return ended
    result = _load(answer.get("result"))
    if result is None:
        return _died(task_id, answer, base)
    malformed = _malformed(result)
    if malformed:  # the candidate's process writes the result, so it may be anything: its verdict only
        return _forged(task_id, malformed, base)
    base.update(layers=sorted(LAYERS.intersection(result.get("layers", []))), violations=_violations(result, answer))
    if base["violations"]:
        return Verdict(task_id, "forbidden", "the sandbox denied: " + "; ".join(base["violations"][:5]), **base)
    if result["stage"] != "done":
        return Verdict(task_id, STAGE_STATUS[result["stage"]], _error_text(result, plan), **base)
    try:
        return _cases(task_id, plan, result, base)
    except Exception as exc:  # e.g. tensors the comparison cannot read: still its verdict only
        return Verdict(task_id, "crashed", f"its result could not be judged ({type(exc).__name__}: {str(exc)[:200]})", **base)


def _ending(task_id: str, answer: dict, base: dict) -> Verdict | None:
    """A verdict when the process itself ended badly, before anything it reported counts."""
    if answer["timed_out"]:
        return Verdict(task_id, "timeout", "the run passed its wall-clock limit and was killed", **base)
    if answer.get("over_disk"):
        return Verdict(task_id, "crashed", f"it left more than {_mib(answer['disk_limit'])} or more than "
                       f"{answer['files_limit']} files in its directory (the disk limits, all its files together) "
                       "and was killed; write only what you return", **base)
    return None


def _unread(task_id: str, plan: Plan, answer: dict, base: dict) -> Verdict | None:
    """A verdict when the result file was not read (the worker says why) or is larger than this
    task's outputs can need (never unpickled: that would cost this process, not the candidate's)."""
    if answer.get("result_error"):
        return _forged(task_id, answer["result_error"], base)
    size = answer.get("result_size", len(answer.get("result") or b""))  # result_size: the worker did not read it
    if "result_size" in answer or size > plan.result_bytes:
        return Verdict(task_id, "output_too_large", f"its result is {_mib(size)}, more than this task's outputs "
                       f"can need ({_mib(plan.result_bytes)}): return tensors of the expected shapes and dtypes",
                       **base)
    return None


def _died(task_id: str, answer: dict, base: dict) -> Verdict:
    """The verdict of a run that left no result: the sandbox did not start, or the process died."""
    if answer["exit_code"] == CHILD_ERROR:
        cause = next((line.strip() for line in reversed(answer["stderr"].splitlines()) if line.strip()), "")
        return Verdict(task_id, "sandbox_error", "the sandbox failed to start" + (f": {cause}" if cause else ""),
                       **base)
    how = f"signal {answer['signal']}" if answer["signal"] else f"exit code {answer['exit_code']}"
    if _cpu_killed(answer):
        return Verdict(task_id, "crashed", f"the process was killed ({how}) at its CPU-time limit of "
                       f"{answer['cpu_limit']} s (it used {answer['cpu_seconds']:.1f} s of CPU)", **base)
    return Verdict(task_id, "crashed", f"the process died ({how}) before saving a result; a memory or "
                   "file-size limit, or the process exiting on its own", **base)


def _forged(task_id: str, what: str, base: dict) -> Verdict:
    return Verdict(task_id, "crashed", f"its result file is malformed ({what}): only the harness writes it, so "
                   "do not write it or exit the process yourself", **base)


def _cpu_killed(answer: dict) -> bool:
    """Killed by RLIMIT_CPU: SIGXCPU at the soft limit or SIGKILL at the hard one, with the CPU time
    to show for it."""
    limit, used = answer.get("cpu_limit"), answer.get("cpu_seconds")
    return (answer["signal"] in (signal.SIGXCPU, signal.SIGKILL) and limit is not None and used is not None
            and used >= 0.95 * limit)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB"


def _cases(task_id: str, plan: Plan, result: dict, base: dict) -> Verdict:
    outputs, after, launches = (_list(result.get(key)) for key in ("outputs", "inputs_after", "launches"))
    if len(outputs) != len(plan.expected) or not all(isinstance(n, int) for n in launches):
        return Verdict(task_id, "crashed", f"{len(outputs)} results for {len(plan.expected)} cases", **base)
    for i, name in enumerate(plan.case_names):
        atol, rtol = plan.tolerances[i]
        wrong = compare(plan.expected[i], outputs[i], atol, rtol)
        if wrong:
            return Verdict(task_id, "wrong_output", f"case {name}: {wrong}", cases_passed=i, **base)
        if plan.originals is not None:
            changed = identical(plan.originals[i], after[i] if i < len(after) else None)
            if changed:
                return Verdict(task_id, "mutated_input", f"case {name}: the inputs were modified ({changed}); "
                               "write results to new tensors", cases_passed=i, **base)
        if (launches[i] if i < len(launches) else 0) < 1 and (plan.originals is not None or sum(launches) < 1):
            return Verdict(task_id, "no_kernel", f"case {name}: no Triton kernel was launched; the answer must "
                           "compute with a @triton.jit kernel", cases_passed=i, **base)
    return Verdict(task_id, "passed", f"all {len(plan.case_names)} cases match", cases_passed=len(plan.case_names),
                   **base)


def _load(blob: bytes | None) -> dict | None:
    if not blob:
        return None
    try:
        result = torch.load(io.BytesIO(blob), weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError):
        return None
    return result if isinstance(result, dict) else None


STAGES = {*STAGE_STATUS, "done"}
RESULT_FIELDS = {  # key -> (what it must be, its check); runner.py writes them
    "stage": ("one of " + ", ".join(sorted(STAGES)), lambda v: type(v) is str and v in STAGES),
    "case": ("an integer", lambda v: type(v) is int),
    "error": ("a string", lambda v: v is None or type(v) is str),
    "outputs": ("a list", lambda v: type(v) is list),
    "inputs_after": ("a list", lambda v: type(v) is list),
    "launches": ("a list of integers", lambda v: type(v) is list and all(type(n) is int for n in v)),
    "violations": ("a list of strings", lambda v: type(v) is list and all(type(x) is str for x in v)),
    "layers": ("a list of strings", lambda v: type(v) is list and all(type(x) is str for x in v)),
}


def _malformed(result: dict) -> str | None:
    """What is wrong with the result's structure, or None: `stage` present, every known key of the
    type runner.py writes (a forged file must not reach the comparison, nor the JSON logs)."""
    if "stage" not in result:
        return "no stage"
    for key, (kind, ok) in RESULT_FIELDS.items():
        try:
            good = key not in result or ok(result[key])
        except Exception:  # a comparison a forged value refuses (a tensor's truth value)
            good = False
        if not good:
            return f"{key} is not {kind}"
    return None


def _list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


def _violations(result: dict, answer: dict) -> list[str]:
    """Denials the run reported, and those it printed (a candidate can clear the first list,
    not what it already wrote to stderr): the first MAX_VIOLATIONS distinct ones, as the guard keeps them."""
    found = [*result.get("violations", []), *DENIED.findall(answer.get("stderr", ""))]
    return list(dict.fromkeys(v[:VIOLATION_CHARS] for v in found))[:MAX_VIOLATIONS]


def _error_text(result: dict, plan: Plan) -> str:
    """The traceback from the candidate's first frame on (harness frames say nothing useful)."""
    error = result.get("error") or "no error text"
    lines = error.splitlines()
    start = next((i for i, line in enumerate(lines) if "candidate" in line and line.strip().startswith("File")), None)
    text = "\n".join(lines[start:] if start is not None else lines[-12:])
    where = f"case {plan.case_names[result['case']]}: " if 0 <= result.get("case", -1) < len(plan.case_names) else ""
    return where + text[-3000:]
