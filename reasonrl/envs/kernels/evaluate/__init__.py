"""The kernel evaluator: sandboxed candidate runs, verdicts judged in the parent, GPU timing.

evaluator.py (KernelEvaluator, the driver) · plan.py (inputs and reference outputs) · zygote.py
(the warm worker) · sandbox.py (fork, namespaces, limits, seccomp, audit hook: isolation.py,
limits.py, seccomp.py, guard.py) · runner.py (inside the sandbox) · judge.py and compare.py
(verdicts) · verdict.py · timing.py and speed.py (GPU speedups).
"""

from .compare import compare
from .evaluator import EvaluatorConfig, KernelEvaluator
from .limits import SandboxLimits
from .verdict import Verdict

__all__ = ["EvaluatorConfig", "KernelEvaluator", "SandboxLimits", "Verdict", "compare"]
