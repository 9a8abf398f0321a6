"""What the harness reads back from a candidate's directory, and what the parent then loads: a
candidate's process can leave anything there (a symlink, a FIFO, a forged result of any size), and
none of it may cost the worker or the parent more than a right answer would."""

import io

import pytest
import torch

from reasonrl.envs.kernels.evaluate import EvaluatorConfig, KernelEvaluator, SandboxLimits
from reasonrl.envs.kernels.evaluate.judge import judge
from reasonrl.envs.kernels.evaluate.plan import function_plan
from reasonrl.envs.kernels.suite import get_task

TASK = get_task("vector_add")
LEAVES = "import os, torch\n{action}\nos._exit(0)\n\ndef vector_add(x, y):\n    pass\n"
FORGED_LAYERS = "torch.save({'stage': 'import', 'error': 'x', 'layers': ['x'] * 1_000_000}, '.result.pt')"
FIFO_LOG = '''
import os
os.remove(".stdout")
os.mkfifo(".stdout")  # the log as a FIFO: a right answer all the same
'''


@pytest.fixture(scope="module")
def evaluator():
    with KernelEvaluator(EvaluatorConfig(workers=2), SandboxLimits(timeout=5.0)) as ev:
        yield ev


def test_a_symlink_a_fifo_or_an_oversized_result_is_that_candidates_failure_at_once(evaluator):
    """A symlink to /dev/zero as the result made the worker read without end (the host's memory); a
    FIFO blocked the worker's open() until the pool's deadline (5 s + 30 s here, then a `timeout` and
    a new worker); a forged result of a million strings was unpickled by the parent."""
    sources = [LEAVES.format(action="os.symlink('/dev/zero', '.result.pt')"),
               LEAVES.format(action="os.mkfifo('.result.pt')"),
               LEAVES.format(action=FORGED_LAYERS),
               TASK.expert_source() + FIFO_LOG]
    verdicts = evaluator.evaluate_many([(TASK, s) for s in sources])  # (the FIFO's old verdict: timeout)
    assert [v.status for v in verdicts] == ["crashed", "crashed", "output_too_large", "passed"], verdicts
    assert "(.result.pt is a symbolic link)" in verdicts[0].message
    assert "(.result.pt is not a regular file)" in verdicts[1].message
    assert "more than this task's outputs can need" in verdicts[2].message and verdicts[2].layers == []
    assert verdicts[3].stdout == "[.stdout was not read: .stdout is not a regular file]"


def test_the_worker_caps_its_own_memory_and_its_children_lift_the_cap(evaluator):
    """The pool was started with max_memory_mb=None and the worker ignored --max-memory-mb anyway."""
    peek = "import resource\ndef vector_add(x, y):\n    raise ValueError(resource.getrlimit(resource.RLIMIT_DATA))\n"
    verdict = evaluator.evaluate(TASK, peek)  # also makes sure the workers are up
    for pid in evaluator._pool.pids():
        with open(f"/proc/{pid}/limits") as f:
            soft = next(line.split()[3] for line in f if line.startswith("Max data size"))
        assert soft != "unlimited" and int(soft) < (8 << 30), soft
    assert verdict.status == "runtime_error" and "ValueError: (-1, -1)" in verdict.message  # lifted: AS caps it


def forged(result: dict) -> dict:
    blob = io.BytesIO()
    torch.save(result, blob)
    return {"result": blob.getvalue(), "exit_code": 0, "signal": None, "timed_out": False, "elapsed": 0.1,
            "stdout": "", "stderr": ""}


def test_the_parent_never_unpickles_more_than_the_task_can_need(monkeypatch):
    """A forged result with 2 million strings in `layers` (4 MiB, under the file-size limit) took the
    parent seconds to load, and was kept whole in the verdict; 57 MiB took 30 s and 500 MB."""
    plan = function_plan(TASK)
    answer = forged({"stage": "import", "error": "x", "layers": ["x"] * 2_000_000})
    loaded = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loaded.append(a) or {})
    verdict = judge(TASK.id, plan, answer)
    assert verdict.status == "output_too_large" and verdict.layers == [] and loaded == [], verdict.message
    monkeypatch.undo()
    small = judge(TASK.id, plan, forged({"stage": "import", "error": "x", "layers": ["seccomp", "bogus", "seccomp"],
                                         "violations": [f"{i}" * 1000 for i in range(100)]}))
    assert small.status == "forbidden" and small.layers == ["seccomp"]
    assert len(small.violations) == 20 and all(len(v) == 300 for v in small.violations)
