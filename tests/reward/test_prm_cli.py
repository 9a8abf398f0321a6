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
