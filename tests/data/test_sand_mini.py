"""The miniature's pieces: the sums teacher (a program playing the LLM), its endpoint, the splits, the experiment's bookkeeping."""

import json
from collections import Counter

import httpx
import pytest
from sand_helpers import REPO

from reasonrl.cli import main
from reasonrl.data.sand import parse, prompts
from reasonrl.data.sand.mini.endpoint import TeacherServer, create_teacher_app
from reasonrl.data.sand.mini.experiment import equal_sets, targets
from reasonrl.data.sand.mini.splits import split
from reasonrl.data.sand.mini.teacher import SumsTeacher, terms_of

TEMPLATE = "Write an addition problem. Its main subject is {branch}; mix in {mix}. <Q></Q> <S></S>"


def test_teacher_writes_problems_in_the_stage_format_with_faults_at_their_rates():
    teacher, outcomes, terms, small = SumsTeacher(), Counter(), Counter(), 0
    prompt = prompts.generate(TEMPLATE, "small digits", "large digits")[0]["content"]
    for seed in range(2000):
        reply = teacher.respond(prompt, seed)
        parsed, why = parse.problem_and_solution(reply.text, reply.finish_reason)
        outcomes[why] += 1
        if parsed:
            t = terms_of(parsed[0])
            terms[len(t)] += 1
            small += max(t) <= 5
    assert 0.8 < outcomes[None] / 2000 < 0.95  # most are readable; the rest fail for the reasons real teachers do
    assert {"truncated (max_tokens reached)", "no <Q> tag", "unclosed reasoning block"} <= set(outcomes)
    assert set(terms) == {3, 4, 5, 6}
    assert small / outcomes[None] > 0.9  # "small digits" (but for the problems every teacher repeats)


def test_teacher_solves_judges_rates_hikes_and_embeds():
    teacher = SumsTeacher()
    answers = [parse.after_reasoning(teacher.respond("Add: 4 + 7 + 2", s).text)[0] for s in range(300)]
    assert sum("\\boxed{13}" in a for a in answers) > 250  # mostly right, sometimes slips or is cut off
    judge = prompts.same_answer("Add: 4 + 7", "4+7=11 \\boxed{11}", "4+7=11 so the total is 11.")[0]["content"]
    assert parse.yes_no(teacher.respond(judge, 0).text, "stop") == (True, None)
    short, long = (prompts.rate(f"Add: {' + '.join(['3'] * n)}", "x")[0]["content"] for n in (3, 9))
    ratings = [[parse.score(teacher.respond(p, s).text, "stop")[0] for s in range(50)] for p in (short, long)]
    assert 1 <= min(r for r in ratings[0] if r) and max(r for r in ratings[0] if r) < min(r for r in ratings[1] if r)
    hiked = teacher.respond(prompts.hike("Add: 4 + 7 + 2", "", "a chain of 8 terms", "running totals", 2.0)[0]["content"], 3)
    problem, solution = parse.problem_and_solution(hiked.text, hiked.finish_reason)[0]
    assert len(terms_of(problem)) == 8 and not Counter([4, 7, 2]) - Counter(terms_of(problem))
    assert teacher.embed("Add: 1 + 2 + 3") == teacher.embed("Add: 3 + 1 + 2") != teacher.embed("Add: 1 + 2 + 4")


def test_teacher_endpoint_speaks_the_openai_api():
    server = TeacherServer(create_teacher_app(SumsTeacher()))
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert c.get("/models").json()["data"][0]["id"] == "sums-teacher"
            r = c.post("/chat/completions", json={"model": "sums-teacher", "seed": 1,
                                                  "messages": [{"role": "user", "content": "Add: 1 + 2"}]}).json()
            assert r["choices"][0]["message"]["content"].endswith("\\boxed{3}") and r["usage"]["completion_tokens"] > 0
            assert len(c.post("/embeddings", json={"input": "Add: 1 + 2"}).json()["data"][0]["embedding"]) == 15
            assert c.post("/embeddings", json={"input": ["a", "b"]}).status_code == 400
    finally:
        server.stop()


def test_splits_are_disjoint_and_their_difficulty_is_what_they_say():
    base, hard = split("base", 300), split("hard", 300)
    assert {r["problem"] for r in base}.isdisjoint(r["problem"] for r in hard)
    assert {r["terms"] for r in base} == {2, 3, 4, 5, 6} and {r["terms"] for r in hard} == {7, 8, 9, 10}
    assert all(sum(terms_of(r["problem"])) == int(r["answer"]) for r in base + hard)
    assert split("base", 300) == base


def test_equal_sets_and_targets(tmp_path):
    (tmp_path / "pipeline").mkdir()
    for arm, n in (("base", 7), ("hiked", 5)):
        (tmp_path / "pipeline" / f"sft_{arm}.jsonl").write_text("".join(json.dumps({"i": i}) + "\n" for i in range(n)))
    sets = equal_sets(tmp_path, 100)
    assert [len(p.read_text().splitlines()) for p in sets.values()] == [5, 5]
    summary = {"difficulty": {"base": {"empirical_difficulty_mean": 0.3}, "hiked": {"empirical_difficulty_mean": 0.8}},
               "means": {"base": {"base": 0.90, "hard": 0.30}, "hiked": {"base": 0.885, "hard": 0.50}}}
    assert all(targets(summary).values())
    summary["means"]["hiked"]["base"] = 0.875  # 2.5 points lost on the base split
    assert not targets(summary)["hiked set: base split within 2 points"]


@pytest.mark.slow
def test_the_miniature_runs_end_to_end_from_its_bench_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the shipped recipe names its topic file relative to the repository
    out = tmp_path / "mini"
    assert main(["bench", "sand-mini", "--out", str(out), "--candidates", "24", "--set-size", "8", "--eval-size",
                 "8", "--seeds", "1", "--epochs", "1", "--json", str(tmp_path / "mini.json")]) == 0
    summary = json.loads((tmp_path / "mini.json").read_text())
    assert summary["set_size"] == 8 and set(summary["accuracy"]) == {"start", "base-0", "hiked-0"}
    assert all(0 <= acc[split] <= 1 for acc in summary["accuracy"].values() for split in ("base", "hard"))
    terms = {arm: [len(terms_of(json.loads(line)["prompt"][-1]["content"]))
                   for line in (out / f"train_{arm}.jsonl").read_text().splitlines()] for arm in ("base", "hiked")}
    assert max(terms["base"]) <= 6 and min(terms["hiked"]) >= 7  # the hiked arm is the rewritten, longer chains
    assert summary["difficulty"]["hiked"]["rating_mean"] > summary["difficulty"]["base"]["rating_mean"]
    assert (out / "summary.md").read_text() in capsys.readouterr().out
