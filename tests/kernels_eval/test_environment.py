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
