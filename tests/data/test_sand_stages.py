"""The SAND stages over HTTP against scripted test doubles: what is kept, what is dropped and why,
which calls are made (and which are not), and what the accounting says."""

import json
from collections import Counter

import pytest
from sand_double import CLEAN, ScriptedServer
from sand_helpers import ledger, report, run, slot_of, sums_recipe, write_jsonl

from reasonrl.data.sand import StageIncomplete
from reasonrl.data.sand.mini.teacher import Reply, SumsTeacher
from reasonrl.eval import EndpointError

TEACHER = SumsTeacher()


def reasons(out, stage):
    return {i: (r["reason"], r["detail"]) for i, r in ledger(out, stage).items() if not r["kept"]}


def test_generate_keeps_readable_problems_and_says_why_it_drops_the_rest(tmp_path):
    answers = {
        "g000000": "<think>Maybe <Q>Add: 1</Q>?</think>\n<Q>Add: 2 + 3 + 4</Q>\n<S>2+3=5 5+4=9 \\boxed{9}</S>",
        "g000001": Reply("<think>ok</think><Q>Add: 2 + 3", "length"),
        "g000002": "Add: 4 + 4 + 4. Solution: \\boxed{12}",
        "g000003": "<think>Let me think <Q>Add: 1 + 2</Q><S>\\boxed{3}</S>",
        "g000004": (400, "the prompt (9000 characters) cannot fit the context length 4096"),
        "g000005": "<Q> </Q><S>\\boxed{1}</S>",
        "g000006": "<Q>Add: " + " + ".join(["5"] * 400) + "</Q><S>\\boxed{2000}</S>",
        "g000007": "<Q>Add: 7 + 8 + 9</Q><S>7+8=15 15+9=24 \\boxed{24}</S>",
    }

    def script(prompt, seed, body):
        if prompt.startswith("Write an addition problem"):
            return answers[slot_of(seed, "base.generate", list(answers))]
        return TEACHER.respond(prompt, seed)

    server = ScriptedServer(script)
    try:
        out = tmp_path / "run"
        run(sums_recipe(tmp_path, server.url, generate={"problems": 8, "max_problem_chars": 500},
                        hike={"enabled": False}), out)
    finally:
        server.stop()
    drops = reasons(out, "base.generate")
    assert {i: r for i, (r, _) in drops.items()} == {
        "g000001": "truncated (max_tokens reached)", "g000002": "no <Q> tag", "g000003": "unclosed reasoning block",
        "g000004": "request rejected by the server", "g000005": "empty <Q>", "g000006": "problem too long"}
    assert "cannot fit the context length" in drops["g000004"][1]
    kept = ledger(out, "base.generate")
    assert kept["g000000"]["problem"]["problem"] == "Add: 2 + 3 + 4"  # the tag inside the reasoning is not read
    assert kept["g000000"]["problem"]["solution"] == "2+3=5 5+4=9 \\boxed{9}"
    stage = report(out)["by_stage"]["base.generate"]
    assert (stage["inputs"], stage["kept"], stage["calls"], stage["rejected"]) == (8, 2, 7, 1)
    assert sum(stage["drops"].values()) == 6


def consistency_seeds(tmp_path):
    seeds = [("a", "Add: 1 + 2", 3), ("b", "Add: 2 + 2", 4), ("c", "Add: 3 + 3", 6), ("d", "Add: 4 + 4", 8),
             ("e", "What is half of one?", "\\frac{1}{2}"), ("f", "Add: 5 + 5", 10), ("g", "Add: 6 + 6", 12)]
    path = write_jsonl(tmp_path / "seeds.jsonl", [{"id": i, "problem": p, "answer": a} for i, p, a in seeds])
    solutions = {  # (problem id, solution index) -> the solver's answer
        ("s-a", 0): "1+2=3 \\boxed{3}", ("s-a", 1): "\\boxed{3}",
        ("s-b", 0): "2+2=5 \\boxed{5}", ("s-b", 1): "2+2=4 so the total is 4.",
        ("s-c", 0): "\\boxed{6}", ("s-c", 1): "3+3=6 so the total is 6.",
        ("s-d", 0): Reply("4+4=", "length"), ("s-d", 1): "\\boxed{8}",
        ("s-e", 0): "Half of one is \\boxed{0.5}", ("s-e", 1): "The answer is $\\frac12$",
        ("s-f", 0): "\\boxed{10}", ("s-f", 1): "5+5=11 so the total is 11.",
        ("s-g", 0): "<think>6+6 is", ("s-g", 1): "\\boxed{12}",
    }
    return path, solutions


