"""A PRM kept in step with RAFT's policy: what the refresh labels, that it trains the PRM, and that a
run checkpoints the refreshed PRM with the policy (a resume ranks with it, not with --prm)."""

import json
import random

import pytest
import torch

from reasonrl.cli import main
from reasonrl.envs.base import Prompt
from reasonrl.envs.sums import SumsEnvironment, terms_of, worked
from reasonrl.reward.prm.completer import Request
from reasonrl.reward.prm.labels import solution_row
from reasonrl.reward.prm.refresh import top_ranked
from reasonrl.reward.prm.steps import StepFormat
from reasonrl.rl.raft import RaftConfig
from tests.rl.test_raft import kill_in_round
from tests.rl.test_runs import Killed

POLICY = "reasonrl/demo/policy"


def test_top_ranked_takes_each_prompts_best_first_and_passes_over_what_cannot_be_labelled():
    a, b = Prompt(id="a", messages=[], answer="1"), Prompt(id="b", messages=[], answer="2")
    requests = [Request(a, texts=["a1", "a2", "a3", "a2"], ended=[True, True, False, True]),
                Request(b, texts=["b1", "b2"], ended=[True, True])]
    rewards = [0.2, 0.9, 0.95, 0.9, float("-inf"), 0.4]
    # a3 is cut at max_tokens, the second a2 a duplicate, b1 rejected by the verifier in front of the PRM
    assert top_ranked(requests, rewards, 9) == [(a, "a2"), (b, "b2"), (a, "a1")]
    assert top_ranked(requests, rewards, 2) == [(a, "a2"), (b, "b2")]  # every prompt's best before any second
    rewards[5] = 0.99  # within a tier, by reward: b's best first
    assert top_ranked(requests, rewards, 1) == [(b, "b2")]


def test_refresh_options_are_checked():
    with pytest.raises(ValueError, match="reward=outcome has none"):
        RaftConfig(policy=POLICY, out="x", prm_refresh=8)
    with pytest.raises(ValueError, match="prm_refresh must be an integer >= 0"):
        RaftConfig(policy=POLICY, out="x", reward="prm", prm="p", prm_refresh=-1)
    with pytest.raises(ValueError, match="refresh_completions"):
        RaftConfig(policy=POLICY, out="x", reward="prm", prm="p", prm_refresh=8, refresh_completions=0)
    with pytest.raises(ValueError, match="refresh_lr"):
        RaftConfig(policy=POLICY, out="x", reward="prm", prm="p", prm_refresh=8, refresh_lr=0.0)
    with pytest.raises(ValueError, match="refresh_labels must be consistent or exact"):
        RaftConfig(policy=POLICY, out="x", reward="prm", prm="p", prm_refresh=8, refresh_labels="strong")
    # settings that would be ignored
    with pytest.raises(ValueError, match="--refresh-env does nothing without --prm-refresh N"):
        RaftConfig(policy=POLICY, out="x", reward="prm", prm="p", refresh_env="sums:")
    with pytest.raises(ValueError, match="--refresh-weak does nothing with --refresh-labels exact"):
        RaftConfig(policy=POLICY, out="x", reward="prm", prm="p", prm_refresh=8, refresh_labels="exact", refresh_weak="w")


