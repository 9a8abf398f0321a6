"""Monte Carlo step labels and weak/strong consistency, on `sums` with the demo policy as completer."""

import json

import pytest

from reasonrl.envs.sums import SumsEnvironment
from reasonrl.reward.prm.completer import Completer
from reasonrl.reward.prm.labels import (LabelJob, label_problem, label_quality, labels_of, mc_labels, monte_carlo,
                                        run_label_job, sample_solutions, solution_row)
from reasonrl.reward.prm.steps import StepFormat

POLICY = "reasonrl/demo/policy"
SPACE = StepFormat(delimiter=" ")
ENGINE = {"kv_cache_memory": 16 << 20, "max_model_len": 192}


def row(exact, weak, strong, outcome=1):
    return {"steps": [f"s{i}" for i in range(len(exact))], "exact": exact, "outcome": outcome,
            "mc": {"weak": weak, "strong": strong}}


def test_hard_soft_and_first_n():
    outcomes = [[0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]]
    assert mc_labels(outcomes) == [1.0, 0.0, 1.0]
    assert mc_labels(outcomes, n=2) == [0.0, 0.0, 1.0]
    assert mc_labels(outcomes, hard=False) == [0.5, 0.0, 1.0]
    assert mc_labels([[], [1]]) == [None, 1.0] and mc_labels([[]], hard=False) == [None]  # not continued: no label


def test_consistency_keeps_only_agreeing_steps():
    r = row([1, 0, 0], weak=[[0, 0], [0, 0], [0, 0]], strong=[[1, 0], [1, 0], [0, 0]])
    assert labels_of(r, "weak") == [0.0, 0.0, 0.0] and labels_of(r, "strong") == [1.0, 1.0, 0.0]
    assert labels_of(r, "consistent") == [None, None, 0.0]
    assert labels_of(r, "outcome") == [None, None, 1.0] and labels_of(r, "exact") == [1.0, 0.0, 0.0]
    q = label_quality([r], "strong")
    assert q["accuracy"] == pytest.approx(2 / 3) and q["false_positive_rate"] == 0.5 and q["false_negative_rate"] == 0
    q = label_quality([r], "consistent")
    assert q == {**q, "accuracy": 1.0, "retention": pytest.approx(1 / 3), "labelled": 1}


@pytest.fixture(scope="module")
def completer():
    return Completer.load(POLICY, 4, temperature=1.0, max_tokens=64, device="cpu", **ENGINE)


@pytest.mark.slow
def test_monte_carlo_outcomes_are_per_step_and_reproducible(completer):
    env = SumsEnvironment(max_terms=5)
    rows, cost = sample_solutions(completer, env, env.prompts(6, seed=3), 2, SPACE)
    assert cost.completions == 12 and rows
    assert all(len(r["exact"]) == len(r["steps"]) for r in rows)
    first = monte_carlo(completer, env, rows, SPACE, "weak", seed=1)
    assert first.completions == 4 * sum(len(r["steps"]) for r in rows) and first.cached_tokens > 0
    assert all(len(r["mc"]["weak"]) == len(r["steps"]) and all(len(b) == 4 for b in r["mc"]["weak"]) for r in rows)
    four = [r["mc"]["weak"] for r in rows]
    completer.n = 2  # sample j is drawn with seed + j: n = 2 gives the first two of n = 4
    monte_carlo(completer, env, rows, SPACE, "weak", seed=1)
    completer.n = 4
    assert [r["mc"]["weak"] for r in rows] == [[b[:2] for b in steps] for steps in four]
    # a completer continuing a wrong step almost never reaches the answer: MC labels track exact ones
    assert label_quality(rows, "weak")["accuracy"] > 0.7


@pytest.mark.slow
def test_label_job_writes_rows_costs_and_quality(tmp_path):
    out = tmp_path / "labels.jsonl"
    job = LabelJob(policy=POLICY, out=str(out), env="sums:?max_terms=5", weak=POLICY, strong=POLICY, problems=2,
                   samples_per_problem=2, completions=2, max_tokens=64, device="cpu")
    result = run_label_job(job, SPACE, ENGINE, log=lambda *a: None)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == result["rows"] and set(rows[0]["mc"]) == {"weak", "strong"}
    costs = json.loads((tmp_path / "labels.jsonl.cost.json").read_text())
    assert set(costs) == {"solutions", "weak", "strong"} and costs["weak"]["generated_tokens"] > 0
    quality = json.loads((tmp_path / "labels.jsonl.quality.json").read_text())
    assert {"weak@2", "strong@1", "consistent@2+2", "consistent@1+1"} <= set(quality)


