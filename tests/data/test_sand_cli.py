"""`reasonrl data sand RECIPE --out DIR`: a run, a rerun that asks nothing, changed recipes, bad input, dead endpoints."""

import pytest
from sand_double import ScriptedServer
from sand_helpers import sums_recipe, write_recipe

from reasonrl.cli import main


@pytest.fixture(scope="module")
def server():
    s = ScriptedServer()
    yield s
    s.stop()


def test_run_rerun_and_changed_recipes(server, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", sums_recipe(tmp_path, server.url, generate={"problems": 8}))
    out = tmp_path / "run"
    assert main(["data", "sand", str(recipe), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    for name in ("problems.jsonl", "sft.jsonl", "report.json", "report.md", "funnel.png", "config.yaml"):
        assert (out / name).is_file(), name
    asked = server.total_answered
    assert main(["data", "sand", str(recipe), "--out", str(out)]) == 0  # finished: nothing is asked again
    assert server.total_answered == asked
    # more candidates: only the new ones are asked for
    assert main(["data", "sand", str(recipe), "--out", str(out), "--set", "generate.problems=10",
                 "--accept-changes"]) == 0
    assert asked < server.total_answered
    capsys.readouterr()
    # a change that alters answers is refused, naming it; how fast it asks may change freely
    assert main(["data", "sand", str(recipe), "--out", str(out), "--set", "generate.problems=10", "--set",
                 "solve.temperature=0.2", "--set", "solve.concurrency=2"]) == 2
    err = capsys.readouterr().err
    assert "solve.temperature: 0.6 (saved) -> 0.2 (now)" in err and "concurrency" not in err and "problems" not in err


def test_bad_recipes_and_dead_endpoints_are_one_line(server, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", sums_recipe(tmp_path, server.url, rate={"ratings": "three"}))
    assert main(["data", "sand", str(recipe), "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip() == "reasonrl data sand: error: rate.ratings: expected int, got 'three'"
    recipe = write_recipe(tmp_path / "r.yaml", sums_recipe(tmp_path, "http://127.0.0.1:9/v1"))
    assert main(["data", "sand", str(recipe), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the endpoint http://127.0.0.1:9/v1" in err
    assert main(["data", "sand", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "c")]) == 2


def test_a_run_that_never_got_an_answer_binds_nothing(server, tmp_path):
    out = tmp_path / "run"
    dead = write_recipe(tmp_path / "dead.yaml", sums_recipe(tmp_path, "http://127.0.0.1:9/v1"))
    assert main(["data", "sand", str(dead), "--out", str(out)]) == 1  # the endpoint was down: nothing was done
    fixed = sums_recipe(tmp_path, server.url, generate={"problems": 4, "temperature": 0.9}, hike={"enabled": False})
    assert main(["data", "sand", str(write_recipe(tmp_path / "fixed.yaml", fixed)), "--out", str(out)]) == 0
