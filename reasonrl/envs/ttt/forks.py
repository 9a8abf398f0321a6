"""Double threats: the exact, search-free facts about forks that the solvers lean on.

Paper: TTT-Bench (arXiv 2506.10209) defines a fork by counting sets (rules.py). Here a fork is
what wins: a move after which a player has two sets one stone short on *different* cells. For
sets of three cells the two agree (two lines sharing their two empty cells are one line); for
sets of four (cTTT, sTTT) two sets can miss the same pair of cells, and then playing one of
them makes a single threat.

Both functions take the player's "pairs": the two empty cells of each of its sets that are two
stones short and hold no enemy stone.
"""

from __future__ import annotations

from .games import bits

UNCONSTRAINED = -1  # every cell (as a mask) when the player has no double threat to stop


def completions(fork: int, pairs: list[int]) -> int:
    """The cells a stone at `fork` would leave one stone short of a set."""
    cells = 0
    for pair in pairs:
        if pair & fork:
            cells |= pair ^ fork
    return cells


def double_threat(candidates: int, pairs: list[int]) -> bool:
    """Whether a stone on one of `candidates` makes threats on two different cells."""
    for f in bits(candidates):
        cells = completions(f, pairs)
        if cells & (cells - 1):
            return True
    return False


def defences(candidates: int, pairs: list[int]) -> int:
    """The cells where an enemy stone leaves the player no double threat (mask).

    A double threat at f is stopped by a stone on f, or, when it threatens exactly two cells,
    on one of them; any other stone leaves it in place. UNCONSTRAINED if there is none to stop,
    0 if no single stone stops them all.
    """
    cells = UNCONSTRAINED
    for f in bits(candidates):
        threatened = completions(f, pairs)
        if threatened & (threatened - 1):
            cells &= f | threatened if threatened.bit_count() == 2 else f
    return cells
