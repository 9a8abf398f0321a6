"""Published wording and record layout, reproduced from move lists."""

import json

from reasonrl.envs.ttt.games import get_game
from reasonrl.envs.ttt.problem import solve
from reasonrl.envs.ttt.solver import Solver
from reasonrl.envs.ttt.text import drawing, problem_text

# cTTT problem_number 0 of the published data set (amd/TTT-Bench), verbatim.
PUBLISHED_CTTT_0 = json.loads(r"""{"problem": "Alice and Bob are playing a game on two adjacent cubes. ABCD forms the top rectangle in the first cube and BIJC forms the top rectangle in the second cube. EFGH forms the bottom rectangle in the first cube and FKLG forms the bottom rectangle in the second cube. AE is an edge, BF is an edge, CG is an edge, DH is an edge, IK is an edge, and JL is an edge. Note that vertices B,C,G,F are shared by the two cubes. Alice and Bob plays a game where they take turns to put stickers on the vertices of the cubes that have not been occupied. Alice plays white stickers. Bob plays black stickers. The person who has four stickers on the same plane on either cube wins. Alice first places a white stone at F. Then Bob places a black stone at A. Then Alice places a white stone at K. Then Bob places a black stone at J. Then Alice places a white stone at L. Where should Bob play next?", "solution": "G", "is_unique_solution": true, "verdict": "blocked", "next_player": "Bob", "currect_board_visualization": "...*------*------B\n../|...../|...../|\n./.|..../.|..../.|\nB------*------*..|\n|..*---|--*...|..W\n|./....|./....|./\n|/.....|/.....|/\n*------W------W\n", "board_visualization": "...D------C------J\n../|...../|...../|\n./.|..../.|..../.|\nA------B------I..|\n|..H---|--G...|..L\n|./....|./....|./\n|/.....|/.....|/\nE------F------K\n", "problem_number": 0}""")


def test_published_cttt_record_is_reproduced_field_for_field():
    game = get_game("cTTT")
    problem = solve(game, Solver(game), ("F", "A", "K", "J", "L"), number=0)
    record = problem.record()
    published_keys = list(PUBLISHED_CTTT_0)
    assert list(record)[: len(published_keys)] == published_keys  # same keys, same order
    for key, value in PUBLISHED_CTTT_0.items():
        assert record[key] == value, key
    assert record["moves"] == [["Alice", "F"], ["Bob", "A"], ["Alice", "K"], ["Bob", "J"], ["Alice", "L"]]
    assert record["solution_list"] == ["G"] and record["game"] == "cTTT"
    assert record["game_value"] in (-1, 0, 1) and "G" in record["optimal_moves"]


def test_cttt_problem_lengths_match_the_published_range():
    game = get_game("cTTT")
    # the viewer shows 875-949 characters, i.e. 875/913/949 for 5/6/7 moves
    assert [len(problem_text(game, list("FAKJLBC")[:k])) for k in (5, 6, 7)] == [875, 913, 949]


def test_paper_prompts_for_ottt_and_dttt():
    ottt = ("Alice and Bob are playing a game on a 3x3 grid. The points on the grid are labeled top to bottom, "
            "left to right, as A,B,C,D,E,F,G,H,I. Alice plays white. Bob plays black. At each turn, the player "
            "places a stone of the corresponding color onto one of the positions that has not been occupied. "
            "Whoever has three stones in a line (horizontal, vertical, or diagonal) wins. Alice first places a "
            "white stone at A. Bob places a black stone at B. Alice places a white stone at C. Bob places a "
            "black stone at G. Alice places a white stone at D. Where should Bob play next?")
    assert problem_text(get_game("oTTT"), list("ABCGD")) == ottt
    dttt = ("Alice and Bob are playing a game on two adjacent 3x3 grid. The points on the first grid are labeled "
            "top to bottom, left to right, as A,B,C,D,E,F,G,H,I. The points on the second grid are labeled top to "
            "bottom, left to right, as C,J,K,F,L,M,I,N,O. Note that points C,F, I are shared by the two grids. "
            "Alice plays white. Bob plays black. At each turn, the player places a stone of the corresponding "
            "color onto one of the positions that has not been occupied. Whoever has three stones in a line "
            "(horizontal, vertical, or diagonal) on either grid wins. Alice first places a white stone at I. Bob "
            "places a black stone at G. Then Alice at J. Bob places a black stone at K. Then Alice at D. Bob "
            "places a black stone at A. Then Alice at M. Where should Bob play next?")
    assert problem_text(get_game("dTTT"), list("IGJKDAM")) == dttt


def test_sttt_prompt_follows_the_paper():
    text = problem_text(get_game("sTTT"), ["A", "E"])
    assert text.startswith("Alice and Bob are playing a game on a board. There are 5 equally spaced horizontal")
    assert "For example, ABGF is a unit square. FBHL is a diagonal square." in text
    assert text.endswith("Alice first places a white stone at A. Then Bob places a black stone at E. "
                         "Where should Alice play next?")


def test_current_board_drawing_marks_every_cell():
    for name in ("oTTT", "dTTT", "sTTT"):
        game = get_game(name)
        moves = list(game.labels[:5])
        board = drawing(game, moves)
        assert board.replace("W", "x").replace("B", "x").replace("*", "x") == \
            "".join("x" if ch in game.labels else ch for ch in drawing(game))
        assert board.count("W") == 3 and board.count("B") == 2 and board.count("*") == game.n - 5