def test_consistency_asks_the_verifier_first_and_the_judge_only_where_it_cannot_decide(tmp_path):
    path, solutions = consistency_seeds(tmp_path)
    keys = [f"{i}/{j}" for i, j in solutions]

    def script(prompt, seed, body):
        if "End of the first solution" in prompt or "<D>" in prompt:
            return TEACHER.respond(prompt, seed)
        problem_id, j = slot_of(seed, "base.solve", keys).split("/")
        return solutions[(problem_id, int(j))]

    server = ScriptedServer(script)
    try:
        out = tmp_path / "run"
        run(sums_recipe(tmp_path, server.url, generate={"problems": 0, "seed_problems": path},
                        hike={"enabled": False}), out)
        judged = [p for p, _ in server.answered if "End of the first solution" in p]
    finally:
        server.stop()
    assert {i for i, r in ledger(out, "base.consistency").items() if r["kept"]} == {"s-a", "s-c", "s-e"}
    assert {i: r for i, (r, _) in reasons(out, "base.consistency").items()} == {
        "s-b": "answers differ (verifier)", "s-d": "solution truncated (max_tokens reached)",
        "s-f": "answers differ (judge)", "s-g": "solution never left its reasoning block"}
    # the judge saw only the two unboxed solutions of problems that could still pass (c, f), not b's
    assert len(judged) == 2 and all("so the total is" in p for p in judged)
    assert report(out)["by_stage"]["base.consistency"]["calls"] == 2
    verdicts = [json.loads(line) for line in (out / "verdicts" / "base.consistency.jsonl").read_text().splitlines()]
    assert Counter(v["status"] for v in verdicts) == Counter(
        {"agree": 8, "undecided": 3, "differ": 1, "truncated": 1, "unfinished": 1})
    assert ledger(out, "base.consistency")["s-e"]["problem"]["answer"] == "\\frac{1}{2}"


def test_ratings_are_averaged_and_snapped_unreadable_ones_left_out(tmp_path):
    path = write_jsonl(tmp_path / "seeds.jsonl", [{"id": i, "problem": f"Add: {i} + 1", "answer": i + 1}
                                                  for i in range(1, 5)])
    ratings = {"s-1": ["<D>4</D>", "<D>5</D>", "<D>5</D>"], "s-2": ["<D>easy</D>", "<D>6</D>", "<D>7</D>"],
               "s-3": ["no idea", "<D>12</D>", Reply("<D>3", "length")], "s-4": ["<D>2</D>", "<D>2.5</D>", "<D>9</D>"]}
    keys = [f"{i}/{k}" for i in ratings for k in range(3)]

    def script(prompt, seed, body):
        if "<D>" in prompt:
            problem_id, k = slot_of(seed, "base.rate", keys).split("/")
            return ratings[problem_id][int(k)]
        return TEACHER.respond(prompt, seed)

    server = ScriptedServer(script)
    try:
        out = tmp_path / "run"
        run(sums_recipe(tmp_path, server.url, generate={"problems": 0, "seed_problems": path},
                        rate={"max_rating": 6.0}, hike={"enabled": False}), out)
    finally:
        server.stop()
    rows = ledger(out, "base.rate")
    assert rows["s-1"]["problem"]["rating"] == 4.5 and rows["s-1"]["problem"]["ratings"] == [4.0, 5.0, 5.0]
    assert rows["s-2"]["reason"] == "rated above max_rating" and rows["s-2"]["problem"]["ratings"] == [6.0, 7.0]
    assert rows["s-3"]["reason"] == "no readable rating"
    assert rows["s-3"]["detail"] == "no <D> tag; <D> out of [1, 10]; truncated (max_tokens reached)"
    assert rows["s-4"]["kept"] and rows["s-4"]["problem"]["rating"] == 4.5  # (2 + 2.5 + 9) / 3 = 4.5