def test_what_the_refresh_reads_is_checked_before_a_round_is_spent(prm, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(raft_args(run, prm, "--refresh-weak", str(tmp_path / "nowhere"))) == 2
    assert "--refresh-weak: checkpoint directory" in capsys.readouterr().err and not run.exists()
    assert main(raft_args(run, prm, "--refresh-labels", "exact")) == 2  # (raft_args: --refresh-completions 2)
    assert "--refresh-completions does nothing with --refresh-labels exact" in capsys.readouterr().err
    assert main(raft_args(run, prm, "--refresh-labels", "exact", "--refresh-completions", "4", "--env", "letter:")) == 2
    assert "LetterEnvironment (--refresh-env, default --env) has no exact step labels" in capsys.readouterr().err
    assert not run.exists()


@pytest.fixture(scope="module")
def prm(tmp_path_factory):
    """A PRM trained a little on exactly labelled sums solutions."""
    tmp = tmp_path_factory.mktemp("prm")
    env, rng, fmt = SumsEnvironment(max_terms=4), random.Random(0), StepFormat(delimiter=" ")
    rows = [solution_row(env, p, worked(terms_of(p), rng, 0.3), fmt, f"{p.id}/0") for p in env.prompts(30)]
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["prm", "train", "--data", str(tmp / "train.jsonl"), "--out", str(tmp / "prm"), "--labels", "exact",
                 "--epochs", "1", "--device", "cpu", "--delimiter", " "]) == 0
    return tmp / "prm"


def test_a_round_with_nothing_to_label_leaves_the_prm_as_it_is(prm):
    """Every sample cut at max_tokens: nothing to label, and no error that would stop the run at that round."""
    from reasonrl.reward.prm.model import load_prm
    from reasonrl.reward.prm.refresh import Refresh
    from reasonrl.reward.prm.scoring import PRMScorer

    env = SumsEnvironment(max_terms=4)
    requests = [Request(p, texts=["1+2=3"], ended=[False]) for p in env.prompts(2)]
    refresh = Refresh(PRMScorer(*load_prm(prm, device="cpu")), env, weak=POLICY, strong=None, solutions=4,
                      labels="exact")
    out = refresh(requests, [0.9, 0.9], None, None, rnd=1)
    assert out["solutions"] == 0 and out["prm_loss"] is None and refresh.rows == []


def raft_args(out, prm, *more):
    return ["raft", "--policy", POLICY, "--out", str(out), "--env", "sums:?max_terms=4", "--rounds", "2",
            "--prompts-per-round", "4", "--samples-per-prompt", "2", "--eval-problems", "4", "--max-tokens", "32",
            "--epochs", "1", "--device", "cpu", "--reward", "prm", "--prm", str(prm), "--min-reward", "0",
            "--prm-refresh", "3", "--refresh-completions", "2", *more]


