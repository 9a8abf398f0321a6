"""`reasonrl prm train | judge | best-of-n` end to end on exactly labelled `sums` solutions."""

import json
import random

from reasonrl.cli import main
from reasonrl.envs.sums import SumsEnvironment, terms_of, worked
from reasonrl.reward.prm.labels import solution_row
from reasonrl.reward.prm.steps import StepFormat


def write_pool(path, n, per_problem, split):
    env, rng, fmt = SumsEnvironment(max_terms=5), random.Random(0), StepFormat(delimiter=" ")
    rows = [solution_row(env, p, worked(terms_of(p), rng, 0.3), fmt, f"{p.id}/{j}")
            for p in env.prompts(n, split=split) for j in range(per_problem)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_train_judge_best_of_n(tmp_path, capsys):
    write_pool(tmp_path / "train.jsonl", 30, 1, "train")
    write_pool(tmp_path / "pool.jsonl", 6, 4, "eval")
    prm = tmp_path / "prm"
    assert main(["prm", "train", "--data", str(tmp_path / "train.jsonl"), "--out", str(prm), "--labels", "exact",
                 "--epochs", "1", "--device", "cpu", "--delimiter", " "]) == 0
    assert json.loads((prm / "prm_config.json").read_text())["steps"]["delimiter"] == " "
    capsys.readouterr()
    assert main(["prm", "judge", "--prm", str(prm), "--data", str(tmp_path / "pool.jsonl"), "--device", "cpu"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["f1"] <= 1.0
    out = tmp_path / "bon.json"
    assert main(["prm", "best-of-n", "--pool", str(tmp_path / "pool.jsonl"), "--prm", str(prm), "--orm", str(prm),
                 "--out", str(out), "--ns", "1", "2", "4", "--trials", "20", "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["problems"] == 6 and set(result["curves"]) >= {"majority", "prm-min", "prm-vote", "orm", "oracle"}
    assert set(result["curves"]["majority"]) == {"1", "2", "4"}


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["prm", "judge", "--prm", str(tmp_path), "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "prm_config.json" in capsys.readouterr().err
    (tmp_path / "pool.jsonl").write_text("[1, 2]\n")
    assert main(["prm", "best-of-n", "--pool", str(tmp_path / "pool.jsonl"), "--prm", "x", "--out", "y"]) == 2
    assert "pool.jsonl:1" in capsys.readouterr().err


def test_best_of_n_options_are_checked_before_any_scoring(tmp_path):
    """A bad --vote-by, or an N larger than a pool, was refused only after the PRM had scored the pool."""
    import pytest

    from reasonrl.reward.prm.run import BestOfNJob, run_best_of_n

    write_pool(tmp_path / "pool.jsonl", 3, 2, "eval")
    job = dict(pool=str(tmp_path / "pool.jsonl"), prm=str(tmp_path / "no-prm-here"), out=str(tmp_path / "bon.json"))
    with pytest.raises(ValueError, match="aggregation"):
        run_best_of_n(BestOfNJob(**job, vote_by="median", ns=(1, 2)))
    with pytest.raises(ValueError, match="N=4 candidates, the smallest pool .* has 2"):
        run_best_of_n(BestOfNJob(**job, ns=(1, 4)))
    rows = [json.loads(line) for line in (tmp_path / "pool.jsonl").read_text().splitlines()]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps({**r, "id": f"p{i}"}) + "\n" for i, r in enumerate(rows)))
    with pytest.raises(ValueError, match="has 1: a problem's pool is the rows whose ids share the part before the last"):
        run_best_of_n(BestOfNJob(**job, ns=(1, 2)))


def test_best_of_n_leaves_unread_steps_out_and_counts_them(tmp_path):
    """Steps past the PRM's max_len scored 0.0: a right but long solution lost to every short one."""
    import torch

    from reasonrl.reward.prm.model import PRMConfig, save_prm
    from reasonrl.reward.prm.run import BestOfNJob, new_prm, run_best_of_n

    scorer = new_prm("reasonrl/demo/policy", PRMConfig(steps=StepFormat(delimiter=" "), max_len=80), "cpu")
    with torch.no_grad():  # a head that says "right" at every step it reads
        scorer.prm.score[-1].weight.zero_()
        scorer.prm.score[-1].bias.copy_(torch.tensor([-5.0, 5.0]))
    prm = save_prm(scorer.prm, tmp_path / "prm", scorer.tokenizer)
    prompt = [{"role": "user", "content": "Add: 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1"}]
    long = [f"{i}+1={i + 1}" for i in range(1, 10)] + ["\\boxed{10}"]
    rows = [row for p in range(4) for row in (
        {"id": f"q{p}/0", "prompt": prompt, "steps": long, "final": "10", "outcome": 1},       # right, read in part
        {"id": f"q{p}/1", "prompt": prompt, "steps": ["\\boxed{9}"], "final": "9", "outcome": 0})]  # wrong, read
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    logged = []
    job = BestOfNJob(pool=str(tmp_path / "pool.jsonl"), prm=str(prm), out=str(tmp_path / "bon.json"), ns=(2,),
                     trials=20, device="cpu")
    result = run_best_of_n(job, log=logged.append)
    # every read step scores the same: the two candidates tie and the first drawn wins, not always the short one
    assert 0.0 < result["prm-min"][2]["accuracy"] < 1.0
    assert json.loads((tmp_path / "bon.json").read_text())["unread"] == {"prm": 4}
    assert logged == ["4 of 8 solutions go past the PRM's max_len: ranked on the steps it read"]


def test_prm_train_out_follows_the_run_directory_rules(tmp_path, capsys):
    """`prm train --base P --out P` trained over the policy it started from, and a rerun with other
    settings replaced the PRM without a word."""
    import shutil

    write_pool(tmp_path / "train.jsonl", 12, 1, "train")
    policy = shutil.copytree("reasonrl/demo/policy", tmp_path / "policy")
    weights = (policy / "model.safetensors").read_bytes()
    args = ["prm", "train", "--data", str(tmp_path / "train.jsonl"), "--labels", "exact", "--epochs", "1",
            "--device", "cpu", "--delimiter", " "]
    assert main([*args, "--base", str(policy), "--out", str(policy)]) == 2
    assert "which this run reads" in capsys.readouterr().err
    assert (policy / "model.safetensors").read_bytes() == weights
    prm = tmp_path / "prm"
    assert main([*args, "--out", str(prm)]) == 0
    trained = (prm / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main([*args, "--out", str(prm), "--lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "train.lr: 0.001 (saved) -> 0.01 (now)" in err and "--overwrite" in err and "--accept-changes" not in err
    assert (prm / "model.safetensors").read_bytes() == trained
    assert main([*args, "--out", str(prm)]) == 0
    assert "trained already; nothing to do" in capsys.readouterr().out
    assert main([*args, "--out", str(prm), "--lr", "0.01", "--overwrite"]) == 0
    assert (prm / "model.safetensors").read_bytes() != trained


def test_a_step_format_that_does_not_cut_the_labelled_steps_is_refused(tmp_path, capsys):
    """`prm train` trained on the rows' steps but saved the command's step format (its default a space, for
    sums): a PRM labelled on "\\n\\n" steps then scored each word as a step wherever it was used. Unset,
    the step format is the one the rows were labelled with."""
    env, rng = SumsEnvironment(max_terms=5), random.Random(0)
    rows = [solution_row(env, p, worked(terms_of(p), rng, 0.3).replace(" ", "\n\n"), StepFormat(), f"{p.id}/0")
            for p in env.prompts(8, split="train")]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["prm", "train", "--data", str(tmp_path / "train.jsonl"), "--labels", "exact", "--epochs", "1",
            "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "prm"), "--delimiter", " "]) == 2
    assert "cuts into 1 steps with this step format" in capsys.readouterr().err
    assert not (tmp_path / "prm").exists()
    assert main([*args, "--out", str(tmp_path / "prm")]) == 0
    assert json.loads((tmp_path / "prm" / "prm_config.json").read_text())["steps"]["delimiter"] == "\n\n"
    # rows labelled before the step format was recorded were cut as prm label cut them then: at a space
    spaced = write_pool(tmp_path / "spaced.jsonl", 8, 1, "train")
    unrecorded = tmp_path / "old.jsonl"
    unrecorded.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "step_format"}) + "\n" for r in spaced))
    assert main([*args[:3], str(unrecorded), *args[4:], "--out", str(tmp_path / "prm-old")]) == 0
    assert json.loads((tmp_path / "prm-old" / "prm_config.json").read_text())["steps"]["delimiter"] == " "


def test_prm_label_cuts_steps_as_its_environment_does(tmp_path, monkeypatch):
    """`prm label`'s default step format was a space whatever the environment: a prose solution's every
    word became a step, each continued N times by every completer."""
    from reasonrl.reward.prm import labels

    used = {}

    def record(job, fmt, engine_kwargs=None, log=print):
        used[job.env] = fmt
        return {"quality": {}}

    monkeypatch.setattr(labels, "run_label_job", record)
    for env in ("sums:", "letter"):
        assert main(["prm", "label", "--policy", "p", "--out", str(tmp_path / "x.jsonl"), "--env", env]) == 0
    assert used["sums:"] == StepFormat(delimiter=" ") and used["letter"] == StepFormat(delimiter="\n\n")
    assert main(["prm", "label", "--policy", "p", "--out", str(tmp_path / "x.jsonl"), "--split", "tags"]) == 0
    assert used["sums:"] == StepFormat(split="tags", delimiter=" ")


def test_pool_and_prompt_shapes_are_checked_before_scoring(tmp_path, capsys, monkeypatch):
    """A prompt that is not chat messages was rendered without its question and scored; a pool row's
    numeric `final`, --trials 0 and a bad --orm directory failed only after the PRM had scored the pool."""
    import pytest

    from reasonrl.reward.prm.run import BestOfNJob, run_best_of_n

    from reasonrl.reward.prm.model import PRMConfig, save_prm
    from reasonrl.reward.prm.run import new_prm

    scorer = new_prm("reasonrl/demo/policy", PRMConfig(steps=StepFormat(delimiter=" ")), "cpu")
    prm = str(save_prm(scorer.prm, tmp_path / "prm", scorer.tokenizer))
    rows = write_pool(tmp_path / "pool.jsonl", 3, 2, "eval")
    for bad in ({"content": "Add: 1 + 2"}, ["Add: 1 + 2"], [{"role": "user"}], None, 3):
        (tmp_path / "bad.jsonl").write_text(json.dumps({**rows[0], "prompt": bad}) + "\n")
        assert main(["prm", "judge", "--prm", prm, "--data", str(tmp_path / "bad.jsonl"), "--device", "cpu"]) == 2
        assert "bad.jsonl:1: prompt must be a string or a non-empty list of chat messages" in capsys.readouterr().err
        with pytest.raises(ValueError, match="prompt must be"):
            scorer.score_steps([(bad, ["1+2=3"])])
    (tmp_path / "bad.jsonl").write_text(json.dumps({**rows[0], "final": 3}) + "\n")
    assert main(["prm", "judge", "--prm", prm, "--data", str(tmp_path / "bad.jsonl"), "--device", "cpu"]) == 2
    assert "bad.jsonl:1: final must be" in capsys.readouterr().err
    job = dict(pool=str(tmp_path / "pool.jsonl"), prm=prm, out=str(tmp_path / "bon.json"), ns=(1, 2), device="cpu")
    with pytest.raises(ValueError, match="trials must be >= 1"):
        run_best_of_n(BestOfNJob(**job, trials=0))
    import reasonrl.reward.prm.run as run

    scored = []
    monkeypatch.setattr(run, "_step_scores", lambda *a: scored.append(a) or [])
    with pytest.raises(FileNotFoundError, match="no_orm is not a process reward model"):
        run_best_of_n(BestOfNJob(**job, orm=str(tmp_path / "no_orm")))
    assert scored == []


def test_soft_labels_need_a_single_completer():
    import pytest

    from reasonrl.reward.prm.train import PRMTrainConfig

    with pytest.raises(ValueError, match="soft"):
        PRMTrainConfig(soft=True)  # consistent labels are hard by construction
    assert PRMTrainConfig(soft=True, labels="weak").soft