def test_transient_errors_are_retried_and_each_call_is_paid_once(tmp_path):
    attempts = Counter()

    def script(prompt, seed, body):
        attempts[(prompt, seed)] += 1
        if attempts[(prompt, seed)] == 1:
            return (503, "overloaded") if seed % 2 else (429, "slow down")
        return TEACHER.respond(prompt, seed)

    server = ScriptedServer(script)
    try:
        out = tmp_path / "run"
        summary = run(sums_recipe(tmp_path, server.url, generate={"problems": 6}), out)
    finally:
        server.stop()
    assert server.statuses[503] + server.statuses[429] == server.statuses[200] > 20
    assert set(server.answered.values()) == {1}
    assert summary["spent"]["calls"] == len(server.answered)  # the accounting counts answered calls, not attempts
    assert summary["spent"]["rejected"] == 0


@pytest.mark.slow  # stalls and timeouts take seconds by design
def test_at_most_concurrency_requests_in_flight_and_a_stalled_call_times_out_and_is_asked_again(tmp_path):
    stalled = set()

    def stall(prompt, seed, attempt):  # every answer takes a moment (requests overlap); 1 in 7 stalls once
        if attempt == 1 and seed % 7 == 0:
            stalled.add((prompt, seed))
            return 4.0
        return 0.05

    server = ScriptedServer(stall=stall)
    try:
        recipe = sums_recipe(tmp_path, server.url, generate={"problems": 8})
        recipe["defaults"].update(concurrency=3, timeout=1.0, backoff=1.0)  # time for the server to see a client go
        summary = run(recipe, tmp_path / "run")
    finally:
        server.stop()
    assert server.max_in_flight == 3  # the bound is reached and never passed
    assert len(stalled) >= 3 and all(server.attempts[k] >= 2 for k in stalled)
    assert all(server.answered[k] == 1 for k in stalled)  # the timed-out attempt went unanswered, the retry paid
    assert set(server.answered.values()) == {1} and summary["spent"]["calls"] == len(server.answered)
    assert summary["accepted"]["all"] > 0


def test_a_server_that_answers_nonsense_drops_everything_and_says_why(tmp_path):
    path, _ = consistency_seeds(tmp_path)
    server = ScriptedServer(lambda prompt, seed, body: "I am a potato. \\boxed{potato}" if seed % 3 else "")
    try:
        out = tmp_path / "run"
        summary = run(sums_recipe(tmp_path, server.url, generate={"problems": 6, "seed_problems": path}), out)
    finally:
        server.stop()
    assert summary["accepted"] == {"all": 0, "base": 0, "hiked": 0}
    stages = report(out)["by_stage"]
    assert set(stages["base.generate"]["drops"]) <= {"no <Q> tag", "empty output"}
    assert stages["base.generate"]["kept"] == 0 and sum(stages["base.generate"]["drops"].values()) == 6
    assert sum(stages["base.consistency"]["drops"].values()) == stages["base.consistency"]["inputs"] == 7
    for stage in stages.values():  # every problem in is kept or dropped with a reason
        assert stage["kept"] + sum(stage["drops"].values()) == stage["inputs"]
    assert (out / "report.md").read_text().count("answers differ") >= 1


def test_decontamination_by_ngrams_then_embeddings_and_a_judge(tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"id": i, "problem": p, "answer": a} for i, p, a in [
        ("perm", "Add: 1 + 2 + 3", 6), ("copy", "Add: 4 + 5", 9), ("new", "Add: 7 + 7 + 7", 21)]])
    evals = write_jsonl(tmp_path / "aime.jsonl", [{"question": "Add: 3 + 2 + 1"}, {"problem": "add: 4 + 5"},
                                                  {"problem": "Add: 7 + 7 + 6"}])
    server = ScriptedServer(teacher=CLEAN)
    try:
        out = tmp_path / "run"
        data = sums_recipe(tmp_path, server.url, generate={"problems": 0, "seed_problems": seeds},
                           decontaminate={"eval_sets": [evals], "embed_base_url": server.url, "embed_model": "double",
                                          "top_k": 2, "min_similarity": 0.5})
        run(data, out)
        embedded = [k for k in server.answered if k[0].startswith("embed:")]
    finally:
        server.stop()
    drops = reasons(out, "base.decontaminate")
    assert drops["s-copy"] == ("n-gram overlap with an evaluation problem", "aime.jsonl:2")
    assert drops["s-perm"][0] == "paraphrase of an evaluation problem (judge)" and "aime.jsonl:1" in drops["s-perm"][1]
    assert ledger(out, "base.decontaminate")["s-new"]["kept"]
    # three evaluation problems embedded once (shared with the hiked pass), the candidates past the n-gram pass once each
    assert sorted(p for p, _ in embedded if "Add: 3 + 2 + 1" in p or "7 + 7 + 6" in p or "add: 4 + 5" in p) == \
        sorted(["embed:Add: 3 + 2 + 1", "embed:add: 4 + 5", "embed:Add: 7 + 7 + 6"])
    assert set(server.answered[k] for k in embedded) == {1}
    stages = report(out)["by_stage"]
    assert stages["eval-sets.embed"]["embedding_calls"] == 3
    assert stages["base.decontaminate"]["embedding_calls"] == 2 and stages["base.decontaminate"]["calls"] >= 2