def test_label_job_refuses_bad_options():
    with pytest.raises(ValueError, match="completions"):
        LabelJob(policy=POLICY, out="x", weak=POLICY, completions=0)


def test_a_prefix_that_fills_the_context_is_left_unlabelled(completer):
    """A solution cut at the context limit has step prefixes that leave no room in max_model_len: the
    engine refused them and `prm label` crashed after all the sampling, writing nothing."""
    env = SumsEnvironment(max_terms=3)
    [prompt] = env.prompts(1, seed=0)
    response = " ".join(f"{10 ** 9 + i}+1={10 ** 9 + i + 1}" for i in range(12))  # ~250 tokens, max_model_len 192
    row = solution_row(env, prompt, response, SPACE, "p/0")
    cost = monte_carlo(completer, env, [row], SPACE, "weak", seed=1)
    outcomes, k = row["mc"]["weak"], len(row["steps"])
    assert 0 < cost.no_room < k and cost.completions == 4 * (k - cost.no_room)
    assert outcomes[k - cost.no_room:] == [[]] * cost.no_room and all(len(b) == 4 for b in outcomes[:k - cost.no_room])
    labels = labels_of(row, "weak")  # a step never continued has no label (not "wrong")
    assert labels[k - cost.no_room:] == [None] * cost.no_room and None not in labels[:k - cost.no_room]
    assert label_problem(row, "weak", 4) is None  # nor is its empty list "fewer continuations than asked"


def test_a_continuation_the_engine_fails_is_run_again_not_scored(completer):
    """A request ended with finish_reason "error" holds partial text: scored as a continuation it
    read as "did not reach the answer" and biased the step labels towards wrong."""
    from reasonrl.reward.prm.completer import ATTEMPTS, Request

    env = SumsEnvironment(max_terms=3)
    [prompt] = env.prompts(1, seed=0)
    clean = Request(prompt, seed=1)
    completer.run([clean])
    sampling, faults = completer.engine.runner.sampling_batch, []

    def sampling_batch(seqs, limit):
        if len(faults) < limit and any(s.request_id == "c0" and len(s.output_ids) == 2 for s in seqs):
            faults.append(1)
            raise RuntimeError("injected fault")
        return sampling(seqs)

    try:
        completer.engine.runner.sampling_batch = lambda seqs: sampling_batch(seqs, 1)
        again = Request(prompt, seed=1)
        completer.run([again])
        assert faults and again.texts == clean.texts  # the failed run was repeated, with its seed
        completer.engine.runner.sampling_batch = lambda seqs: sampling_batch(seqs, 1 + ATTEMPTS)
        with pytest.raises(RuntimeError, match=f"failed 1 completion request.*{ATTEMPTS} times.*injected fault"):
            completer.run([Request(prompt, seed=1)])
    finally:
        completer.engine.runner.sampling_batch = sampling


def test_solutions_cut_at_max_tokens_are_kept_in_pools_and_left_out_of_labelling(tmp_path):
    """A solution cut at max_tokens ends in a fragment of a step, which the completers went on from and
    labelled as if it were a step (often "right")."""
    common = dict(policy=POLICY, env="sums:?min_terms=5&max_terms=5", problems=2, samples_per_problem=2,
                  completions=1, max_tokens=12, device="cpu")  # 12 tokens: no worked 5-term solution ends
    pool = LabelJob(out=str(tmp_path / "pool.jsonl"), distinct=False, **common)
    assert run_label_job(pool, SPACE, ENGINE, log=lambda *a: None)["cut"] == 0  # no completer: nothing labelled
    rows = [json.loads(line) for line in (tmp_path / "pool.jsonl").read_text().splitlines()]
    cut = {(r["id"].split("/")[0], r["response"]) for r in rows if not r["ended"]}
    assert len(rows) == 4 and cut and rows[0]["step_format"]["delimiter"] == " "
    logged = []
    result = run_label_job(LabelJob(out=str(tmp_path / "labels.jsonl"), weak=POLICY, **common), SPACE, ENGINE,
                           log=logged.append)
    labelled = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert result["cut"] == len(cut) and result["rows"] == len(labelled) and all(r["ended"] for r in labelled)
    assert f"{len(cut)} solutions cut at max_tokens (12) left out of labelling" in logged
