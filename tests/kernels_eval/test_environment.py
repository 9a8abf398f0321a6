"""KernelEnvironment: prompts, rewards that never raise or hang, metrics, specs, and `reasonrl eval`
against an OpenAI-compatible endpoint that answers with the experts."""

import sys
import time
from pathlib import Path

import pytest

from reasonrl.envs.base import Prompt
from reasonrl.envs.kernels import KernelEnvironment, KernelRewardConfig, select_tasks
from reasonrl.envs.kernels.evaluate import EvaluatorConfig, KernelEvaluator, SandboxLimits, Verdict
from reasonrl.envs.kernels.suite import TASKS, get_task
from reasonrl.envs.registry import load_environment

sys.path.insert(0, str(Path(__file__).parents[1] / "eval"))
from eval_fake_server import FakeServer, problem_text  # noqa: E402


@pytest.fixture(scope="module")
def evaluator():
    with KernelEvaluator(EvaluatorConfig(workers=2), SandboxLimits(timeout=8.0)) as ev:
        yield ev


def fenced(code):
    return f"Here is my kernel.\n```python\n{code}```\n"


def test_prompts_splits_and_metadata():
    env = KernelEnvironment(TASKS)
    train, held = env.prompts(split="train"), env.prompts(split="eval")
    assert {p.id for p in train}.isdisjoint({p.id for p in held}) and len(train) + len(held) == len(TASKS)
    assert len(env.prompts(split="all")) == len(TASKS) and held
    p = env.prompts(split="all")[0]
    assert p.answer == p.id and p.metadata["family"] == "elementwise" and p.messages[0]["role"] == "system"
    assert [q.id for q in env.prompts(5, seed=3, split="all")] == [q.id for q in env.prompts(5, seed=3, split="all")]
    with pytest.raises(ValueError, match="split"):
        env.prompts(split="test")


def test_rewards_never_raise_and_never_hang(evaluator):
    task = get_task("vector_add")
    env = KernelEnvironment([task], evaluator=evaluator, reward=KernelRewardConfig(call_credit=0.1))
    (prompt,) = env.prompts(split="all")
    wrong = task.expert_source().replace("x + y", "x - y")
    hang = "import triton\n```python\ndef vector_add(x, y):\n    while True:\n        pass\n```"
    responses = [fenced(task.expert_source()), fenced(wrong), "no code at all", None, hang, fenced("def (")]
    start = time.monotonic()
    rewards = env.rewards([prompt] * len(responses), responses)
    assert rewards == [1.0, 0.1, 0.0, 0.0, 0.0, 0.0]
    assert time.monotonic() - start < 60  # the hanging answer was killed at its 8 s limit
    assert env.reward(prompt, fenced(task.expert_source())) == 1.0  # judged once, remembered
    metrics = env.metrics([prompt] * len(responses), responses, rewards)
    assert metrics["exec_accuracy"] == pytest.approx(1 / 6) and metrics["call_accuracy"] == pytest.approx(2 / 6)
    assert metrics["statuses"]["no_code"] == 2 and metrics["statuses"]["timeout"] == 1
    assert metrics["accuracy/elementwise"] == pytest.approx(1 / 6)  # per family: solved only, not call credit
    stranger = Prompt("other", [], answer="not-a-task")
    assert env.rewards([stranger], ["x"]) == [0.0]


def test_speedup_adds_a_bounded_bonus():
    env = KernelEnvironment(TASKS[:1], reward=KernelRewardConfig(speedup_weight=0.5, speedup_cap=4.0))
    assert env.reward_of(Verdict("t", "passed")) == 1.0
    assert env.reward_of(Verdict("t", "passed", speedup=0.5)) == 1.0
    assert env.reward_of(Verdict("t", "passed", speedup=2.0)) == pytest.approx(1.25)
    assert env.reward_of(Verdict("t", "passed", speedup=100.0)) == pytest.approx(1.5)
    assert env.reward_of(Verdict("t", "wrong_output", speedup=None)) == 0.0


def test_specs_select_tasks():
    env = load_environment("kernels:?family=softmax,quant&level=2-3&cpu=1&holdout=0")
    ids = {p.id for p in env.prompts(split="all")}
    assert ids and all(get_task(i).family in ("softmax", "quant") and 2 <= get_task(i).level <= 3 for i in ids)
    assert "quantize_fp8_rows" not in ids  # its check needs a GPU
    assert [t.id for t in select_tasks(TASKS, ids="flip,matmul")] == ["matmul", "flip"]
    for bad in ("kernels:?nope=1", "kernels:?ids=nonexistent", "kernels:?level=9", "kernels:elsewhere=x"):
        with pytest.raises(ValueError):
            load_environment(bad)


@pytest.mark.parametrize("option, value", [("speedup_weight", "nan"), ("speedup_weight", "inf"), ("timeout", "inf"),
                                           ("timeout", "1e400"), ("timeout", "nan")])
