"""Loaders for the published suites' formats, on files written here in those formats."""

import json

import pytest

from reasonrl.envs.kernels.evaluate import EvaluatorConfig, KernelEvaluator
from reasonrl.envs.kernels.published import for_cpu, load_rocm, load_tritonbench, signatures, split_file

KERNEL = '''import torch
import triton
import triton.language as tl


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask), mask=mask)


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    add_kernel[(triton.cdiv(x.numel(), 256),)](x, y, out, x.numel(), BLOCK=256)
    return out
'''
SEPARATOR = "#" * 146
TB_TESTS = '''
def test_add():
    torch.manual_seed(42)
    x = torch.randn(1000, device='cuda')
    y = torch.randn(1000, device="cuda")
    small = torch.randn(7, device='cuda')
    return {"case_1": add(x, y), "nested": [add(small, small), (add(x, x),)]}


result_gold = test_add()
'''
ROCM_TESTS = '''
import pytest
import torch
from geak_eval.perf.ROCm.performance_utils_pytest import PytestBenchmarker

result_gold = {}


@pytest.mark.parametrize("SIZE", [98, 1025])
@pytest.mark.parametrize("dtype_str", ["float16", "float32"])
def test_add(SIZE, dtype_str, request):
    torch.manual_seed(42)
    dtype = getattr(torch, dtype_str)
    x = torch.randn(SIZE, device='cuda', dtype=dtype)
    y = torch.randn(SIZE, device='cuda', dtype=dtype)
    result_gold['_CALL_SUCCESS_'] = torch.tensor([[1.0]])
    result_gold[request.node.name] = add(x, y).cpu()


def test_performance(request):
    PytestBenchmarker(lambda: None)


def test_save_results():
    torch.save(result_gold, __file__ + ".pt")
'''


@pytest.fixture
def suites(tmp_path):
    tb, rocm = tmp_path / "tb", tmp_path / "rocm"
    tb.mkdir()
    rocm.mkdir()
    (tb / "add_example.py").write_text(KERNEL + SEPARATOR + "\n" + TB_TESTS)
    (tb / "no_separator.py").write_text(KERNEL)
    (rocm / "test_add_kernel.py").write_text(KERNEL + SEPARATOR + "  \n" + ROCM_TESTS)
    alpaca = tmp_path / "instructions.json"
    alpaca.write_text(json.dumps([{"file": "add_example.py", "instruction": "Add two vectors.", "difficulty": "1"}]))
    return tb, rocm, alpaca


def test_formats_are_read(suites):
    tb, rocm, alpaca = suites
    tasks = load_tritonbench(tb, alpaca)
    assert [t.id for t in tasks] == ["tritonbench/add_example"]  # the file without a separator is skipped
    task = tasks[0]
    assert task.instruction == "Add two vectors." and task.level == 1
    assert "@triton.jit\ndef add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr)" in task.signature
    assert "def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor" in task.signature
    assert task.tolerance == (1e-2, 1e-1) and "result_gold = test_add()" in task.tests
    (rocm_task,) = load_rocm(rocm)
    assert rocm_task.id == "rocm/test_add_kernel" and "geak_eval" not in rocm_task.tests
    assert "_reasonrl_run_correctness_tests()" in rocm_task.tests
    assert split_file("no separator here") is None
    assert signatures("def f(a, b=2) -> int:\n    return a") == "def f(a, b=2) -> int"
    assert for_cpu("x.cuda(); torch.empty(3, device='cuda:0'); torch.cuda.synchronize()") == \
        "x.cpu(); torch.empty(3, device='cpu'); None"
    with pytest.raises(FileNotFoundError):
        load_rocm(tb / "missing")


WRONG = KERNEL.replace("tl.load(x_ptr + offs, mask=mask) + tl.load", "tl.load(x_ptr + offs, mask=mask) - tl.load")
NEARLY = KERNEL.replace("return out", "return out + 0.005")  # inside atol 1e-2, also deep in the nest
CHEAT = KERNEL + '''

def test_add():
    return {}

result_gold = {"case_1": None}
'''


def test_published_tasks_are_judged_by_their_tests(suites):
    tb, rocm, _ = suites
    (tb_task,) = load_tritonbench(tb)
    (rocm_task,) = load_rocm(rocm)
    with KernelEvaluator(EvaluatorConfig(workers=2)) as evaluator:
        verdicts = evaluator.evaluate_many([(tb_task, KERNEL), (tb_task, WRONG), (tb_task, NEARLY), (tb_task, CHEAT),
                                            (rocm_task, KERNEL), (rocm_task, WRONG)])
    assert [v.status for v in verdicts] == ["passed", "wrong_output", "passed", "passed", "passed", "wrong_output"]
    assert "output['case_1']" in verdicts[1].message
    assert "test_add[" in verdicts[5].message  # the ROCm key names the parametrized case


ORDERED_TESTS = '''
import collections

def test_add():
    torch.manual_seed(42)
    x, y = torch.randn(1000, device='cuda'), torch.randn(1000, device='cuda')
    return collections.OrderedDict(case_1=add(x, y), dtype=x.dtype)


result_gold = test_add()
'''


