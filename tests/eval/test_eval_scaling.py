"""Test-time scaling in `reasonrl eval --prm`: best-of-N curves from the stored samples."""

import random

import pytest
import torch

from reasonrl.envs.base import Prompt
from reasonrl.eval import EvalConfig, run_eval
from reasonrl.eval.scaling import best_of_n, markdown, sizes
from reasonrl.models import load_model
from reasonrl.models.tiny import make_checkpoint, make_tokenizer
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.prm.model import PRMConfig, from_backbone, save_prm
from reasonrl.reward.prm.scoring import StepScores
from reasonrl.reward.prm.steps import StepFormat

ENGINE = {"kv_cache_memory": 1 << 23, "max_model_len": 512, "block_size": 16}


def problems(count=60, n=4, p=0.35, seed=0):
    """Problems whose correct samples answer "A", wrong ones a random other letter."""
    rng, out = random.Random(seed), []
    for i in range(count):
        rows = []
        for _ in range(n):
            ok = rng.random() < p
            answer = "A" if ok else rng.choice("BCD")
            rows.append({"response": f"step {answer}", "extracted": answer, "reward": float(ok)})
        out.append((Prompt(f"p{i}", [{"role": "user", "content": f"q{i}"}]), rows))
    return out


def scorer(prefer_correct: bool):
    """A stand-in PRM: two steps, scored high on correct responses (or on wrong ones)."""
    def score(items):
        return [StepScores(["step", response], [0.5, 0.9 if (response.endswith("A") == prefer_correct) else 0.1], 2)
                for _, response in items]
    return score


def config(tmp_path, **kw):
    cfg = EvalConfig("sums:", str(tmp_path), tmp_path, n=4, bon_trials=100)
    cfg.prm, cfg.orm = "stand-in", kw.get("orm")  # the scorers are given to best_of_n directly
    return cfg


def test_sizes():
    assert sizes(1) == [1] and sizes(4) == [1, 2, 4] and sizes(6) == [1, 2, 4, 6] and sizes(64)[-1] == 64


def test_a_verifier_that_knows_correctness_reaches_the_oracle(tmp_path):
    data = problems()
    good = best_of_n(data, config(tmp_path), prm=scorer(True))
    bad = best_of_n(data, config(tmp_path), prm=scorer(False))
    assert good["ns"] == [1, 2, 4] and good["problems"] == 60
    curves = good["curves"]
    assert set(curves) == {"majority", "prm-min", "prm-mean", "prm-last", "prm-product", "prm-vote", "oracle"}
    for rule in ("prm-min", "prm-last", "prm-vote"):
        assert curves[rule]["4"]["accuracy"] == curves["oracle"]["4"]["accuracy"]
    # N=1: every rule takes the one candidate drawn
    assert len({round(c["1"]["accuracy"], 9) for c in curves.values()}) == 1
    assert curves["prm-min"]["4"]["accuracy"] > curves["prm-min"]["1"]["accuracy"] + 0.2
    # an anti-correlated verifier picks a wrong candidate whenever there is one
    assert bad["curves"]["prm-min"]["4"]["accuracy"] < curves["majority"]["4"]["accuracy"] < curves["prm-min"]["4"]["accuracy"]
    for by_n in curves.values():
        for v in by_n.values():
            assert v["low"] <= v["accuracy"] <= v["high"]


def test_orm_rule_and_incomplete_problems(tmp_path):
    data = problems(10)
    data[0] = (data[0][0], data[0][1][:2])  # a problem whose samples did not all finish is left out
    out = best_of_n(data, config(tmp_path, orm="unused"), prm=scorer(False), orm=scorer(True))
    assert out["problems"] == 9 and out["curves"]["orm"]["4"] == out["curves"]["oracle"]["4"]
    # a run stopped before any problem has all its samples: no curves, and the summary still renders
    empty = best_of_n([(data[0][0], data[0][1])], config(tmp_path), prm=scorer(True))
    assert empty["problems"] == 0 and empty["curves"] == {} and empty["ns"] == [1, 2, 4]
    assert "no curves" in "\n".join(markdown(empty))