def test_a_spec_value_that_is_not_finite_is_refused_by_name(option, value):
    """speedup_weight=nan passed every `<` check and made every reward NaN; timeout=inf raised a bare
    OverflowError from math.ceil, naming nothing."""
    with pytest.raises(ValueError, match=f"{option} must be a finite number"):
        load_environment(f"kernels:?ids=vector_add&{option}={value}")
    with pytest.raises(ValueError, match="speedup_cap must be a finite number"):
        KernelRewardConfig(speedup_cap=float("inf"))


def test_reasonrl_eval_on_the_kernel_environment(tmp_path):
    from reasonrl.eval import run_eval

    by_signature = {t.signature: t for t in TASKS}

    def reply(body, attempt):
        text = problem_text(body)
        task = next(t for s, t in by_signature.items() if s in text)
        return fenced(task.expert_source()) if task.id != "flip" else "I would rather not."

    server = FakeServer(reply)
    env = load_environment("kernels:?ids=vector_add,flip,row_sum&holdout=0")
    try:
        summary = run_eval(env, model="fake", base_url=server.url, out=tmp_path / "run", split="all",
                           progress=False)
    finally:
        server.stop()
        env.close()
    assert summary["pass@1"] == pytest.approx(2 / 3)
    assert summary["env_metrics"]["exec_accuracy"] == pytest.approx(2 / 3)
    assert summary["parse_failure_rate"] == pytest.approx(1 / 3)
    assert "exec_accuracy" in (tmp_path / "run" / "summary.md").read_text()


FORGED = "import torch, os\n\ndef vector_add(x, y):\n    torch.save({payload}, '.result.pt')\n    os._exit(0)\n"


def test_a_forged_result_file_is_that_candidates_crash_and_no_one_elses(evaluator):
    """A candidate writes the result file itself and exits: a structure the judge did not expect made
    evaluate_many raise (TypeError), so the environment scored the whole batch 0, the expert too."""
    import json

    task = get_task("vector_add")
    env = KernelEnvironment([task], evaluator=evaluator)
    (prompt,) = env.prompts(split="all")
    payloads = ['{"stage": "done", "violations": 5}', '{"stage": ["done"]}',
                '{"stage": "import", "error": "boom", "layers": torch.ones(2)}', '{"stage": "call", "case": "0"}',
                '{"stage": "done", "outputs": [], "launches": [1.5]}']
    responses = [fenced(task.expert_source())] + [fenced(FORGED.format(payload=p)) for p in payloads]
    assert env.rewards([prompt] * len(responses), responses) == [1.0] + [0.0] * len(payloads)
    verdicts = env.judge([prompt] * len(responses), responses)
    assert [v.status for v in verdicts[1:]] == ["crashed"] * len(payloads)
    assert all("malformed" in v.message for v in verdicts[1:])
    json.dumps([v.to_dict() for v in verdicts])  # what the agent logs


AUTOTUNED = '''
import torch, triton, triton.language as tl

@triton.autotune(configs=[triton.Config({"BLOCK": 128}), triton.Config({"BLOCK": 256})], key=["n"])
@triton.jit
def _add(x_ptr, y_ptr, o_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(o_ptr + offs, tl.load(x_ptr + offs, mask=m) + tl.load(y_ptr + offs, mask=m), mask=m)

def vector_add(x, y):
    out = torch.empty_like(x)
    n = x.numel()
    _add[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](x, y, out, n)
    return out
'''


def test_an_autotuned_kernel_runs_its_first_config_on_the_cpu(evaluator):
    """Triton's autotuner benchmarks through the active driver, and under the interpreter there is
    none: every correct @triton.autotune kernel was rejected ("0 active drivers")."""
    verdict = evaluator.evaluate(get_task("vector_add"), AUTOTUNED)
    assert verdict.status == "passed", (verdict.message, verdict.stderr[-500:])


def test_the_cpu_limit_follows_the_timeout_and_a_cpu_kill_says_so():
    """`timeout=120` left the CPU limit at 60 s (under the interpreter CPU time runs with the clock),
    and a run killed at the CPU limit read as a bare "exit code 137"."""
    assert SandboxLimits(timeout=120).cpu_seconds == 120 and SandboxLimits(timeout=0.5).cpu_seconds == 1
    assert SandboxLimits(timeout=120, cpu_seconds=7).cpu_seconds == 7
    env = load_environment("kernels:?ids=vector_add&timeout=120")
    assert env.evaluator.limits.cpu_seconds == 120
    env.close()
    spin = get_task("vector_add").expert_source().replace(
        "    out = torch.empty_like(x)", "    import time\n    t = time.process_time()\n"
        "    while time.process_time() - t < 5:\n        pass\n    out = torch.empty_like(x)", 1)
    assert "process_time" in spin
    with KernelEvaluator(EvaluatorConfig(workers=1), SandboxLimits(timeout=30.0, cpu_seconds=1)) as ev:
        verdict = ev.evaluate(get_task("vector_add"), spin)
    assert verdict.status == "crashed" and "CPU-time limit of 1 s" in verdict.message
