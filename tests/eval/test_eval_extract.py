"""`Environment.extract` (the answer a response commits to) and how eval reports parse failures."""

import json

import pytest
from eval_fake_server import FakeServer, problem_text

from reasonrl.envs.base import Environment, Prompt
from reasonrl.envs.jsonl import load_jsonl
from reasonrl.envs.math import MathEnvironment
from reasonrl.envs.registry import load_environment
from reasonrl.eval import run_eval

FAST = dict(progress=False, backoff=0.01)


def test_ttt_extract_reads_the_scored_answer():
    env = load_environment("ttt:oTTT")
    prompt = env.prompts(1, split="eval")[0]
    assert env.extract(prompt, "Alice must block.\n\\boxed{E}") == "E"
    assert env.extract(prompt, "I think we should play at C.") == "C"
    assert env.extract(prompt, "no idea at all") is None
    assert env.extract(prompt, None) is None  # untrusted: never raises
    label = prompt.answer[0]
    assert env.reward(prompt, f"\\boxed{{{label}}}") == 1.0 and env.extract(prompt, f"\\boxed{{{label}}}") == label


def test_math_and_jsonl_extract(tmp_path):
    env = MathEnvironment([("What is 1 + 1?", "2")])
    prompt = env.prompts()[0]
    assert env.extract(prompt, "so the sum is \\boxed{2}") == "2"
    assert env.extract(prompt, "two, I guess") is None
    assert env.extract(prompt, 12) is None
    env.close()

    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "Capital of France?", "answer": "Paris"}) + "\n")
    exact = load_jsonl(path, prompt="question", reward="exact")
    p = exact.prompts()[0]
    assert exact.extract(p, "Let me think.\nAnswer: Paris") == "Paris" and exact.reward(p, "Answer: Paris") == 1.0
    assert exact.extract(p, "   ") is None

    path.write_text(json.dumps({"question": "Pick one", "answer": "B", "choices": ["x", "y"]}) + "\n")
    choice = load_jsonl(path, prompt="question", reward="choice", choices="choices")
    p = choice.prompts()[0]
    assert choice.extract(p, "Answer: (B)") == "B" and choice.reward(p, "Answer: (B)") == 1.0
    assert choice.extract(p, "I think it is the second") is None and choice.reward(p, "I think") == 0.0


class NoExtract(Environment):
    """An environment that does not say what its answers are: parse failures are unknown."""

    name = "echo"

    def prompts(self, n=None, seed=0, split="train"):
        return [Prompt(id=f"q{i}", messages=[{"role": "user", "content": f"say {i}"}], answer=str(i),
                       metadata={"parity": "even" if i % 2 == 0 else "odd"}) for i in range(n or 4)]

    def score(self, prompt, response):
        return 1.0 if response.strip() == prompt.answer else 0.0


def test_unknown_parse_failures_are_reported_as_unknown(tmp_path):
    server = FakeServer(lambda body, attempt: problem_text(body).split()[-1] if "1" not in problem_text(body) else "?")
    try:
        summary = run_eval(NoExtract(), model="fake", base_url=server.url, out=tmp_path, n=2, **FAST)
    finally:
        server.stop()
    assert summary["parse_failure_rate"] is None and summary["pass@1"] == 0.75
    assert summary["subsets"]["parity"]["odd"]["pass@1"] == 0.5
    assert summary["benchmark"] == "echo"
    assert "| all | 4 | 8 | 0.750 | 0.750 | 0.750 | - |" in (tmp_path / "summary.md").read_text()


def test_math_file_scores_one_with_the_reference_answers(tmp_path):
    rows = [{"problem": f"Compute {a} + {b}.", "answer": str(a + b), "level": f"L{a % 3}"} for a, b in
            [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)]]
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers = {r["problem"]: r["answer"] for r in rows}
    server = FakeServer(lambda body, attempt: f"Adding up: \\boxed{{{answers[problem_text(body)]}}}")
    try:
        summary = run_eval(f"math:{path}?metadata=level", model="fake", base_url=server.url, out=tmp_path / "out",
                           n=2, **FAST)
    finally:
        server.stop()
    assert summary["pass@1"] == 1.0 and summary["pass@2"] == 1.0 and summary["parse_failure_rate"] == 0.0
    assert set(summary["subsets"]) == {"level"} and set(summary["subsets"]["level"]) == {"L0", "L1", "L2"}
    assert summary["env_metrics"]["answer_rate"] == 1.0


@pytest.mark.parametrize("k", [[0], [3]])
def test_k_outside_1_to_n_is_refused(k, tmp_path):
    with pytest.raises(ValueError, match="k must be between 1 and n=2"):
        run_eval("ttt:oTTT", model="fake", base_url="http://127.0.0.1:9/v1", out=tmp_path, n=2, k=k)


def test_numeric_subsets_are_listed_by_value():
    from reasonrl.eval.summary import _natural

    assert sorted(["10", "2", "9", "all", "3.5"], key=_natural) == ["2", "3.5", "9", "10", "all"]
