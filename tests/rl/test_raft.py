"""`reasonrl raft`: rank, keep, fine-tune; outcome and PRM rewards; round metrics at equal samples."""

import json

import pytest

from reasonrl.cli import main
from reasonrl.envs.base import Prompt
from reasonrl.reward.prm.completer import Request
from reasonrl.rl.raft import RaftConfig, select

POLICY = "reasonrl/demo/policy"


def requests(prompts, texts, ended=None):
    return [Request(p, texts=t, ended=e or [True] * len(t)) for p, t, e in zip(prompts, texts, ended or [None] * 9)]


def test_select_keeps_the_best_that_reach_the_bar():
    p = [Prompt(id="a", messages=[], answer="1"), Prompt(id="b", messages=[], answer="2")]
    kept = select(requests(p, [["x", "y", "z"], ["u", "v"]]), [0.2, 0.9, 0.7, 0.1, 0.3], keep=2, min_reward=0.5)
    assert kept == [(p[0], "y"), (p[0], "z")]  # b: nothing reaches 0.5


def test_a_response_cut_at_max_tokens_is_never_kept():
    """Kept, it was fine-tuned with an end-of-sequence after it: the model learned to stop where the limit
    fell (every kept row of a policy that writes past max_tokens)."""
    p = [Prompt(id="a", messages=[], answer="1")]
    kept = select(requests(p, [["cut", "whole", "low"]], [[False, True, True]]), [0.9, 0.8, 0.1], keep=1,
                  min_reward=0.5)
    assert kept == [(p[0], "whole")]


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="--prm"):
        RaftConfig(policy=POLICY, out="x", reward="prm")
    with pytest.raises(ValueError, match="rounds"):
        RaftConfig(policy=POLICY, out="x", rounds=0)


def test_the_prm_reward_aggregates_only_the_steps_the_prm_read(monkeypatch):
    """Steps past the PRM's max_len score a placeholder 0.0: aggregated, they sank every long response
    (min, last and product to 0, mean diluted) whatever the PRM thought of what it read."""
    from reasonrl.reward.prm import model, scoring
    from reasonrl.reward.prm.scoring import StepScores
    from reasonrl.rl import raft

    class Scorer:
        def __init__(self, *a, **k):
            pass

        def score(self, pairs):
            return [StepScores(steps=["a", "b", "c"], scores=[0.9, 0.8, 0.0], seen=2) for _ in pairs]

    monkeypatch.setattr(model, "load_prm", lambda *a, **k: (None, None))
    monkeypatch.setattr(scoring, "PRMScorer", Scorer)
    prompts = [Prompt(id="a", messages=[{"role": "user", "content": "q"}], answer=None)]
    for aggregation, expected in (("min", 0.8), ("last", 0.8), ("mean", 0.85)):
        cfg = RaftConfig(policy=POLICY, out="x", reward="prm", prm="p", aggregation=aggregation)
        assert raft.reward_fn(cfg, None)(prompts, ["a\n\nb\n\nc"]) == [pytest.approx(expected)]


@pytest.mark.slow
def test_raft_rounds_with_the_outcome_reward(tmp_path):
    out = tmp_path / "raft"
    assert main(["raft", "--policy", POLICY, "--out", str(out), "--env", "sums:?max_terms=6", "--rounds", "1",
                 "--prompts-per-round", "8", "--samples-per-prompt", "4", "--eval-problems", "8", "--max-tokens", "64",
                 "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1] and rows[1]["samples"] == 32
    assert rows[1]["kept"] > 0 and rows[1]["kept_correct"] == 1.0  # the verifier keeps only right answers
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def test_held_out_accuracy_is_the_environments_not_the_mean_reward(monkeypatch):
    """With rewards of 0.5 for right answers (the letter env's partial credit), 'accuracy' read 0.5."""
    from reasonrl.envs.base import Environment, Prompt
    from reasonrl.rl import raft

    class Half(Environment):
        def score(self, prompt, response):
            return 0.5 if response == "right" else 0.0

    prompts = [Prompt(id=str(i), messages=[{"role": "user", "content": "q"}], answer=None) for i in range(4)]
    monkeypatch.setattr(raft, "sample", lambda *a, **k: requests(prompts, [["right"], ["right"], ["wrong"], ["right"]]))
    assert raft.held_out_accuracy(None, None, Half(), prompts, 8) == 0.75  # the base class: reward > 0
