"""One TTT-Bench problem: a move history, its published answer, and its exact game value.

Paper: TTT-Bench (arXiv 2506.10209); record fields as in the dataset amd/TTT-Bench, keys in the
published order (including its spelling "currect_board_visualization"), followed by ours:
`game`, `moves`, `solution_list`, `game_value`, `optimal_moves`.

Departure: the paper labels problems with its heuristic rule only. We also solve each one and
keep it only if the rule's answer is sound under perfect play (`check`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import text
from .games import Game, bits, get_game
from .rules import Answer, answer, sides
from .solver import Solver


@dataclass(frozen=True)
class Problem:
    game: str
    moves: tuple[str, ...]  # labels in play order, Alice first
    verdict: str  # "win", "blocked" or "fork"
    solution: tuple[str, ...]  # labels, in label order
    game_value: int  # for the player to move: 1 win, 0 draw, -1 loss
    optimal_moves: tuple[str, ...]  # every move that keeps `game_value`
    problem_number: int = 0

    @property
    def next_player(self) -> str:
        return text.player(len(self.moves))

    def record(self) -> dict[str, Any]:
        game = get_game(self.game)
        return {
            "problem": text.problem_text(game, list(self.moves)),
            "solution": text.solution_string(list(self.solution)),
            "is_unique_solution": len(self.solution) == 1,
            "verdict": self.verdict,
            "next_player": self.next_player,
            "currect_board_visualization": text.drawing(game, list(self.moves)),
            "board_visualization": text.drawing(game),
            "problem_number": self.problem_number,
            "game": self.game,
            "moves": [[text.player(i), label] for i, label in enumerate(self.moves)],
            "solution_list": list(self.solution),
            "game_value": self.game_value,
            "optimal_moves": list(self.optimal_moves),
        }


def stones(game: Game, moves: list[str] | tuple[str, ...]) -> tuple[int, int]:
    """(white, black) masks after `moves`."""
    white = sum(1 << game.labels.index(label) for label in moves[0::2])
    black = sum(1 << game.labels.index(label) for label in moves[1::2])
    return white, black


def sound(solver: Solver, rule: Answer, white: int, black: int) -> bool:
    """Whether the rule's answer holds under perfect play.

    "win" and "fork": every solution move wins (value 1 for the mover after it), so each is
    optimal. "blocked": every other move loses (-1), so the block is forced.
    """
    own, opp = sides(white, black)
    if rule.verdict == "blocked":
        others = solver.game.full & ~(own | opp | rule.moves)
        return all(solver.move_value(own, opp, m) == -1 for m in bits(others))
    return all(solver.move_value(own, opp, m) == 1 for m in bits(rule.moves))


def check(solver: Solver, rule: Answer, white: int, black: int) -> tuple[int, int] | None:
    """(game value, optimal-move mask) if the rule's answer is sound, else None."""
    if not sound(solver, rule, white, black):
        return None
    own, opp = sides(white, black)
    value = solver.value(own, opp)
    if rule.verdict == "blocked":  # the block is the only move that does not lose at once
        return value, rule.moves if value > -1 else solver.game.full & ~(own | opp)
    return value, solver.optimal_moves(own, opp, value)


def solve(game: Game, solver: Solver, moves: tuple[str, ...], number: int = 0) -> Problem | None:
    """The problem after `moves`, or None if it has no verdict or an unsound answer."""
    white, black = stones(game, moves)
    rule = answer(game, white, black)
    if rule is None:
        return None
    checked = check(solver, rule, white, black)
    if checked is None:
        return None
    value, optimal = checked
    return Problem(
        game=game.name,
        moves=tuple(moves),
        verdict=rule.verdict,
        solution=tuple(game.cells(rule.moves)),
        game_value=value,
        optimal_moves=tuple(game.cells(optimal)),
        problem_number=number,
    )
