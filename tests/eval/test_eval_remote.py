"""`reasonrl eval` against fake OpenAI-compatible endpoints: scoring, retries, dead endpoints."""

import json
import time

import pytest
from eval_fake_server import FakeServer, free_port, problem_text

from reasonrl.envs.registry import load_environment
from reasonrl.eval import EndpointError, EvalConfig, IncompleteEval, run_eval

ROW_FIELDS = {"problem_id", "sample", "seed", "response", "extracted", "reward", "tokens", "finish_reason",
              "fingerprint"}
FAST = dict(progress=False, backoff=0.01, request_timeout=10.0)


@pytest.fixture(scope="module")
def solutions():
    """Problem text -> a correct position label, for the 8 problems `ttt:all` with limit=8 evaluates."""
    prompts = load_environment("ttt:all").prompts(8, seed=0, split="eval")
    return {p.messages[-1]["content"]: p.answer[0] for p in prompts}


def oracle(solutions):
    return lambda body, attempt: f"The position to play is decisive.\n\\boxed{{{solutions[problem_text(body)]}}}"


def read_rows(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_optimal_answers_score_exactly_one(solutions, tmp_path):
    server = FakeServer(oracle(solutions))
    try:
        t0 = time.monotonic()
        summary = run_eval("ttt:all", model="fake", base_url=server.url, out=tmp_path, n=3, k=[1, 2, 3], limit=8,
                           temperature=0.7, **FAST)
        elapsed = time.monotonic() - t0
    finally:
        server.stop()
    assert summary["pass@1"] == 1.0 and summary["pass@2"] == 1.0 and summary["pass@3"] == 1.0
    assert summary["parse_failure_rate"] == 0.0 and summary["complete"] and summary["failed"] == 0
    assert summary["problems"] == 8 and summary["samples"] == 24
    assert set(summary["subsets"]["game"]) == {"oTTT", "dTTT", "cTTT", "sTTT"}
    assert all(s["pass@1"] == 1.0 and s["problems"] == 2 for s in summary["subsets"]["game"].values())
    assert "verdict" in summary["subsets"]
    assert summary["response_length"]["unit"] == "tokens"  # the server reports usage
    rows = read_rows(tmp_path)
    assert len(rows) == 24 and all(set(r) == ROW_FIELDS for r in rows)
    assert all(r["reward"] == 1.0 and r["extracted"] in "ABCDEFGHIJKLMNOPQRSTUVWXY" for r in rows)
    assert len(server.requests) == 24  # each sample asked once
    assert len({(b["messages"][-1]["content"], b["seed"]) for b in server.requests}) == 24  # a seed per sample
    assert all(b["temperature"] == 0.7 and b["model"] == "fake" for b in server.requests)
    assert json.loads((tmp_path / "summary.json").read_text())["pass@1"] == 1.0
    assert "| oTTT |" in (tmp_path / "summary.md").read_text()
    assert elapsed < 10


def test_garbage_scores_zero_and_never_parses(tmp_path):
    server = FakeServer(lambda body, attempt: "lorem ipsum dolor sit amet", usage=False)
    try:
        summary = run_eval("ttt:oTTT", model="fake", base_url=server.url, out=tmp_path, n=2, limit=5, chat=False,
                           **FAST)
    finally:
        server.stop()
    assert summary["pass@1"] == 0.0 and summary["pass@2"] == 0.0
    assert summary["parse_failure_rate"] == 1.0
    assert summary["response_length"] == {"mean": len("lorem ipsum dolor sit amet"), "unit": "chars"}
    assert all("prompt" in b and "messages" not in b for b in server.requests)  # chat=False: /completions
    assert all(r["extracted"] is None and r["tokens"] is None for r in read_rows(tmp_path))


def test_500s_and_timeouts_are_retried(solutions, tmp_path):
    right = oracle(solutions)
    server = FakeServer(lambda body, attempt: (500, "overloaded") if attempt < 2 else right(body, attempt))
    try:
        summary = run_eval("ttt:all", model="fake", base_url=server.url, out=tmp_path / "a", n=2, limit=8, **FAST)
    finally:
        server.stop()
    assert summary["pass@1"] == 1.0 and summary["complete"]
    assert len(server.requests) == 3 * 16 and len(server.served) == 16

    # the first try of every sample outlives the request timeout; the second answers at once
    slow = FakeServer(right, delay=lambda body, attempt: 2.0 if attempt == 0 else 0.0)
    try:
        summary = run_eval("ttt:all", model="fake", base_url=slow.url, out=tmp_path / "b", n=1, limit=8,
                           progress=False, backoff=0.01, request_timeout=0.5)
    finally:
        slow.stop()
    assert summary["pass@1"] == 1.0 and len(slow.requests) == 16


def test_4xx_is_not_retried_and_leaves_the_run_incomplete(solutions, tmp_path):
    right = oracle(solutions)
    bad = sorted(solutions)[0]
    server = FakeServer(lambda body, attempt: (400, "prompt too long") if problem_text(body) == bad
                        else right(body, attempt))
    try:
        with pytest.raises(IncompleteEval, match="2 of 16 samples failed.*prompt too long") as info:
            run_eval("ttt:all", model="fake", base_url=server.url, out=tmp_path, n=2, limit=8, **FAST)
        asked_bad = [b for b in server.requests if problem_text(b) == bad]
        assert len(asked_bad) == 2  # once per sample: a 400 is never retried
        summary = info.value.summary
        assert not summary["complete"] and summary["failed"] == 2 and summary["problems"] == 8
        assert summary["pass@1"] == 1.0 and summary["samples"] == 14  # the 7 answered problems
        assert json.loads((tmp_path / "summary.json").read_text())["failed"] == 2
        before = len(server.requests)
        with pytest.raises(IncompleteEval):
            run_eval("ttt:all", model="fake", base_url=server.url, out=tmp_path, n=2, limit=8, **FAST)
        assert len(server.requests) - before == 2  # the rerun asks for the two failed samples only
    finally:
        server.stop()


def test_a_run_of_prompts_the_server_refuses_is_no_dead_endpoint(tmp_path):
    """20 prompts in a row too long for the context (HTTP 400) tripped the dead-endpoint check: the run
    stopped with EndpointError, and so did every rerun, on the same prompts."""
    rows = [{"problem": ("long " * 50 if 2 <= i < 22 else "") + f"What is {i}+0?", "answer": str(i)} for i in range(26)]
    data = tmp_path / "b.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def reply(body, attempt):
        text = problem_text(body)
        return (400, "maximum context length is 64 tokens") if text.startswith("long") else \
            "\\boxed{%s}" % text.split("is ")[1].split("+")[0]

    server = FakeServer(reply)
    try:
        for _ in range(2):  # the rerun asks for the refused samples only: all refused, but others were answered
            with pytest.raises(IncompleteEval, match="refused them") as info:
                run_eval(f"math:{data}", model="fake", base_url=server.url, out=tmp_path / "run", concurrency=4,
                         **FAST)
            assert info.value.summary["failed"] == 20 and info.value.summary["samples"] == 6
    finally:
        server.stop()
    assert all(f.rejected for _, f in info.value.failures) and len(read_rows(tmp_path / "run")) == 6


def test_dead_port_is_one_clear_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    t0 = time.monotonic()
    with pytest.raises(EndpointError) as info:
        run_eval("ttt:oTTT", model="fake", base_url=url, out=tmp_path, n=4, limit=20, **FAST)
    assert time.monotonic() - t0 < 5
    message = str(info.value)
    assert f"cannot reach the endpoint {url}" in message and "connection refused" in message
    assert "\n" not in message and not (tmp_path / "samples.jsonl").read_text()


def test_endpoint_failing_every_request_stops_with_one_error(tmp_path):
    server = FakeServer(lambda body, attempt: (503, "no healthy upstream"))
    try:
        with pytest.raises(EndpointError) as info:
            run_eval("ttt:oTTT", model="fake", base_url=server.url, out=tmp_path, n=4, limit=20, concurrency=4,
                     retries=2, **FAST)
        message = str(info.value)
        assert f"the endpoint {server.url} failed the last 8 requests in a row" in message
        assert "HTTP 503: no healthy upstream" in message and "\n" not in message
        assert len(server.requests) <= (8 + 4) * 3  # stopped after 8 failed samples (+ those in flight), not 80
    finally:
        server.stop()


def test_wrong_model_and_api_keys(solutions, tmp_path, monkeypatch):
    server = FakeServer(oracle(solutions), model="served-model", api_key="sekrit")
    try:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        with pytest.raises(EndpointError, match="refused the API key"):
            run_eval("ttt:oTTT", model="served-model", base_url=server.url, out=tmp_path / "a", limit=2, **FAST)
        with pytest.raises(ValueError, match="MY_KEY is not set"):
            run_eval("ttt:oTTT", model="served-model", base_url=server.url, out=tmp_path / "b", limit=2,
                     api_key_env="MY_KEY", **FAST)
        monkeypatch.setenv("MY_KEY", "sekrit")
        with pytest.raises(ValueError, match="does not serve model 'other'.*served-model"):
            run_eval("ttt:oTTT", model="other", base_url=server.url, out=tmp_path / "c", limit=2, api_key_env="MY_KEY",
                     **FAST)
        summary = run_eval("ttt:oTTT", model="served-model", base_url=server.url, out=tmp_path / "d", limit=2,
                           api_key_env="MY_KEY", **FAST)
        assert summary["pass@1"] == 1.0
    finally:
        server.stop()


def test_progress_line_on_stderr_and_off(solutions, tmp_path, capsys):
    server = FakeServer(oracle(solutions))
    try:
        run_eval("ttt:all", model="fake", base_url=server.url, out=tmp_path / "a", n=2, limit=8, backoff=0.01)
        err = capsys.readouterr().err
        assert err.endswith("\n") and "\r" not in err  # (not a terminal: whole lines)
        final = err.splitlines()[-1]
        assert final.startswith("eval: 16/16 samples done (") and "/s" in final and "pass@1 1.000" in final
        run_eval("ttt:all", model="fake", base_url=server.url, out=tmp_path / "b", n=2, limit=8, **FAST)
        assert capsys.readouterr().err == ""
    finally:
        server.stop()


def test_chat_template_variables_are_sent_and_bind_the_run(solutions, tmp_path):
    """`--chat-template-kwargs enable_thinking=false` (Qwen3's non-thinking mode) had no way to reach the endpoint."""
    server = FakeServer(oracle(solutions))
    try:
        run_eval("ttt:all", model="fake", base_url=server.url, out=tmp_path, n=1, limit=2,
                 chat_template_kwargs={"enable_thinking": False}, **FAST)
    finally:
        server.stop()
    assert [b["chat_template_kwargs"] for b in server.requests] == [{"enable_thinking": False}] * 2
    with pytest.raises(ValueError, match="chat_template_kwargs: --no-chat prompts"):
        run_eval("ttt:all", model="fake", base_url=server.url, out=tmp_path / "plain", chat=False,
                 chat_template_kwargs={"enable_thinking": False}, **FAST)


def test_reasoning_a_server_split_off_is_put_back_before_the_answer(tmp_path):
    """Behind a server with a reasoning parser (vLLM's --reasoning-parser), the reasoning came back in
    reasoning_content and was dropped: a benchmark scoring after </think> scored every sample 0."""
    rows = [{"id": "q1", "question": "2 + 2?", "answer": "4"}]
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = FakeServer(lambda body, attempt: {"reasoning_content": "add them", "content": "\\boxed{4}"})
    try:
        summary = run_eval(f"jsonl:{data}?prompt=question&think=</think>", model="fake", base_url=server.url,
                           out=tmp_path / "run", n=1, **FAST)
    finally:
        server.stop()
    assert summary["pass@1"] == 1.0
    assert read_rows(tmp_path / "run")[0]["response"] == "<think>add them</think>\\boxed{4}"


def test_reasoning_beside_a_null_reasoning_content_is_kept(tmp_path):
    """A proxy that sends both fields, "reasoning_content": null beside "reasoning", lost the reasoning."""
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    message = {"content": "\\boxed{2}", "reasoning_content": None, "reasoning": "one plus one is two"}
    server = FakeServer(lambda body, attempt: message)
    try:
        run_eval(f"math:{data}", model="fake", base_url=server.url, out=tmp_path / "run", **FAST)
    finally:
        server.stop()
    assert read_rows(tmp_path / "run")[0]["response"] == "<think>one plus one is two</think>\\boxed{2}"


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), "1"])
def test_threshold_must_be_a_finite_number(threshold, tmp_path):
    """--threshold nan was taken: no reward is >= nan, so a perfect model scored pass@1 0."""
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        EvalConfig("sums:", "fake", tmp_path, base_url="http://127.0.0.1:9/v1", threshold=threshold)
