import json

import pytest

from reasonrl.cli import main
from reasonrl.envs.registry import load_environment


def test_data_ttt_exports_the_schema_with_moves_and_solution_list(tmp_path):
    out = tmp_path / "d.jsonl"
    assert main(["data", "ttt", "--game", "dTTT", "--n", "20", "--seed", "3", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20
    for key in ("problem", "solution", "is_unique_solution", "verdict", "next_player", "currect_board_visualization",
                "board_visualization", "problem_number", "moves", "solution_list"):
        assert key in rows[0]
    assert all(isinstance(m, list) and m[0] in ("Alice", "Bob") for m in rows[0]["moves"])
    again = tmp_path / "e.jsonl"
    main(["data", "ttt", "--game", "dTTT", "--n", "20", "--seed", "3", "--out", str(again)])
    assert again.read_text() == out.read_text()  # reproducible from the seed


def test_data_ttt_refuses_no_problems(tmp_path, capsys):
    """`--n -3` wrote an empty file and said "wrote 0 oTTT problems", exit 0."""
    for n in ("0", "-3"):
        assert main(["data", "ttt", "--game", "oTTT", "--n", n, "--out", str(tmp_path / "x.jsonl")]) == 2
        assert f"--n must be a positive number of problems, got {n}" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("spec", ["ttt:oTTT", "ttt:all", "sums:", "letter:ab", "arith:?n=5"])
def test_registered_environments_load(spec):
    env = load_environment(spec)
    prompts = env.prompts(n=4, seed=0, split="train")
    assert len(prompts) == 4 and env.reward(prompts[0], "zzz \\boxed{") == 0.0
