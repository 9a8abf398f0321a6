"""The generator: reproducible, unique up to symmetry, the published mix, sound answers."""

from collections import Counter

import pytest

from reasonrl.envs.ttt.games import GAMES, get_game
from reasonrl.envs.ttt.generate import enumerate_problems, generate, split_of
from reasonrl.envs.ttt.problem import sound, stones
from reasonrl.envs.ttt.rules import answer, sides
from reasonrl.envs.ttt.solver import Solver


def _key(game, moves):
    """Smallest packed (white, black) under the symmetries, relabelling cell by cell."""
    white, black = stones(game, moves)
    return min(sum(1 << p[i] for i in range(game.n) if white >> i & 1)
               | sum(1 << p[i] for i in range(game.n) if black >> i & 1) << game.n for p in game.perms)


@pytest.mark.parametrize("name", list(GAMES))
def test_same_seed_same_problems(name):
    first = [p.record() for p in generate(name, 12, seed=3)]
    assert first == [p.record() for p in generate(name, 12, seed=3)]
    assert first != [p.record() for p in generate(name, 12, seed=4)]
    assert [r["problem_number"] for r in first] == list(range(12))


@pytest.mark.parametrize("name", list(GAMES))
def test_published_mix_and_settings(name):
    game = get_game(name)
    problems = list(generate(name, game.published_size, seed=0))
    assert len(problems) == game.published_size
    assert Counter(p.verdict for p in problems) == dict(game.verdict_counts)
    unique = sum(len(p.solution) == 1 for p in problems)
    assert (unique, len(problems) - unique) == game.unique_counts
    assert {len(p.moves) for p in problems} <= set(game.move_counts)
    assert len({_key(game, p.moves) for p in problems}) == len(problems)  # unique up to symmetry


@pytest.mark.parametrize("name", list(GAMES))
def test_every_problem_is_consistent_and_sound(name):
    game = get_game(name)
    fresh = Solver(game, symmetry=False)  # not the generator's tables
    for problem in generate(name, 25, seed=7):
        white, black = stones(game, problem.moves)
        assert len(set(problem.moves)) == len(problem.moves)
        assert not any(s & white == s or s & black == s for s in game.set_masks)
        rule = answer(game, white, black)
        assert (rule.verdict, game.cells(rule.moves)) == (problem.verdict, "".join(problem.solution))
        assert sound(fresh, rule, white, black)
        own, opp = sides(white, black)
        assert fresh.value(own, opp) == problem.game_value
        values = fresh.move_values(own, opp)
        assert game.cells(sum(m for m, v in values.items() if v == problem.game_value)) == \
            "".join(problem.optimal_moves)
        record = problem.record()
        assert record["next_player"] == ("Alice", "Bob")[len(problem.moves) % 2]
        assert record["solution_list"] == list(problem.solution)
        assert record["is_unique_solution"] == (len(problem.solution) == 1)


def test_train_and_eval_splits_do_not_overlap():
    game = get_game("dTTT")
    train = {_key(game, p.moves) for p in generate(game, 150, seed=0, split="train")}
    held = {_key(game, p.moves) for p in generate(game, 40, seed=0, split="eval")}
    assert len(train) == 150 and len(held) == 40 and not train & held
    assert all(split_of(game, k) == "eval" for k in held)
    with pytest.raises(ValueError):
        next(generate(game, 1, split="test"))


def test_small_space_is_exhausted_exactly():
    game = get_game("oTTT")
    every = list(enumerate_problems(game))
    keys = [_key(game, p.moves) for p in every]
    assert len(set(keys)) == len(keys)
    packed = [white | black << game.n for white, black in (stones(game, p.moves) for p in every)]
    assert keys == packed  # each class is listed as its canonical member
    generated = list(generate(game, 10_000, seed=5))
    assert {_key(game, p.moves) for p in generated} == set(keys)


@pytest.mark.parametrize("name", ["oTTT", "cTTT"])
def test_problem_space_holds_the_published_data(name):
    """The published set (unique up to symmetry) fits in our space, class by class."""
    game = get_game(name)
    problems = list(enumerate_problems(game))
    verdicts = Counter(p.verdict for p in problems)
    for verdict, count in game.verdict_counts:
        assert verdicts[verdict] >= count
    assert sum(len(p.solution) > 1 for p in problems) >= game.unique_counts[1]