def test_hiking_draws_the_theorem_from_the_branch_and_skips_problems_outside_the_window(tmp_path):
    topics = tmp_path / "topics.yaml"
    topics.write_text("small digits:\n  chains:\n    theorems: [a chain of 8 terms]\n    tools_concepts: [carries]\n"
                      "large digits:\n  chains:\n    theorems: [a chain of 9 terms]\n    tools_concepts: [carries]\n")
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [
        {"id": "s", "problem": "Add: 1 + 2 + 3", "answer": 6, "branch": "Small Digits"},
        {"id": "l", "problem": "Add: 6 + 7 + 8", "answer": 21, "branch": "large digits"},
        {"id": "hard", "problem": "Add: 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9", "answer": 45, "branch": "small digits"}])
    server = ScriptedServer(teacher=CLEAN)
    try:
        out = tmp_path / "run"
        summary = run(sums_recipe(tmp_path, server.url, generate={"problems": 0, "seed_problems": seeds},
                                  hike={"topics": str(topics), "max_rating": 5.0}), out)
    finally:
        server.stop()
    hike = ledger(out, "hiked.hike")
    assert hike["s-hard"]["reason"] == "not hiked: rating outside the window"
    assert hike["s-s"]["problem"]["theorem"] == "a chain of 8 terms" and hike["s-s"]["problem"]["id"] == "s-s.h"
    assert hike["s-l"]["problem"]["theorem"] == "a chain of 9 terms"
    problems = {json.loads(line)["id"]: json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()}
    hiked = [p for p in problems.values() if p["origin"] == "hiked"]
    assert hiked and all(p["hiked_from"] in problems and p["rating"] > problems[p["hiked_from"]]["rating"]
                         for p in hiked)
    assert summary["difficulty"]["hiked"]["rating_mean"] > summary["difficulty"]["hiked_sources"]["rating_mean"]
    sft = [json.loads(line) for line in (out / "sft_hiked.jsonl").read_text().splitlines()]
    assert len(sft) == summary["accepted"]["hiked"] and sft[0]["prompt"] == [{"role": "user", "content": sft[0]["prompt"][0]["content"]}]


def test_export_drops_short_solutions(tmp_path):
    server = ScriptedServer()
    try:
        out = tmp_path / "run"
        summary = run(sums_recipe(tmp_path, server.url, generate={"problems": 10}, hike={"enabled": False},
                                  export={"min_solution_words": 4}), out)
    finally:
        server.stop()
    export = report(out)["by_stage"]["export"]
    assert export["drops"] == {"solution shorter than min_solution_words": export["inputs"] - export["kept"]}
    for row in map(json.loads, (out / "sft.jsonl").read_text().splitlines()):
        assert len(row["response"].split()) >= 4
    assert summary["accepted"]["all"] == export["kept"]
    # the difficulty section describes the exported problems, not the export stage's inputs
    assert 0 < export["kept"] < export["inputs"]
    exported = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    base = summary["difficulty"]["base"]
    assert base["problems"] == summary["accepted"]["base"] == len(exported)
    assert base["rating_mean"] == pytest.approx(sum(p["rating"] for p in exported) / len(exported))


