"""Loading the published TTT-Bench files (JSON list or JSON lines)."""

import json

import pytest

from reasonrl.envs.ttt.games import get_game
from reasonrl.envs.ttt.generate import generate
from reasonrl.envs.ttt.published import (PublishedFormatError, load_published, load_published_dir,
                                          parse_moves, parse_solution)

RECORD = {
    "problem": "Alice and Bob are playing a game on two adjacent cubes. ... Alice first places a white stone at F. "
               "Then Bob places a black stone at A. Then Alice places a white stone at K. Then Bob places a black "
               "stone at J. Then Alice places a white stone at L. Where should Bob play next?",
    "solution": "G", "is_unique_solution": True, "verdict": "blocked", "next_player": "Bob", "problem_number": 0,
}


def test_json_list_and_json_lines_load_alike(tmp_path):
    as_list = tmp_path / "cube_puzzles_test.json"
    as_list.write_text(json.dumps([RECORD, {**RECORD, "problem_number": 1}]))
    lines = tmp_path / "lines" / "cube_puzzles_test.json"
    lines.parent.mkdir()
    lines.write_text("\n".join(json.dumps(r) for r in [RECORD, {**RECORD, "problem_number": 1}]) + "\n")
    a, b = load_published(as_list), load_published(lines)
    assert a == b and len(a) == 2
    assert a[0]["game"] == "cTTT" and a[0]["solution_list"] == ["G"]
    assert a[0]["moves"] == ["F", "A", "K", "J", "L"]


def test_game_from_wording_when_the_file_name_is_unknown(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(RECORD) + "\n")
    assert load_published(path)[0]["game"] == "cTTT"


@pytest.mark.parametrize("text,labels", [("G", ["G"]), ("A, B, C", ["A", "B", "C"]), ("A,B,C,D", list("ABCD")),
                                         ("A and B", ["A", "B"]), (" C ; D ", ["C", "D"])])
def test_solution_strings(text, labels):
    assert parse_solution(text) == labels


def test_moves_are_read_from_every_games_wording():
    for name in ("oTTT", "dTTT", "cTTT", "sTTT"):
        game = get_game(name)
        for problem in generate(name, 5, seed=1):
            assert parse_moves(problem.record()["problem"], game.labels) == list(problem.moves)


def test_generated_export_reads_back(tmp_path):
    path = tmp_path / "stones_puzzles_test.json"
    problems = list(generate("sTTT", 6, seed=2))
    path.write_text(json.dumps([p.record() for p in problems]))
    loaded = load_published(path)
    assert [r["solution_list"] for r in loaded] == [list(p.solution) for p in problems]


@pytest.mark.parametrize("content,message", [
    ("[1, 2]", "record 0: expected a JSON object"),
    (json.dumps([RECORD, {"problem": "x"}]), "record 1: field 'solution'"),
    (json.dumps([{**RECORD, "solution": "Z"}]), "record 0: solution 'Z'"),
    ("[{", "invalid JSON"),
    (json.dumps(RECORD) + "\n{oops\n", "line 2: invalid JSON"),
])
def test_bad_input_names_the_file_and_record(tmp_path, content, message):
    path = tmp_path / "cube_puzzles_test.json"
    path.write_text(content)
    with pytest.raises(PublishedFormatError) as error:
        load_published(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_directory_loader(tmp_path):
    (tmp_path / "cube_puzzles_test.json").write_text(json.dumps([RECORD]))
    assert [r["game"] for r in load_published_dir(tmp_path)] == ["cTTT"]
    with pytest.raises(PublishedFormatError):
        load_published_dir(tmp_path, games=("oTTT",))
    with pytest.raises(PublishedFormatError):
        load_published_dir(tmp_path / "missing")