def test_steps_past_max_len_are_left_out_and_counted(tmp_path):
    """The placeholder 0.0 of steps the PRM never read ranked every long correct sample last."""
    data = problems()

    def score(items):  # correct samples are long: the PRM read 2 of their 3 steps, and liked them
        return [StepScores(["a", "b", "c"], [0.9, 0.9, 0.0], 2) if response.endswith("A")
                else StepScores(["a", "b"], [0.5, 0.5], 2) for _, response in items]

    out = best_of_n(data, config(tmp_path), prm=score)
    correct = sum(row["reward"] for _, rows in data for row in rows)
    assert out["unread"] == {"prm": correct}
    for rule in ("prm-min", "prm-mean", "prm-last", "prm-product"):
        assert out["curves"][rule]["4"]["accuracy"] == out["curves"]["oracle"]["4"]["accuracy"]
    assert f"ranked on the steps it read: PRM {int(correct)}." in "\n".join(markdown(out))


def test_bad_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="n >= 2"):
        EvalConfig("sums:", str(tmp_path), tmp_path, n=1, prm="x")
    with pytest.raises(ValueError, match="prm: .*not a process reward model"):
        EvalConfig("sums:", str(tmp_path), tmp_path, n=2, prm=str(tmp_path))  # a directory without a PRM config
    with pytest.raises(ValueError, match="give prm"):
        EvalConfig("sums:", str(tmp_path), tmp_path, n=2, orm="x")
    with pytest.raises(ValueError, match="aggregation"):
        EvalConfig("sums:", str(tmp_path), tmp_path, n=2, prm="x", vote_by="median")
    with pytest.raises(ValueError, match="prm: .*missing"):
        EvalConfig("sums:", str(tmp_path), tmp_path, n=2, prm=str(tmp_path / "missing"))


@pytest.fixture(scope="module")
def policy_and_prm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scaling")
    tok = make_tokenizer(["Add: 4 + 7 + 2", "4+7=11 11+2=13 \\boxed{13}"] * 50, vocab_size=300)
    policy = make_checkpoint(tmp / "policy", tokenizer=tok, hidden_size=64, num_layers=2, std=0.2)
    backbone = load_model(policy, device="cpu", dtype=torch.float32)
    prm_tok = Tokenizer.from_dir(policy)  # from_backbone adds the separator token to it
    prm = from_backbone(backbone, prm_tok, PRMConfig(steps=StepFormat(delimiter=" ")), seed=1)
    return policy, save_prm(prm, tmp / "prm", prm_tok)


def test_eval_with_a_prm_end_to_end(policy_and_prm, tmp_path):
    policy, prm = policy_and_prm
    options = dict(n=4, limit=6, temperature=1.0, max_tokens=12, progress=False, engine_kwargs=ENGINE, bon_trials=50)
    first = run_eval("sums:", model=str(policy), out=tmp_path, **options)
    assert "best_of_n" not in first
    # the curves come from the stored samples: a rerun with --prm (and --orm) asks for none
    summary = run_eval("sums:", model=str(policy), out=tmp_path, prm=str(prm), orm=str(prm), **options)
    assert summary["run"]["asked"] == 0
    scaling = summary["best_of_n"]
    assert scaling["ns"] == [1, 2, 4] and scaling["problems"] == 6 and scaling["prm"] == str(prm)
    assert set(scaling["unread"]) == {"prm", "orm"}
    assert {"majority", "prm-min", "prm-vote", "orm", "oracle"} <= set(scaling["curves"])
    assert scaling["curves"]["oracle"]["4"]["accuracy"] >= scaling["curves"]["prm-min"]["4"]["accuracy"]
    assert "## Test-time scaling (best of N)" in (tmp_path / "summary.md").read_text()
