"""`reasonrl raft`: rank, keep, fine-tune; outcome and PRM rewards; round metrics at equal samples."""

import json

import pytest
import torch

from reasonrl.cli import main
from reasonrl.envs.base import Prompt
from reasonrl.reward.prm.completer import Request
from reasonrl.rl.raft import RaftConfig, select
from tests.rl.test_runs import Killed

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
    with pytest.raises(ValueError, match="outcome\\+prm needs --prm"):
        RaftConfig(policy=POLICY, out="x", reward="outcome+prm")


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


def test_outcome_plus_prm_ranks_only_what_the_verifier_accepts(monkeypatch):
    from reasonrl.envs.registry import load_environment
    from reasonrl.reward.prm import model, scoring
    from reasonrl.reward.prm.scoring import StepScores
    from reasonrl.rl import raft

    read = []

    class Scorer:
        def __init__(self, *a, **k):
            pass

        def score(self, pairs):
            read.extend(r for _, r in pairs)
            return [StepScores(steps=[r], scores=[0.3 if "guess" in r else 0.9], seen=1) for _, r in pairs]

    monkeypatch.setattr(model, "load_prm", lambda *a, **k: (None, None))
    monkeypatch.setattr(scoring, "PRMScorer", Scorer)
    env = load_environment("sums:")
    p = env.prompts(1)[0]
    right, guess, wrong = f"worked \\boxed{{{p.answer}}}", f"guess \\boxed{{{p.answer}}}", "\\boxed{0}"
    cfg = RaftConfig(policy=POLICY, out="x", reward="outcome+prm", prm="p")
    rewards = raft.reward_fn(cfg, env)([p] * 3, [wrong, guess, right])
    assert rewards == [float("-inf"), 0.3, 0.9]
    assert read == [guess, right]  # the PRM never read the rejected sample
    # whatever the bar, a rejected sample is never kept (scored 0.0, it reached --min-reward 0)
    assert select(requests([p], [[wrong, guess]]), rewards[:2], keep=2, min_reward=0.0) == [(p, guess)]


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


def raft_args(out, *more):
    return ["raft", "--policy", POLICY, "--out", str(out), "--env", "sums:?max_terms=4", "--rounds", "2",
            "--prompts-per-round", "4", "--samples-per-prompt", "2", "--eval-problems", "4", "--max-tokens", "32",
            "--epochs", "1", "--device", "cpu", *more]


def kill_in_round(monkeypatch, killed: int):
    """Make RAFT's round `killed` die as a kill would; returns the real round function."""
    from reasonrl.rl import raft

    one_round = raft.raft_round

    def round_or_kill(cfg, *args, **kw):
        if args[5] == killed:
            raise Killed
        return one_round(cfg, *args, **kw)

    monkeypatch.setattr(raft, "raft_round", round_or_kill)
    return one_round