def timeless(run):
    """A run's metrics without wall times."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds", None)
        row.get("refresh", {}).pop("seconds", None)
    return rows


def weights(path):
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


@pytest.mark.slow
def test_a_refreshed_prm_is_trained_on_labels_of_what_it_ranked_and_saved_with_every_round(prm, tmp_path, monkeypatch):
    from reasonrl.reward.prm import refresh as refresh_module
    from reasonrl.rl import raft

    labelled = []
    label = refresh_module.monte_carlo
    monkeypatch.setattr(refresh_module, "monte_carlo", lambda c, e, rows, *a: labelled.append(
        [r["response"] for r in rows]) or label(c, e, rows, *a))
    assert main(raft_args(tmp_path / "whole", prm)) == 0
    run = tmp_path / "whole"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:  # 3 solutions a round, each step continued twice by each completer
        assert r["refresh"]["solutions"] == 3 and r["refresh"]["completions"] == 2 * 2 * r["refresh"]["steps"]
        assert 0.0 <= r["refresh"]["label_accuracy"] <= 1.0 and r["refresh"]["prm_loss"] is not None
    labels = [json.loads(line) for line in (run / "refresh_labels.jsonl").read_text().splitlines()]
    assert len(labels) == 6 and all(set(r["mc"]) == {"weak", "strong"} for r in labels)
    assert labelled == [[r["response"] for r in labels[:3]]] * 2 + [[r["response"] for r in labels[3:]]] * 2
    # the PRM that ranks changed, and the run's refreshed PRM is the last checkpoint's
    given, final = weights(prm), weights(run / "prm")
    assert final.keys() == given.keys() and not all(torch.equal(given[k], final[k]) for k in given)
    last = weights(run / "checkpoints" / "step_000002" / "prm")
    assert all(torch.equal(last[k], final[k]) for k in final)

    # killed in round 2: the resume ranks with the PRM refreshed in round 1, and ends where the whole run did
    one_round = kill_in_round(monkeypatch, 2)
    with pytest.raises(Killed):
        main(raft_args(tmp_path / "cut", prm))
    assert (tmp_path / "cut" / "checkpoints" / "step_000001" / "prm" / "prm_config.json").is_file()
    monkeypatch.setattr(raft, "raft_round", one_round)
    assert main(raft_args(tmp_path / "cut", prm)) == 0
    assert timeless(tmp_path / "whole") == timeless(tmp_path / "cut")
    labels = [(tmp_path / run / "refresh_labels.jsonl").read_text() for run in ("whole", "cut")]
    assert labels[0] == labels[1]
    cut = weights(tmp_path / "cut" / "prm")
    assert all(torch.equal(final[k], cut[k]) for k in final)
    # the finished run's OUT/prm is the last checkpoint's, whatever was left there (a stale or damaged copy)
    (tmp_path / "cut" / "prm" / "model.safetensors").write_bytes(b"damaged")
    assert main(raft_args(tmp_path / "cut", prm)) == 0
    assert all(torch.equal(final[k], v) for k, v in weights(tmp_path / "cut" / "prm").items())


def test_exact_refresh_labels_train_the_prm_without_a_continuation(prm):
    """The ceiling to measure against: the environment's exact step labels, no completer run."""
    from reasonrl.reward.prm.model import load_prm
    from reasonrl.reward.prm.refresh import Refresh
    from reasonrl.reward.prm.scoring import PRMScorer

    env, rng = SumsEnvironment(max_terms=4), random.Random(1)
    prompts = env.prompts(6, seed=5)
    requests = [Request(p, texts=[worked(terms_of(p), rng, 0.5) for _ in range(2)], ended=[True, True])
                for p in prompts]
    scorer = PRMScorer(*load_prm(prm, device="cpu"))
    before = {k: v.clone() for k, v in scorer.prm.state_dict().items()}
    refresh = Refresh(scorer, env, weak="unused", strong="unused", solutions=8, labels="exact", epochs=2)
    out = refresh(requests, [0.5] * 12, None, None, rnd=1)
    assert out["solutions"] == len(refresh.rows) == 8 and out["completions"] == 0
    assert all(r["mc"] == {} for r in refresh.rows) and out["prm_loss"] is not None
    assert "judged_before" in out and "label_accuracy" not in out
    assert any(not torch.equal(before[k], v) for k, v in scorer.prm.state_dict().items())


def test_the_refresh_labels_before_the_policy_learns_the_round(monkeypatch):
    """Its strong completer is the policy that wrote the samples: fine-tuned on the kept ones first, it
    would continue their prefixes as it was just taught to, and their labels would follow their outcome."""
    from reasonrl.envs.registry import load_environment
    from reasonrl.models.tokenizer import Tokenizer
    from reasonrl.rl import raft

    env, order = load_environment("sums:"), []
    monkeypatch.setattr(raft, "sample", lambda model, tok, prompts, n, *a: [
        Request(p, texts=[f"\\boxed{{{p.answer}}}"] * n, ended=[True] * n) for p in prompts])
    monkeypatch.setattr(raft, "train_sft", lambda *a, **k: order.append("fine-tune"))
    cfg = RaftConfig(policy=POLICY, out="x", prompts_per_round=2, samples_per_prompt=2)
    row = raft.raft_round(cfg, env, env, "policy", Tokenizer.from_dir(POLICY), lambda p, r: [0.9] * len(r), 1, 0,
                          refresh=lambda requests, rewards, model, tok, rnd: order.append(model) or {"solutions": 4})
    assert order == ["policy", "fine-tune"] and row["refresh"] == {"solutions": 4}