def test_a_gold_the_evaluator_cannot_represent_never_passes_a_candidate(tmp_path):
    """An OrderedDict gold became the string '<unsupported collections.OrderedDict>' on both sides,
    and equal placeholders passed: x - y passed a task whose tests add x and y."""
    returns_a_set = ORDERED_TESTS.replace("collections.OrderedDict(case_1=add(x, y), dtype=x.dtype)", "{1, 2}")
    for name, tests in (("ordered", ORDERED_TESTS), ("set", returns_a_set)):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}_add.py").write_text(KERNEL + SEPARATOR + "\n" + tests)
    (ordered,) = load_tritonbench(tmp_path / "ordered")
    (unsupported,) = load_tritonbench(tmp_path / "set")
    set_kernel = WRONG.replace("    return out", "    return {1, 2}")
    with KernelEvaluator(EvaluatorConfig(workers=2)) as evaluator:
        verdicts = evaluator.evaluate_many([(ordered, KERNEL), (ordered, WRONG), (ordered, set_kernel),
                                            (unsupported, KERNEL)])
    assert [v.status for v in verdicts] == ["passed", "wrong_output", "runtime_error", "task_error"], verdicts
    assert "output['case_1']" in verdicts[1].message
    assert "builtins.set, which cannot be compared" in verdicts[2].message
    assert "builtins.set, which cannot be compared" in verdicts[3].message


BROKEN_TESTS = '''
def test_add():
    torch.cuda.get_device_name()  # a test written for a GPU only
    return add(torch.ones(3, device='cuda'), torch.ones(3, device='cuda'))


result_gold = test_add()
'''
PEEK = '''
import glob
_src = open(glob.glob({directory!r} + "/*.py")[0]).read().split("#" * 146)[0]
exec(_src)
'''


def test_the_suites_directory_is_hidden_from_candidates(suites):
    """The suite's files are the answer keys: a candidate globbed them and ran the reference (passed)."""
    tb, _, _ = suites
    (task,) = load_tritonbench(tb)
    with KernelEvaluator(EvaluatorConfig(workers=1)) as evaluator:
        peek = evaluator.evaluate(task, PEEK.format(directory=str(tb)))
        assert str(tb.resolve()) in evaluator.hidden
    assert peek.status == "forbidden" and "(hidden)" in peek.message, peek.message


def test_a_failing_reference_is_the_tasks_problem_and_a_timeout_is_not_kept(suites):
    """A published task whose reference fails was judged `sandbox_error` (the machine's failure: the
    agent stopped, and stopped again on every rerun); a timeout of the reference was kept for the
    evaluator's lifetime."""
    tb, _, _ = suites
    (good,) = load_tritonbench(tb)
    broken_dir = tb.parent / "broken"
    broken_dir.mkdir()
    (broken_dir / "b_add.py").write_text(KERNEL + SEPARATOR + "\n" + BROKEN_TESTS)
    (broken,) = load_tritonbench(broken_dir)
    with KernelEvaluator(EvaluatorConfig(workers=1)) as evaluator:
        bad = evaluator.evaluate(broken, KERNEL)
        assert bad.status == "task_error" and "get_device_name" in bad.message, bad.message
        real, runs = evaluator._run_reference, []

        def timed_out(job):
            runs.append(job)
            return {"result": None, "exit_code": None, "signal": 9, "timed_out": True, "elapsed": 1.0,
                    "stdout": "", "stderr": ""}
        evaluator._run_reference = timed_out
        assert evaluator.evaluate(good, KERNEL).status == "not_judged" and len(runs) == 1
        evaluator._run_reference = real
        assert evaluator.evaluate(good, KERNEL).status == "passed"  # planned again: the timeout was not kept


TIMED_OUT = {"result": None, "exit_code": None, "signal": 9, "timed_out": True, "elapsed": 5.0, "stdout": "",
             "stderr": ""}


def failed(error):
    import io

    import torch

    blob = io.BytesIO()
    torch.save({"stage": "import", "error": error}, blob)
    return {"result": blob.getvalue(), "exit_code": 1, "signal": None, "timed_out": False, "elapsed": 0.1,
            "stdout": "", "stderr": ""}


def test_a_reference_that_times_out_runs_once_per_call_and_blames_no_one():
    """Its reference ran again for every candidate of a batch (8 candidates: 8 runs, each up to the
    timeout, one after the other), and every candidate got `task_error` ("the task's problem"),
    which closes a GEAK trajectory for good; a KernelEnvironment kept that verdict per response."""
    from reasonrl.envs.base import Prompt
    from reasonrl.envs.kernels import KernelEnvironment
    from reasonrl.envs.kernels.published import ScriptTask

    task = ScriptTask("suite/t", "suite", "do it", "def f(x)", "def f(x): return x", "result_gold = 1", (1e-3, 1e-3))
    runs, answers = [], iter([TIMED_OUT, TIMED_OUT, TIMED_OUT, failed("RuntimeError: boom")])
    with KernelEvaluator(EvaluatorConfig(workers=1)) as evaluator:
        evaluator._run_reference = lambda job: (runs.append(job), next(answers))[1]
        verdicts = evaluator.evaluate_many([(task, f"def f(x): return x + {i}") for i in range(8)])
        assert len(runs) == 1 and {v.status for v in verdicts} == {"not_judged"}
        assert "task's problem" not in verdicts[0].message and "passed the wall-clock limit" in verdicts[0].message
        evaluator.evaluate_many([(task, "def f(x): return x")] * 2)
        assert len(runs) == 2  # not kept: planned again at the next call
        env = KernelEnvironment([task], evaluator=evaluator)
        prompt, response = Prompt("suite/t", [], answer="suite/t"), "```python\ndef f(x): return x\n```"
        assert env.judge([prompt], [response])[0].status == "not_judged" and len(runs) == 3
        assert env.judge([prompt], [response])[0].status == "task_error" and len(runs) == 4  # judged again
        assert env.judge([prompt], [response])[0].status == "task_error" and len(runs) == 4  # a failure is kept
        assert evaluator.evaluate(task, "def f(x): return 2 * x").status == "task_error" and len(runs) == 4