@pytest.mark.slow
def test_a_raft_run_killed_after_a_round_resumes_there_and_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    """RAFT saved nothing until its last round: a kill lost every round, a rerun started from round 0."""
    from safetensors.torch import load_file

    from reasonrl.rl import raft

    assert main(raft_args(tmp_path / "whole")) == 0
    rounds = []
    one_round = kill_in_round(monkeypatch, 2)
    with pytest.raises(Killed):
        main(raft_args(tmp_path / "cut"))
    assert (tmp_path / "cut" / "checkpoints" / "step_000001").is_dir()
    monkeypatch.setattr(raft, "raft_round",
                        lambda cfg, *args, **kw: rounds.append(args[5]) or one_round(cfg, *args, **kw))
    assert main(raft_args(tmp_path / "cut")) == 0
    assert rounds == [2]  # round 1 was not run again
    metrics = [[{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in
                (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("whole", "cut")]
    assert metrics[0] == metrics[1] and [r["round"] for r in metrics[0]] == [0, 1, 2]
    whole, cut = (load_file(tmp_path / run / "model.safetensors") for run in ("whole", "cut"))
    assert all(torch.equal(whole[k], cut[k]) for k in whole) and whole.keys() == cut.keys()
    # a kill between the last round's checkpoint and its metrics: the rerun finds the run finished and
    # writes the metrics the checkpoint holds (it left metrics.jsonl a round short)
    lines = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "whole" / "metrics.jsonl").write_text("".join(lines[:-1]))
    assert main(raft_args(tmp_path / "whole")) == 0
    assert (tmp_path / "whole" / "metrics.jsonl").read_text() == "".join(lines)
    # a kill while the final policy is saved leaves no weights file (it goes in last), so the rerun saves it again
    from reasonrl.models import load_model, loader

    (tmp_path / "whole" / "model.safetensors").unlink()
    monkeypatch.setattr(loader, "_move_in", lambda *a: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        main(raft_args(tmp_path / "whole"))
    monkeypatch.undo()
    assert not loader.has_weights(tmp_path / "whole") and main(raft_args(tmp_path / "whole")) == 0
    assert load_model(tmp_path / "whole") is not None


def test_raft_out_follows_the_run_directory_rules(tmp_path, monkeypatch, capsys):
    """It wrote into any --out: over its own --policy, into a directory of unrelated files, and over a
    run made with other settings."""
    import shutil

    from reasonrl.rl import raft

    monkeypatch.setattr(raft, "held_out_accuracy", lambda *a: 0.5)  # the directory rules, not the training
    monkeypatch.setattr(raft, "raft_round", lambda cfg, env, judge, model, tok, score, rnd, samples, **kw: {"round": rnd, "samples": 0})
    policy = shutil.copytree(POLICY, tmp_path / "policy")
    weights = (policy / "model.safetensors").read_bytes()
    assert main([str(policy) if a == POLICY else a for a in raft_args(policy)]) == 2  # --policy P --out P
    assert "which this run reads" in capsys.readouterr().err
    assert (policy / "model.safetensors").read_bytes() == weights
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep")
    assert main(raft_args(tmp_path / "notes")) == 2
    assert "is not a reasonrl run directory" in capsys.readouterr().err
    assert main(raft_args(tmp_path / "run")) == 0
    assert main(raft_args(tmp_path / "run", "--seed", "1")) == 2
    assert "raft.seed: 0 (saved) -> 1 (now)" in capsys.readouterr().err
    assert main(raft_args(tmp_path / "run", "--seed", "1", "--overwrite")) == 0


def test_a_stopped_or_interrupted_raft_says_what_is_saved(tmp_path, monkeypatch, capsys):
    """Ctrl-C said "nothing was saved since the last checkpoint": RAFT had no checkpoint, nor saved anything."""
    from reasonrl.rl import raft
    from reasonrl.stop import StopSignal

    stop = StopSignal()

    def one_round(cfg, env, judge, model, tok, score, rnd, samples, **kw):
        if rnd == 2:
            raise KeyboardInterrupt  # a second Ctrl-C, mid-round
        stop.request() if cfg.seed == 1 else None  # a first one: stop after this round
        return {"round": rnd, "samples": 0}

    monkeypatch.setattr(raft, "held_out_accuracy", lambda *a: 0.5)
    monkeypatch.setattr(raft, "raft_round", one_round)
    assert main(raft_args(tmp_path / "run")) == 130
    err = capsys.readouterr().err
    assert f"interrupted; the policy after round 1 is saved in {tmp_path / 'run'}: rerun the same command" in err
    cfg = RaftConfig(policy=POLICY, out=str(tmp_path / "stopped"), rounds=2, eval_problems=4, seed=1, device="cpu")
    assert [h["round"] for h in raft.run_raft(cfg, stop=stop, log=lambda *a: None)] == [0, 1]
    assert "stopped after round 1 of 2" in capsys.readouterr().err


def test_eval_env_measures_with_its_own_verifier(tmp_path, monkeypatch):
    """Trained on a lenient outcome reward (a box within 3 of the sum passes), measured against the exact one:
    every sample is one off, so every one is kept, none is right, and held-out accuracy is 0, not 1."""
    from reasonrl.rl import raft

    def one_off(model, tokenizer, prompts, n, *a):
        return requests(prompts, [[f"\\boxed{{{p.answer + 1}}}"] * n for p in prompts])

    monkeypatch.setattr(raft, "sample", one_off)
    monkeypatch.setattr(raft, "train_sft", lambda *a, **k: None)
    args = raft_args(tmp_path / "run", "--rounds", "1")
    args[args.index("sums:?max_terms=4")] = "sums:?max_terms=4&tolerance=3"
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["accuracy"] for r in rows] == [1.0, 1.0] and rows[1]["kept"] == 4 and rows[1]["kept_correct"] == 1.0
    assert main(args[:args.index("--out") + 1] + [str(tmp_path / "exact")] + args[args.index("--out") + 2:]
                + ["--eval-env", "sums:?max_terms=4"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "exact" / "metrics.jsonl").read_text().splitlines()]
    assert [r["accuracy"] for r in rows] == [0.0, 0.0] and rows[1]["kept"] == 4 and rows[1]["kept_correct"] == 0.0


def test_a_refused_rerun_leaves_the_saved_config(tmp_path, monkeypatch, capsys):
    """open_run saved the new config before the environments loaded: a rerun refused for a bad --env or
    --eval-env (after --accept-changes) had rewritten config.yaml and logged the changes anyway."""
    from reasonrl.rl import raft

    monkeypatch.setattr(raft, "held_out_accuracy", lambda *a: 0.5)
    monkeypatch.setattr(raft, "raft_round", lambda cfg, env, judge, model, tok, score, rnd, samples, **kw: {"round": rnd, "samples": 0})
    assert main(raft_args(tmp_path / "run")) == 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    for bad, message in ((["--eval-env", "letter:a"], "another environment than --env"),
                         (["--env", "sums:?max_terms=4&bogus=1"], "unknown option 'bogus'")):
        assert main(raft_args(tmp_path / "run", "--rounds", "3", *bad, "--accept-changes")) == 2
        assert message in capsys.readouterr().err
        assert (tmp_path / "run" / "config.yaml").read_text() == saved
        assert not (tmp_path / "run" / "config_changes.jsonl").exists()


def test_checkable_settings_are_checked_before_overwrite_deletes_the_run(tmp_path, monkeypatch, capsys):
    """A bad --eval-env, --env, aggregation or --prm was refused only after --overwrite had deleted the
    finished run; and a finished run's rerun with accepted changes rewrote its config (nothing ran under it)."""
    from reasonrl.rl import raft

    monkeypatch.setattr(raft, "held_out_accuracy", lambda *a: 0.5)
    monkeypatch.setattr(raft, "raft_round", lambda cfg, env, judge, model, tok, score, rnd, samples, **kw: {"round": rnd,
                                                                                                      "samples": 0})
    run = tmp_path / "run"
    assert main(raft_args(run)) == 0
    files = sorted(p.relative_to(run) for p in run.rglob("*"))
    saved = (run / "config.yaml").read_text()
    for bad, message in ((["--eval-env", "letter:a"], "another environment than --env"),
                         (["--env", "sums:?bogus=1"], "unknown option 'bogus'"),
                         (["--reward", "prm", "--prm", str(tmp_path)], "is not a process reward model"),
                         (["--reward", "prm", "--prm", str(tmp_path), "--aggregation", "median"], "unknown aggregation")):
        assert main(raft_args(run, *bad, "--overwrite")) == 2
        assert message in capsys.readouterr().err
        assert sorted(p.relative_to(run) for p in run.rglob("*")) == files
    assert main(raft_args(run, "--eval-env", "sums:", "--accept-changes")) == 0
    assert "this run is finished" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == saved and not (run / "config_changes.jsonl").exists()


def test_a_round_that_keeps_nothing_says_so(monkeypatch, capsys):
    """A PRM whose scores all sat below --min-reward kept nothing and trained nothing, every round, silently."""
    from reasonrl.envs.registry import load_environment
    from reasonrl.rl import raft

    env = load_environment("sums:")
    monkeypatch.setattr(raft, "sample", lambda model, tok, prompts, n, *a: requests(prompts, [["x"] * n for _ in prompts]))
    monkeypatch.setattr(raft, "train_sft", lambda *a, **k: pytest.fail("nothing to fine-tune on"))
    cfg = RaftConfig(policy=POLICY, out="x", prompts_per_round=2, samples_per_prompt=3)
    row = raft.raft_round(cfg, env, env, None, None, lambda p, r: [0.3] * len(r), 1, 0)
    assert row["kept"] == 0
    assert "round 1: no sample reached --min-reward 0.5 (the best scored 0.3)" in capsys.readouterr().err
