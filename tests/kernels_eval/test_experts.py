"""The task set: its format rules, and every expert solution passing its own tests in the sandbox
(under Triton's interpreter without a GPU; on a GPU, all of them)."""

import ast

import pytest
import torch

from reasonrl.envs.kernels.evaluate import EvaluatorConfig, KernelEvaluator
from reasonrl.envs.kernels.suite import FAMILIES, TASKS, get_task
from reasonrl.envs.kernels.task import KernelTask


def test_task_set_size_and_coverage():
    assert len(TASKS) >= 40
    assert len({t.id for t in TASKS}) == len(TASKS)
    assert set(FAMILIES) == {t.family for t in TASKS}
    assert {1, 2, 3, 4, 5} <= {t.level for t in TASKS}
    for needed in ("softmax", "layer_norm", "layer_norm_backward", "rms_norm_backward", "rope_neox", "matmul",
                   "causal_attention", "quantize_int8_rows", "dequantize_int8_rows", "flip", "sort_rows", "embedding",
                   "paged_decode"):
        get_task(needed)
    gpu_only = [t for t in TASKS if not t.cpu]
    assert all(t.cpu_note for t in gpu_only) and len(gpu_only) <= len(TASKS) // 10


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.id)
def test_task_format(task: KernelTask):
    assert len(task.shapes) >= 3 and any(d % 2 for s in task.shapes for d in s)
    assert task.instruction.strip() and task.signature.startswith(f"def {task.entry}(")
    tree = ast.parse(task.expert_source())  # the expert is a self-contained module defining the entry
    assert task.entry in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    case = task.cases()[-1]
    a, b = task.inputs(case), task.inputs(case)
    for x, y in zip(a, b):  # inputs are a pure function of the case
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
    assert task.inputs(task.cases()[0]) is not None
    seeds = {c.seed for c in task.cases()}
    assert len(seeds) >= 2  # every shape twice, with fresh inputs: caching between calls fails


def test_missing_odd_shape_or_too_few_shapes_is_refused():
    base = get_task("vector_add")
    with pytest.raises(ValueError, match="at least 3"):
        KernelTask(**{**base.__dict__, "shapes": ((3,), (5,))})
    with pytest.raises(ValueError, match="odd"):
        KernelTask(**{**base.__dict__, "shapes": ((2,), (4,), (8,))})


@pytest.mark.slow
def test_every_expert_passes_its_own_tests():
    with KernelEvaluator(EvaluatorConfig(workers=2)) as evaluator:
        verdicts = evaluator.evaluate_many([(t, t.expert_source()) for t in TASKS])
    for task, verdict in zip(TASKS, verdicts):
        if not task.cpu and evaluator.device == "cpu":
            assert verdict.status == "not_on_cpu", task.id
        else:
            assert verdict.status == "passed", (task.id, verdict.message, verdict.stderr[-500:])
            assert verdict.cases_passed == len(task.cases())


@pytest.mark.gpu
def test_every_expert_passes_on_a_gpu():
    with KernelEvaluator(EvaluatorConfig(workers=1, device="cuda", timing=False)) as evaluator:
        verdicts = evaluator.evaluate_many([(t, t.expert_source()) for t in TASKS])
    assert [v.task_id for v in verdicts if not v.exec_ok] == []
