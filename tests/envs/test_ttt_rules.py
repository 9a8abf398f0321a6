"""The published answer rule (win, then blocked, then fork) on hand-made positions."""

from reasonrl.envs.ttt.forks import completions
from reasonrl.envs.ttt.games import get_game
from reasonrl.envs.ttt.problem import sound
from reasonrl.envs.ttt.rules import answer, sides
from reasonrl.envs.ttt.text import player
from reasonrl.envs.ttt.solver import Solver


def _answer(name, white, black):
    game = get_game(name)
    rule = answer(game, game.mask(white), game.mask(black))
    return None if rule is None else (rule.verdict, game.cells(rule.moves))


def test_player_to_move_alternates_from_alice():
    game = get_game("oTTT")
    assert [player(i) for i in range(4)] == ["Alice", "Bob", "Alice", "Bob"]
    white, black = game.mask("EA"), game.mask("C")
    assert sides(white, black) == (black, white)  # Bob (black) to move after three stones
    assert sides(white, black | game.mask("I")) == (white, black | game.mask("I"))


def test_win_lists_every_completing_move():
    # dTTT, Alice to move holding A B D: A-B-C and A-D-G are both one short
    assert _answer("dTTT", "ABD", "EHN") == ("win", "CG")


def test_win_comes_before_blocking():
    # oTTT, Alice to move: she completes A-B-C although Bob threatens D-E-F
    assert _answer("oTTT", "AB", "EF") == ("win", "C")


def test_blocked_is_the_single_enemy_threat():
    # oTTT, Bob to move: Alice's only threat is C (A-B-C); C-F-I is dead (Bob holds I)
    assert _answer("oTTT", "ABF", "EI") == ("blocked", "C")
    # the published cTTT record 0: Alice holds F K L of plane F-K-L-G
    assert _answer("cTTT", "FKL", "AJ") == ("blocked", "G")


def test_two_enemy_threats_fall_through_to_fork_and_are_unsound():
    # oTTT, Bob to move: Alice threatens C (A-B-C), I (A-E-I) and H (B-E-H). No single block
    # exists, so the literal rule goes on to forks: I makes G-H-I and C-F-I one short for Bob.
    # Alice then wins at once, which the soundness check catches.
    game = get_game("oTTT")
    assert _answer("oTTT", "ABE", "GF") == ("fork", "I")
    white, black = game.mask("ABE"), game.mask("GF")
    assert not sound(Solver(game), answer(game, white, black), white, black)


def test_fork_is_every_move_making_two_sets_one_short():
    # dTTT, the paper's fork at C with G-E-C and A-B-C: Alice holds E and A, Bob blocks A-E-I
    verdict, cells = _answer("dTTT", "EAK", "IHO")
    assert verdict == "fork" and "C" in cells
    game = get_game("dTTT")
    own, opp = game.mask("EAK"), game.mask("IHO")
    for cell in game.labels:
        bit = game.mask(cell)
        if bit & (own | opp):
            continue
        one_short = [s for s in game.winning_sets
                     if not game.mask(s) & opp and len(set(s) - set(game.cells(own | bit))) == 1]
        assert (cell in cells) == (len(one_short) >= 2), cell


def test_published_fork_that_misses_one_cell_twice_is_unsound():
    # cTTT, Alice to move with B D E G: planes A-B-C-D and A-C-G-E both miss A and C. After A
    # both miss only C, which counts as a fork by the published rule (two sets one short) but
    # is a single threat that Bob blocks; the solver shows A does not win.
    game = get_game("cTTT")
    white, black = game.mask("BDEG"), game.mask("FHIJ")
    rule = answer(game, white, black)
    assert rule.verdict == "fork" and game.cells(rule.moves) == "AC"
    pairs = [game.mask(s) & ~white for s in game.winning_sets
             if not game.mask(s) & black and len(set(s) - set("BDEG")) == 2]
    assert completions(game.mask("A"), pairs) == game.mask("C")
    solver = Solver(game)
    assert solver.move_value(white, black, game.mask("A")) < 1
    assert not sound(solver, rule, white, black)