def test_empirical_difficulty_is_one_minus_the_reference_policy_pass_rate(tmp_path):
    from tests_policy import DEMO_POLICY

    seeds = write_jsonl(tmp_path / "seeds.jsonl", [
        {"id": f"p{n}", "problem": "Add: " + " + ".join(["3"] * n), "answer": 3 * n} for n in (2, 3, 6, 8, 9)])
    server = ScriptedServer()
    try:
        out = tmp_path / "run"
        run(sums_recipe(tmp_path, server.url, generate={"problems": 0, "seed_problems": seeds}, hike={"enabled": False},
                        measure={"model": str(DEMO_POLICY), "k": 3, "max_tokens": 64, "system_prompt": None,
                                 "device": "cpu", "max_difficulty": 0.9}), out)
    finally:
        server.stop()
    samples = [json.loads(line) for line in (out / "measure" / "base.measure" / "samples.jsonl").read_text().splitlines()]
    rows = ledger(out, "base.measure")
    assert len(samples) == 3 * len(rows)
    for pid, row in rows.items():
        correct = sum(s["reward"] == 1.0 for s in samples if s["problem_id"] == pid)
        assert row["problem"]["empirical_difficulty"] == pytest.approx(1 - correct / 3)
        assert row["kept"] == (1 - correct / 3 <= 0.9)
    assert report(out)["by_stage"]["base.measure"]["policy_samples"] == len(samples)


def test_a_changed_measure_recipe_applies_to_the_problems_not_yet_measured(tmp_path):
    """--accept-changes with another measure.temperature was refused by the eval run directory
    ("measure/base.measure holds a run with other settings"), though the docs promise the change
    applies to the problems not yet decided."""
    from tests_policy import DEMO_POLICY

    def recipe(n, **measure):
        seeds = write_jsonl(tmp_path / f"seeds{n}.jsonl", [
            {"id": f"p{d}", "problem": f"Add: {d} + {d} + {d}", "answer": 3 * d} for d in range(2, 2 + n)])
        return sums_recipe(tmp_path, server.url, generate={"problems": 0, "seed_problems": seeds},
                           hike={"enabled": False}, measure={"model": str(DEMO_POLICY), "k": 3, "max_tokens": 48,
                                                             "system_prompt": None, "device": "cpu", **measure})

    server = ScriptedServer()
    try:
        out = tmp_path / "run"
        run(recipe(2), out)
        before = ledger(out, "base.measure")
        run(recipe(4, k=2, temperature=0.5), out, accept_changes=True)
    finally:
        server.stop()
    after = ledger(out, "base.measure")
    assert len(before) == 2 and len(after) == 4 and all(after[i] == row for i, row in before.items())
    [moved] = (out / "measure" / "base.measure").glob("settings-*/samples.jsonl")
    new = [json.loads(line) for line in moved.read_text().splitlines()]
    assert {s["problem_id"] for s in new} == set(after) - set(before) and len(new) == 2 * 2
    for pid in set(after) - set(before):
        assert after[pid]["problem"]["samples"] == 2
    assert report(out)["by_stage"]["base.measure"]["policy_samples"] == 3 * 2 + 2 * 2


