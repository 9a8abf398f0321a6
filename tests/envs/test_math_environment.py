"""MathEnvironment, the arithmetic generator and the benchmark (reasonrl/envs/math/environment.py,
bench.py)."""

import pytest

from reasonrl.envs.base import Prompt
from reasonrl.envs.math import MATH_SYSTEM_PROMPT, MathEnvironment, MathVerifier, arithmetic_problems
from reasonrl.envs.math.bench import MathBenchConfig, benchmark


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(workers=2) as v:
        yield v


RECORDS = [("What is 1/2 + 1/4?", "\\frac{3}{4}"), ("Simplify sqrt(8).", "2\\sqrt{2}"), ("2+2?", 4)]


def test_prompts_carry_the_system_prompt_and_answer(verifier):
    env = MathEnvironment(RECORDS, verifier=verifier, name="toy")
    prompts = env.prompts()
    assert [p.id for p in prompts] == ["toy-0", "toy-1", "toy-2"]
    assert prompts[0].messages == [{"role": "system", "content": MATH_SYSTEM_PROMPT},
                                   {"role": "user", "content": "What is 1/2 + 1/4?"}]
    assert "\\boxed{}" in MATH_SYSTEM_PROMPT and "step by step" in MATH_SYSTEM_PROMPT
    assert prompts[2].answer == 4
    bare = MathEnvironment(RECORDS[:1], verifier=verifier, system_prompt=None)
    assert [m["role"] for m in bare.prompts()[0].messages] == ["user"]


def test_prompt_sampling_is_seeded_and_covers_the_set(verifier):
    env = MathEnvironment([(f"q{i}", str(i)) for i in range(10)], verifier=verifier)
    a, b = env.prompts(n=4, seed=1), env.prompts(n=4, seed=1)
    assert [p.id for p in a] == [p.id for p in b]
    assert len({p.id for p in a}) == 4  # without replacement
    assert [p.id for p in env.prompts(n=4, seed=2)] != [p.id for p in a]
    many = env.prompts(n=25, seed=0)  # more than the set: whole passes, reshuffled
    assert len(many) == 25 and len({p.id for p in many[:10]}) == 10 and len({p.id for p in many[10:20]}) == 10


def test_scoring(verifier):
    env = MathEnvironment(RECORDS, verifier=verifier)
    p = env.prompts()
    assert env.reward(p[0], "1/2 + 1/4 = 3/4, so \\boxed{0.75}") == 1.0
    assert env.reward(p[0], "\\boxed{\\frac{3}{5}}") == 0.0
    assert env.reward(p[1], "\\boxed{\\sqrt{8}}") == 1.0
    assert env.reward(p[2], "The answer is 4.") == 1.0
    assert env.reward(p[2], None) == 0.0
    responses = ["\\boxed{3/4}", "nothing", "\\boxed{5}"]
    rewards = env.rewards(p, responses)
    assert rewards == [1.0, 0.0, 0.0]
    metrics = env.metrics(p, responses, rewards)
    assert metrics["accuracy"] == pytest.approx(1 / 3) and metrics["answer_rate"] == pytest.approx(2 / 3)


def test_think_delimiter_required_when_configured():
    env = MathEnvironment(RECORDS, think_delimiter="</think>")
    try:
        p = env.prompts()[2]
        assert env.reward(p, "<think>2+2 is \\boxed{4}</think>So \\boxed{4}.") == 1.0
        assert env.reward(p, "<think>2+2 is \\boxed{4} but I ran out of tokens") == 0.0
    finally:
        env.close()
    with pytest.raises(ValueError, match="think_delimiter"):
        MathEnvironment(RECORDS, verifier=MathVerifier(), think_delimiter="</think>")


def test_prompts_pass_through(verifier):
    prompt = Prompt(id="x", messages=[{"role": "user", "content": "hi"}], answer="1", metadata={"level": 2})
    env = MathEnvironment([prompt], verifier=verifier)
    assert env.prompts() == [prompt]
    with pytest.raises(ValueError):
        MathEnvironment([], verifier=verifier)


def test_arithmetic_problems_are_right(verifier):
    problems = arithmetic_problems(200, seed=3)
    assert problems == arithmetic_problems(200, seed=3)
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for question, answer in problems:
        a, op1, b, op2, c = question.removeprefix("Compute ").removesuffix(".").split()
        first = ops[op1](int(a), int(b))
        assert ops[op2](first, int(c)) == int(answer)
    env = MathEnvironment(problems[:20], verifier=verifier)
    prompts = env.prompts()
    assert env.rewards(prompts, [f"\\boxed{{{p.answer}}}" for p in prompts]) == [1.0] * 20


def test_benchmark_rewards_match_their_labels():
    result = benchmark(MathBenchConfig(n=300, workers=2, hangs=0))
    assert result["wrong_rewards"] == 0 and result["timeouts"] == 0
    assert result["judgements_per_s"] > 0 and result["quick"] > result["pooled"] > 0
    assert sum(result["mix"].values()) == 300


@pytest.mark.slow
def test_benchmark_counts_hangs_as_timeouts():
    result = benchmark(MathBenchConfig(n=50, workers=2, hangs=1, timeout=2.0))
    assert result["hang_pass_timeouts"] == 1 and result["hang_pass_wrong_rewards"] == 0
