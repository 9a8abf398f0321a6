"""The exact solver against plain minimax, and the known facts of ordinary tic-tac-toe."""

import random
from functools import lru_cache

import pytest

from reasonrl.envs.ttt.breaker import MakerBreaker
from reasonrl.envs.ttt.games import bits, get_game
from reasonrl.envs.ttt.solver import Solver


def _reference(game):
    """Plain minimax: every move searched, no pruning, no symmetry, no relaxation.

    Memoised on the raw position only so that it runs in seconds (a cache of exact values).
    """

    def completes(stones):
        return any(s & stones == s for s in game.set_masks)

    @lru_cache(maxsize=None)
    def value(own, opp):
        empty = game.full & ~(own | opp)
        if not empty:
            return 0
        return max(move(own, opp, m) for m in bits(empty))

    def move(own, opp, m):
        return 1 if completes(own | m) else -value(opp, own | m)

    return value, move


def _reachable(game):
    """Every position reachable from the empty board (as (white, black)), game-over ones too."""
    seen, frontier = {(0, 0)}, [(0, 0)]
    while frontier:
        white, black = frontier.pop()
        if any(s & white == s or s & black == s for s in game.set_masks):
            continue
        alice = white.bit_count() == black.bit_count()
        for m in bits(game.full & ~(white | black)):
            nxt = (white | m, black) if alice else (white, black | m)
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


def _mover(white, black):
    return (white, black) if white.bit_count() == black.bit_count() else (black, white)


def _check(solver, value, move, game, own, opp):
    empty = game.full & ~(own | opp)
    want = value(own, opp)
    assert solver.value(own, opp) == want, (game.cells(own), game.cells(opp))
    moves = {m: move(own, opp, m) for m in bits(empty)}
    assert solver.move_values(own, opp) == moves
    assert solver.optimal_moves(own, opp) == sum(m for m, v in moves.items() if v == want)


def test_ottt_has_5478_positions_765_up_to_symmetry():
    game = get_game("oTTT")
    positions = _reachable(game)
    assert len(positions) == 5478

    def canonical(white, black):
        return min((sum(1 << p[i] for i in bits_of(white)), sum(1 << p[i] for i in bits_of(black)))
                   for p in game.perms)

    def bits_of(mask):
        return [i for i in range(game.n) if mask >> i & 1]

    assert len({canonical(w, b) for w, b in positions}) == 765


def test_ottt_empty_board_is_a_draw():
    assert Solver(get_game("oTTT")).value(0, 0) == 0


@pytest.mark.parametrize("symmetry", [True, False])
def test_solver_matches_minimax_on_every_ottt_position(symmetry):
    game = get_game("oTTT")
    value, move = _reference(game)
    solver = Solver(game, symmetry=symmetry)
    for white, black in _reachable(game):
        if any(s & white == s or s & black == s for s in game.set_masks) or white | black == game.full:
            continue
        _check(solver, value, move, game, *_mover(white, black))


def _random_positions(game, stones, count, seed):
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        cells = rng.sample(range(game.n), stones)
        white, black = sum(1 << c for c in cells[0::2]), sum(1 << c for c in cells[1::2])
        if not any(s & white == s or s & black == s for s in game.set_masks):
            out.append(_mover(white, black))
    return out


@pytest.mark.parametrize("name,stones,count", [("dTTT", 7, 60), ("cTTT", 4, 60), ("sTTT", 15, 25)])
def test_solver_matches_minimax_on_sampled_positions(name, stones, count):
    game = get_game(name)
    value, move = _reference(game)
    solver = Solver(game)
    for own, opp in _random_positions(game, stones, count, seed=1):
        _check(solver, value, move, game, own, opp)


@pytest.mark.parametrize("name,stones,count", [("oTTT", 2, 60), ("cTTT", 4, 60), ("dTTT", 7, 60), ("sTTT", 16, 20)])
def test_maker_breaker_never_denies_a_real_win(name, stones, count):
    """If the relaxation says the maker cannot win, plain minimax agrees (value <= 0)."""
    game = get_game(name)
    value, move = _reference(game)
    relaxed = MakerBreaker(game)
    denied = 0
    for own, opp in _random_positions(game, stones, count, seed=2):
        if not relaxed.maker_wins(own, opp, True):
            denied += 1
            assert value(own, opp) <= 0
        if not relaxed.maker_wins(opp, own, False):
            denied += 1
            assert value(own, opp) >= 0
    assert denied  # the test exercised the relaxation


def test_solver_rejects_finished_or_malformed_positions():
    game = get_game("oTTT")
    solver = Solver(game)
    with pytest.raises(ValueError):
        solver.value(game.mask("ABC"), game.mask("DE"))  # Alice already won
    with pytest.raises(ValueError):
        solver.value(game.mask("AB"), game.mask("B"))  # overlapping stones
    with pytest.raises(ValueError):
        solver.move_value(game.mask("A"), 0, game.mask("A"))  # occupied cell
