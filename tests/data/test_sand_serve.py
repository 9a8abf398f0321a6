"""End to end over HTTP against `reasonrl serve` with a model trained here (the demo policy, 0.8M
parameters, trained on `sums` traces): the whole pipeline runs, the server's real, messy output
is mostly rejected, and the accounting says why, call for call."""

import re

import httpx
import pytest
from sand_helpers import SUMS_TOPICS, report, run, write_jsonl
from tests_policy import DEMO_POLICY

from reasonrl.data.sand.mini.endpoint import TeacherServer
from reasonrl.engine import LLMEngine
from reasonrl.engine.server import ServeConfig, create_app


@pytest.fixture(scope="module")
def served():
    engine = LLMEngine.from_pretrained(DEMO_POLICY, device="cpu", kv_cache_memory=32 << 20, block_size=16,
                                       max_model_len=2048, max_num_seqs=8)
    server = TeacherServer(create_app(engine, ServeConfig(served_model_name="demo", seed=0)))
    yield server
    server.stop()


def chat_requests(url: str) -> dict[str, float]:
    """Status -> count of /v1/chat/completions responses, from the server's own /metrics."""
    text = httpx.get(url.removesuffix("/v1") + "/metrics").text
    pattern = r'reasonrl_http_requests_total\{route="/v1/chat/completions",status="(\d+)"\} ([\d.e+]+)'
    return {status: float(n) for status, n in re.findall(pattern, text)}


def test_the_whole_pipeline_against_reasonrl_serve(served, tmp_path):
    seeds = [{"id": i, "problem": "Add: " + " + ".join(map(str, terms)), "answer": sum(terms)}
             for i, terms in enumerate([[2, 3], [4, 1], [5, 2], [3, 3], [1, 6, 2], [7, 1]])]
    data = {
        "run": {"progress": False},
        "defaults": {"base_url": served.url, "model": "demo", "max_tokens": 40, "concurrency": 4, "temperature": 1.0},
        "generate": {"problems": 6, "seed_problems": write_jsonl(tmp_path / "seeds.jsonl", seeds)},
        "solve": {"system_prompt": None},  # the demo policy was trained on bare "Add: ..." prompts
        "consistency": {"max_tokens": 16},
        "decontaminate": {"eval_sets": [write_jsonl(tmp_path / "evals.jsonl", [{"problem": seeds[5]["problem"]}])]},
        "rate": {"ratings": 2, "max_tokens": 24},
        "measure": {"model": "demo", "base_url": served.url, "k": 2, "max_tokens": 40, "system_prompt": None},
        "hike": {"topics": str(SUMS_TOPICS)},
        "export": {"min_solution_words": 1},
    }
    out = tmp_path / "run"
    summary = run(data, out)
    stages = report(out)["by_stage"]
    for stage in stages.values():  # every problem in is kept or dropped with a reason
        assert stage["kept"] + sum(stage["drops"].values()) == stage["inputs"]
    generate = stages["base.generate"]
    assert generate["inputs"] == 6 and generate["kept"] <= 1  # it was never taught <Q> tags
    assert set(generate["drops"]) <= {"no <Q> tag", "truncated (max_tokens reached)", "empty output",
                                      "unclosed reasoning block", "no <S> tag", "empty <Q>"}
    assert stages["base.decontaminate"]["drops"].get("n-gram overlap with an evaluation problem") == 1
    assert stages["base.consistency"]["kept"] >= 1  # it can add small numbers: the verifier accepts those
    rate = stages["base.rate"]
    assert rate["inputs"] >= 1 and set(rate["drops"]) <= {"no readable rating"}
    # the accounting agrees with the server's own count of what it answered
    statuses = chat_requests(served.url)
    assert statuses.get("200", 0) == summary["spent"]["calls"] + summary["spent"]["policy_samples"]
    assert statuses.get("400", 0) == summary["spent"]["rejected"]
    assert summary["spent"]["prompt_tokens"] > 0 and summary["spent"]["calls_without_usage"] == 0
    text = (out / "report.md").read_text()
    assert "no <Q> tag" in text or "truncated" in text


def test_stages_on_different_endpoints_the_policy_solving_and_measured_over_http(served, tmp_path):
    from sand_double import CLEAN, ScriptedServer

    teacher = ScriptedServer(teacher=CLEAN)  # generates, judges, rates and hikes
    policy = {"base_url": served.url, "model": "demo", "system_prompt": None, "max_tokens": 48}
    before = chat_requests(served.url).get("200", 0)
    try:
        data = {"run": {"progress": False},
                "defaults": {"base_url": teacher.url, "model": "double", "max_tokens": 256},
                "generate": {"problems": 8, "branches": ["small digits", "mixed digits"],
                             "instructions": "Write an addition problem. Its main subject is {branch}. <Q></Q><S></S>"},
                "solve": {**policy, "temperature": 0.0, "n": 1},
                "decontaminate": {"eval_sets": [write_jsonl(tmp_path / "e.jsonl", [{"problem": "Add: 9 + 9"}])]},
                "measure": {**policy, "k": 2, "temperature": 1.0},
                "hike": {"topics": str(SUMS_TOPICS)}, "export": {"min_solution_words": 1}}
        summary = run(data, tmp_path / "run")
        teacher_calls = teacher.total_answered
    finally:
        teacher.stop()
    stages = report(tmp_path / "run")["by_stage"]
    policy_answers = chat_requests(served.url).get("200", 0) - before
    solve_calls = stages["base.solve"]["calls"] + stages["hiked.solve"]["calls"]
    assert policy_answers == solve_calls + summary["spent"]["policy_samples"]
    assert teacher_calls == summary["spent"]["calls"] - solve_calls
    assert summary["spent"]["policy_samples"] == 2 * (stages["base.measure"]["inputs"] + stages["hiked.measure"]["inputs"])
    assert summary["accepted"]["base"] >= 1  # the policy's greedy solutions of short sums agree with the teacher's
    if summary["accepted"]["hiked"]:  # long sums: the policy often guesses, so they may all be dropped
        assert summary["difficulty"]["hiked"]["empirical_difficulty_mean"] is not None
