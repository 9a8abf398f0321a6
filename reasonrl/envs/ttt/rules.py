"""The TTT-Bench answer rule: win, else block, else fork.

Paper: TTT-Bench (arXiv 2506.10209), Section 3.1 and Algorithm 1. The verdicts are checked in
priority order for the player to move:
1. "win": moves that complete a winning set; all of them are the solution.
2. "blocked": the opponent has exactly one immediate winning move; occupying it is the solution.
3. "fork": moves after which the player has >= 2 winning sets that are each one stone short
   and hold no opponent stone; all of them are the solution.
Otherwise the position has no verdict.

This is the published rule taken literally, a heuristic. Where it disagrees with perfect play
(a "fork" whose two sets miss the same cell, or a fork played while the opponent has two
immediate wins) the generator drops the problem after asking the exact solver (solver.py).

Alice (white) moves first, so the player to move is Alice when both have as many stones.
"""

from __future__ import annotations

from dataclasses import dataclass

from .games import Game


@dataclass(frozen=True)
class Answer:
    verdict: str  # "win", "blocked" or "fork"
    moves: int  # mask of the solution cells


def sides(white: int, black: int) -> tuple[int, int]:
    """(stones of the player to move, stones of the opponent)."""
    return (white, black) if white.bit_count() == black.bit_count() else (black, white)


def has_line(game: Game, stones: int) -> bool:
    """Whether `stones` fill a whole winning set (the game would be over)."""
    return any(s & stones == s for s in game.set_masks)


def winning_cells(game: Game, own: int, opp: int) -> int:
    """Empty cells where `own` completes a winning set that holds no `opp` stone."""
    cells = 0
    for s in game.set_masks:
        if not s & opp:
            rest = s & ~own
            if rest and not rest & (rest - 1):
                cells |= rest
    return cells


def fork_cells(game: Game, own: int, opp: int) -> int:
    """Empty cells after which `own` has two or more winning sets one stone short.

    Assumes `own` has no one-short set yet (else the verdict is "win"), so every such set
    goes through the cell played: the sets that were two short, hold no `opp` stone and
    contain it. A set counts once per cell; two sets may miss the same cell (published rule).
    """
    once = twice = 0
    for s in game.set_masks:
        if not s & opp:
            rest = s & ~own
            low = rest & -rest
            if rest ^ low and not (rest ^ low) & (rest ^ low) - 1:  # exactly two empty cells
                twice |= once & rest
                once |= rest
    return twice


def answer(game: Game, white: int, black: int) -> Answer | None:
    """The published answer for the player to move, or None when no verdict applies."""
    own, opp = sides(white, black)
    wins = winning_cells(game, own, opp)
    if wins:
        return Answer("win", wins)
    threats = winning_cells(game, opp, own)
    if threats and not threats & (threats - 1):
        return Answer("blocked", threats)
    forks = fork_cells(game, own, opp)
    if forks:
        return Answer("fork", forks)
    return None
