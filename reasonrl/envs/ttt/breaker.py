"""Maker-Breaker relaxation: a fast proof that a player cannot win a TTT-Bench game.

Paper: TTT-Bench (arXiv 2506.10209) has no solver; this file serves ours (solver.py).

In the real game both players try to complete a set. Relax it: the maker tries to complete one
of its sets and the breaker only tries to stop that. If the breaker wins the relaxed game, the
maker cannot win the real one: the breaker plays its blocking strategy there, which ignores the
maker's stones elsewhere and only ends sooner if the breaker completes a set of its own.

The relaxed game is much smaller (only the maker's live sets matter; stones elsewhere are
passes, which never help either side of a Maker-Breaker game) and has classical wins for the
breaker that need no search:
- Erdos-Selfridge: with potential P = sum over live sets of 2^-(empty cells), the breaker wins
  if P < 1 when it is to move, or P < 1/2 when the maker is to move;
- a pairing strategy: disjoint pairs of empty cells such that every live set holds a pair; the
  breaker answers each maker stone with the other cell of its pair.
A double threat (forks.py) wins for the maker, and the breaker's only moves are the ones that
stop all the maker's double threats at once.
"""

from __future__ import annotations

from .forks import UNCONSTRAINED, defences, double_threat
from .games import Game

Sets = tuple[tuple[int, int], ...]  # (bit of the set's index, mask of its cells), live sets only

# Past this many live sets a pairing almost never exists (measured on sTTT) and the
# backtracking search for one costs more than it saves.
PAIRING_MAX_SETS = 10


class MakerBreaker:
    """Whether the maker can complete a set against a pure blocker; results are cached."""

    def __init__(self, game: Game):
        self._sets: Sets = tuple((1 << i, s) for i, s in enumerate(game.set_masks))
        self._n = game.n
        self._size = max(s.bit_count() for s in game.set_masks)
        self._table: dict[int, bool] = {}
        self.nodes = 0

    def clear(self) -> None:
        self._table.clear()

    def __len__(self) -> int:
        return len(self._table)

    def maker_wins(self, maker: int, breaker: int, maker_moves: bool) -> bool:
        return self.search(maker, tuple(x for x in self._sets if not x[1] & breaker), maker_moves)

    def search(self, maker: int, sets: Sets, maker_moves: bool) -> bool:
        """`sets` are the sets holding no breaker stone; none is complete yet."""
        self.nodes += 1
        size = self._size
        alive = cells = threats = two = fork = potential = 0
        pairs = []  # the two empty cells of each set two stones short
        for bit, s in sets:
            rest = s & ~maker
            if not rest & (rest - 1):  # one stone short
                if maker_moves:
                    return True
                threats |= rest
            else:
                low = rest & -rest
                if not (rest ^ low) & (rest ^ low) - 1:  # two short
                    fork |= two & rest
                    two |= rest
                    pairs.append(rest)
            alive |= bit
            cells |= s
            potential += 1 << (size - rest.bit_count())  # 2^size * 2^-(empty cells)
        if threats:
            if threats & (threats - 1):
                return True
            return self.search(maker, tuple(x for x in sets if not x[1] & threats), True)
        if potential < 1 << (size - 1 if maker_moves else size):
            return False
        if maker_moves and fork and double_threat(fork, pairs):
            return True
        key = (alive << self._n | maker & cells) << 1 | maker_moves
        known = self._table.get(key)
        if known is None:
            if maker_moves:
                # A pairing also wins for the breaker when it is to move, but there it was
                # almost never found (measured on sTTT): look for one only here.
                if len(sets) <= PAIRING_MAX_SETS and _has_pairing(
                    sorted((s & ~maker for _, s in sets), key=int.bit_count)
                ):
                    known = False
                else:
                    known = self._maker_move(maker, sets, cells & ~maker, fork, two)
            else:
                stoppers = defences(fork, pairs) if fork else UNCONSTRAINED
                known = self._breaker_move(maker, sets, stoppers)
            self._table[key] = known
        return known

    def _maker_move(self, maker: int, sets: Sets, empty: int, fork: int, two: int) -> bool:
        for group in (fork, two & ~fork, empty & ~two):  # double threats, threats, the rest
            while group:
                m = group & -group
                group ^= m
                if self.search(maker | m, sets, False):
                    return True
        return False

    def _breaker_move(self, maker: int, sets: Sets, allowed: int) -> bool:
        """Whether every breaker move in `allowed` loses (others leave a double threat)."""
        # Try first the cell the Erdos-Selfridge strategy picks: the most potential through it.
        weight: dict[int, int] = {}
        for _, s in sets:
            rest = s & ~maker & allowed
            w = 1 << (self._size - (s & ~maker).bit_count())
            while rest:
                low = rest & -rest
                rest ^= low
                weight[low] = weight.get(low, 0) + w
        for m in sorted(weight, key=weight.__getitem__, reverse=True):
            if not self.search(maker, tuple(x for x in sets if not x[1] & m), True):
                return False
        return True


def _has_pairing(rests: list[int], start: int = 0, used: int = 0, pairs: tuple[int, ...] = ()) -> bool:
    """Whether disjoint pairs of cells can be chosen so that every set in `rests` holds one.

    `rests` are the empty cells of the maker's live sets, fewest first; backtracking that
    extends `pairs` (which cover the cells `used`) for each set from `start` on not yet covered.
    """
    for i in range(start, len(rests)):
        rest = rests[i]
        for p in pairs:
            if p & rest == p:
                break
        else:
            free = rest & ~used
            while free:
                a = free & -free
                free ^= a
                others = free
                while others:
                    b = others & -others
                    others ^= b
                    if _has_pairing(rests, i + 1, used | a | b, pairs + (a | b,)):
                        return True
            return False
    return True