def test_measure_drops_a_problem_the_policy_server_refuses_and_asks_again_only_for_other_failures(tmp_path):
    """docs/sand.md: a refused request drops its problem. In measure, one refused sample ended the
    stage with StageIncomplete, and every rerun asked again and stopped there: hike and export never ran."""
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"id": i, "problem": p, "answer": a} for i, p, a in [
        ("short", "Add: 12 + 7", 19), ("long", "Add: 45 + 8 + 3", 56), ("flaky", "Add: 9 + 31 + 6 + 2", 48)]])
    broken = {"flaky": True}

    def policy_script(prompt, seed, body):
        if "45 + 8" in prompt:
            return (400, "maximum context length is 64 tokens")
        if "9 + 31" in prompt and broken["flaky"]:
            return (200, "not a completion")  # malformed: a failure that is not a refusal
        return "\\boxed{19}"

    teacher, policy = ScriptedServer(teacher=CLEAN), ScriptedServer(policy_script)

    def measured(out):
        return run(sums_recipe(tmp_path, teacher.url, generate={"problems": 0, "seed_problems": seeds},
                               hike={"enabled": False},
                               measure={"model": "double", "base_url": policy.url, "k": 2, "system_prompt": None}), out)

    try:
        with pytest.raises(StageIncomplete, match="base.measure: ") as info:
            measured(tmp_path / "run")
        assert "malformed" in str(info.value) and "HTTP 400" not in str(info.value)  # what a rerun can mend
        assert policy.statuses[400] == 2
        broken["flaky"] = False
        summary = measured(tmp_path / "run")
        assert policy.statuses[400] == 2  # the refusals were recorded: the rerun did not ask for them again
        assert measured(tmp_path / "again")["accepted"]["all"] == 2  # refusals alone: the stage goes on at once
    finally:
        teacher.stop()
        policy.stop()
    rows = ledger(tmp_path / "run", "base.measure")
    assert (rows["s-long"]["reason"], rows["s-long"]["detail"]) == ("request rejected by the server",
                                                                     "HTTP 400: maximum context length is 64 tokens")
    assert rows["s-short"]["problem"]["empirical_difficulty"] == 0.0
    assert rows["s-flaky"]["problem"]["empirical_difficulty"] == 1.0
    assert summary["accepted"]["all"] == 2 and report(tmp_path / "run")["by_stage"]["base.measure"]["rejected"] == 2
    assert ledger(tmp_path / "again", "base.measure")["s-long"]["reason"] == "request rejected by the server"


def test_refusals_before_an_endpoint_failure_are_recorded(tmp_path):
    """The refusals a stage had collected were thrown away when the endpoint then failed: a rerun
    asked for them again."""
    served = Counter()

    def script(prompt, seed, body):
        served["n"] += 1
        if served["n"] > 6:
            return (503, "no healthy upstream")  # the endpoint goes down
        return (400, "prompt too long") if served["n"] % 2 else TEACHER.respond(prompt, seed)

    server = ScriptedServer(script)
    try:
        data = sums_recipe(tmp_path, server.url, generate={"problems": 16})
        data["defaults"].update(concurrency=1, retries=0)  # one at a time: 3 answered, 3 refused, then 10 failures
        with pytest.raises(EndpointError, match="failed the last 8 requests in a row"):
            run(data, tmp_path / "run")
    finally:
        server.stop()
    calls = [json.loads(line) for line in (tmp_path / "run" / "calls" / "base.generate.jsonl").read_text().splitlines()]
    assert sum("rejected" in c for c in calls) == 3 and sum("text" in c for c in calls) == 3


def test_an_accepted_change_of_system_prompt_measures_the_rest_apart(tmp_path):
    """A measure stopped part-way, then rerun with another measure.system_prompt and --accept-changes:
    the new prompts met the old ones' samples under the same ids in the same directory, and the
    rerun failed ("holds samples of other problems")."""
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"id": i, "problem": p, "answer": a} for i, p, a in [
        ("short", "Add: 12 + 7", 19), ("flaky", "Add: 9 + 31 + 6 + 2", 48)]])
    broken, systems = {"flaky": True}, set()

    def policy_script(prompt, seed, body):
        systems.update(m["content"] for m in body["messages"] if m["role"] == "system")
        if "9 + 31" in prompt and broken["flaky"] and seed % 2:
            return (200, "not a completion")  # one of flaky's samples fails: the stage stops part-way
        return "\\boxed{19}"

    teacher, policy = ScriptedServer(teacher=CLEAN), ScriptedServer(policy_script)

    def measured(system_prompt, **options):
        return run(sums_recipe(tmp_path, teacher.url, generate={"problems": 0, "seed_problems": seeds},
                               hike={"enabled": False}, measure={"model": "double", "base_url": policy.url, "k": 2,
                                                                 "concurrency": 1, "system_prompt": system_prompt}),
                   tmp_path / "run", **options)

    try:
        with pytest.raises(StageIncomplete):
            measured(None)
        broken["flaky"] = False
        summary = measured("Think step by step.", accept_changes=True)
    finally:
        teacher.stop()
        policy.stop()
    assert summary["accepted"]["all"] >= 1
    moved = list((tmp_path / "run" / "measure" / "base.measure").glob("settings-*/samples.jsonl"))
    assert len(moved) == 1 and systems == {"Think step by step."}
