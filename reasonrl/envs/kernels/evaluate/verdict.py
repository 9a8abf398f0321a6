"""A verdict: what the evaluator concluded about one candidate for one task.

Statuses, from the first thing that went wrong:

    passed          every case right, inputs untouched, a Triton kernel launched each call
    no_code         the response held no code block (the environment's and agent's parsers)
    import_error    the module does not import (syntax errors included)
    missing_entry   it defines no function with the signature's name
    runtime_error   the function raised on a case
    timeout         the run passed its wall-clock limit (its process group was killed)
    crashed         the process died (a signal, a memory or CPU limit, an unreadable result)
    output_too_large  its outputs passed the file-size limit, or its result file is larger than the
                    task's outputs can need (plan.py: never unpickled)
    forbidden       the sandbox denied something it tried (a socket, a process, a write outside
                    its directory, reading the task suite, ...)
    wrong_output    an output differs from the reference beyond the tolerance
    mutated_input   it wrote into its inputs
    no_kernel       a call launched no Triton kernel (e.g. it called PyTorch instead)
    not_on_cpu      the task's correctness check needs a GPU and none is present
    sandbox_error   the sandbox itself failed to start (not the candidate's doing)
    not_judged      not judged this time: the task's reference ran out of time or its worker did not
                    answer, which may not recur (blamed on neither the candidate nor the task)
    task_error      the task's own reference failed (a published suite's file), so nothing can be
                    judged on it (the task's problem, not the candidate's nor the machine's)

`sandbox_error` and `not_judged` are UNSETTLED: the machine's failure, which may not recur, so a
caller judges the candidate again when asked again instead of keeping the verdict.

Call accuracy counts verdicts whose code ran every case to completion (`call_ok`); execution
accuracy those that passed (`exec_ok`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

CALL_OK = {"passed", "wrong_output", "mutated_input", "no_kernel"}
STATUSES = CALL_OK | {"no_code", "import_error", "missing_entry", "runtime_error", "timeout", "crashed",
                      "output_too_large", "forbidden", "not_on_cpu", "sandbox_error", "not_judged", "task_error"}
UNSETTLED = {"sandbox_error", "not_judged"}  # not final: judged again when asked again
SUSPICIOUS_SPEEDUP = 10.0  # KernelBench's "excessive speedup": flagged for a human, never dropped


@dataclass
class Verdict:
    task_id: str
    status: str
    message: str = ""
    """One paragraph for a person or the agent's reflector (already truncated)."""
    cases: int = 0
    cases_passed: int = 0
    elapsed: float = 0.0
    stdout: str = ""
    stderr: str = ""
    layers: list[str] = field(default_factory=list)
    """The sandbox layers that held for this run (namespaces, seccomp, ...)."""
    violations: list[str] = field(default_factory=list)
    speedup: float | None = None
    """Reference time / candidate time summed over the timing shapes (GPU only)."""
    expert_speedup: float | None = None
    """Expert time / candidate time over the same shapes: > 1 is faster than the expert."""
    timings: dict[str, Any] | None = None
    flags: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown verdict status {self.status!r}")
        if self.speedup is not None and self.speedup >= SUSPICIOUS_SPEEDUP and "speedup>=10x" not in self.flags:
            self.flags.append("speedup>=10x")

    @property
    def call_ok(self) -> bool:
        return self.status in CALL_OK

    @property
    def exec_ok(self) -> bool:
        return self.status == "passed"

    def feedback(self, limit: int = 4000) -> str:
        """What the agent's reflector is shown: the message, then the tail of stderr."""
        text = f"status: {self.status}\n{self.message}"
        if self.stderr.strip() and self.status not in ("passed", "wrong_output"):
            text += f"\nstderr (tail):\n{self.stderr[-limit // 2:]}"
        return text[:limit]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "call_ok": self.call_ok, "exec_ok": self.exec_ok}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
