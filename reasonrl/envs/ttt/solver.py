"""Exact solver for the TTT-Bench games: negamax, alpha-beta, transposition table, symmetry.

Paper: TTT-Bench (arXiv 2506.10209) labels problems with a heuristic rule (rules.py) and has no
solver. This one gives the game-theoretic value under perfect play, which the generator uses to
check every answer the heuristic gives and to record each problem's exact value.

Values are from the side to move: 1 win, 0 draw (board full, or no set left that either player
can still complete), -1 loss. The game is the same for both players, so a position is a pair of
masks (own, opp) for the side to move. The table holds bounds keyed by the canonical form
under the board's symmetries (symmetry.py) while few stones are down, by the raw pair deeper.

Exact reductions at every node, in this order:
- the mover completes a set now: 1;
- the opponent has two immediate wins: -1; exactly one: the block is the only move searched;
- the mover has a double threat (forks.py; the opponent has no win to play first): 1;
- only one player has a set free of enemy stones: the game is the Maker-Breaker game
  (breaker.py), solved there;
- a move that neither makes a threat nor stops every double threat of the opponent loses, so
  only the others are searched (-1 if there are none);
- a cell in no live set is never searched: a stone there is a pass, and a pass is never
  better than a move, since an extra stone never hurts its owner (imagine it away and, when
  the plan asks for that cell, play anywhere; a set it would complete is already complete);
- a player who loses the Maker-Breaker relaxation cannot win; asked only when the answer
  decides the node.
"""

from __future__ import annotations

from .breaker import MakerBreaker, Sets
from .forks import UNCONSTRAINED, defences, double_threat
from .games import Game, bits
from .symmetry import symmetry_of


class Solver:
    """Exact values of positions of one game; the tables persist across calls."""

    def __init__(self, game: Game, symmetry: bool = True, max_entries: int = 500_000):
        self.game = game
        self._sets: Sets = tuple((1 << i, s) for i, s in enumerate(game.set_masks))
        self._full = game.full
        self._n = game.n
        self._canonical = symmetry_of(game).canonical if symmetry else None
        # Symmetric twins are common only near the start (problems come from few stones);
        # deeper, the raw position is the key. Both are exact keys, so they share one table.
        self._symmetric_stones = max(game.move_counts) + 2
        self._relaxed = MakerBreaker(game)
        # an entry packs bounds (lower, upper), each in {-1, 0, 1}, as 3 * (lower + 1) + upper + 1
        self._table: dict[int, int] = {}
        self._history: dict[int, int] = {}  # cell -> cutoffs it caused (move ordering)
        self._max_entries = max_entries
        self.nodes = 0

    def value(self, own: int, opp: int) -> int:
        """Value for the side to move, holding `own`; no set may be complete yet."""
        self._check(own, opp)
        return self._root(own, opp, -1, 1)

    def move_value(self, own: int, opp: int, move: int) -> int:
        """Value for the mover of playing the empty cell `move` (a one-bit mask)."""
        self._check(own, opp)
        if move & (move - 1) or not move & self._full & ~(own | opp):
            raise ValueError("move must be one empty cell")
        return self._play(own, opp, move, -1, 1)

    def _check(self, own: int, opp: int) -> None:
        if own & opp or (own | opp) & ~self._full:
            raise ValueError("own and opp must be disjoint masks of the board's cells")
        if any(s & own == s or s & opp == s for _, s in self._sets):
            raise ValueError("the game is already over: a winning set is complete")

    def move_values(self, own: int, opp: int) -> dict[int, int]:
        return {m: self.move_value(own, opp, m) for m in bits(self._full & ~(own | opp))}

    def optimal_moves(self, own: int, opp: int, value: int | None = None) -> int:
        """Mask of the moves that keep the game value (`value` if the caller knows it)."""
        best = self.value(own, opp) if value is None else value
        moves = 0
        for m in bits(self._full & ~(own | opp)):
            if self._play(own, opp, m, best - 1, best) >= best:  # null window: worth >= best?
                moves |= m
        return moves

    def _play(self, own: int, opp: int, move: int, alpha: int, beta: int) -> int:
        own |= move
        if any(s & own == s for _, s in self._sets if s & move):
            return 1
        return -self._root(opp, own, -beta, -alpha)

    def _root(self, own: int, opp: int, alpha: int, beta: int) -> int:
        if max(len(self._table), len(self._relaxed)) > self._max_entries:  # entries are a cache
            self._table.clear()
            self._relaxed.clear()
        live = tuple(x for x in self._sets if not (x[1] & own and x[1] & opp))
        return self._search(own, opp, live, alpha, beta)

    def _ordered(self, candidates: int, *groups: int) -> list[int]:
        """Candidate moves: forcing groups first, each by how often the move cut off before."""
        moves = []
        key = self._history.get
        for group in groups + (candidates,):
            group &= candidates
            candidates ^= group
            if group:
                moves += sorted(bits(group), key=lambda m: -key(m, 0))
        return moves

    def _search(self, own: int, opp: int, sets: Sets, alpha: int, beta: int) -> int:
        """Fail-soft negamax; `sets` are the sets that hold stones of at most one colour."""
        self.nodes += 1
        empty = self._full & ~(own | opp)
        if not empty or not sets:
            return 0
        theirs = my_live = their_live = 0
        my_two = my_fork = their_two = their_fork = 0  # cells that make one / two threats
        my_pairs, their_pairs = [], []  # empty cells of each set two stones short
        for _, s in sets:
            if not s & opp:
                rest = s & ~own
                if not rest & (rest - 1):
                    return 1  # one stone short: the mover completes it now
                my_live |= s
                low = rest & -rest
                if not (rest ^ low) & (rest ^ low) - 1:
                    my_fork |= my_two & rest
                    my_two |= rest
                    my_pairs.append(rest)
            if not s & own:
                rest = s & ~opp
                their_live |= s
                if not rest & (rest - 1):
                    theirs |= rest
                else:
                    low = rest & -rest
                    if not (rest ^ low) & (rest ^ low) - 1:
                        their_fork |= their_two & rest
                        their_two |= rest
                        their_pairs.append(rest)
        if theirs:
            if theirs & (theirs - 1):
                return -1
            return -self._search(opp, own | theirs, _kill(sets, theirs, opp), -beta, -alpha)
        if my_fork and double_threat(my_fork, my_pairs):
            return 1  # two threats on different cells; the opponent has no win to play first
        if not their_live:  # only the mover can still win: the relaxation is the game
            return int(self._relaxed.search(own, tuple(x for x in sets if not x[1] & opp), True))
        if not my_live:
            return -int(self._relaxed.search(opp, tuple(x for x in sets if not x[1] & own), False))

        # A move that neither threatens nor stops every double threat of the opponent loses.
        live = my_live | their_live
        candidates = live & empty
        stoppers = defences(their_fork, their_pairs) if their_fork else UNCONSTRAINED
        if stoppers != UNCONSTRAINED:
            candidates &= stoppers | my_two
            if not candidates:
                return -1

        lower, upper = -1, 1
        key = own | opp << self._n
        if self._canonical and (own | opp).bit_count() <= self._symmetric_stones:
            key = self._canonical(own, opp)
        entry = self._table.get(key)
        if entry is not None:
            lower, upper = entry // 3 - 1, entry % 3 - 1
        if lower < upper and lower < beta and upper > alpha:
            # Ask the relaxation only when its answer can end the node.
            if upper == 1 and alpha >= 0:
                if not self._relaxed.search(own, tuple(x for x in sets if not x[1] & opp), True):
                    upper = 0
            if lower == -1 and beta <= 0 and upper > alpha and stoppers == UNCONSTRAINED:
                if not self._relaxed.search(opp, tuple(x for x in sets if not x[1] & own), False):
                    lower = 0
        if lower == upper or lower >= beta or upper <= alpha:
            self._table[key] = 3 * (lower + 1) + upper + 1
            return lower if lower == upper or lower >= beta else upper

        alpha, beta = max(alpha, lower), min(beta, upper)
        alpha0 = alpha
        best = -2
        history = self._history
        for m in self._ordered(candidates, my_fork, their_fork, my_two, their_two):
            v = -self._search(opp, own | m, _kill(sets, m, opp), -beta, -alpha)
            if v > best:
                best = v
                if v > alpha:
                    alpha = v
                    if alpha >= beta:
                        history[m] = history.get(m, 0) + 1
                        break

        if best <= alpha0:
            upper = best
        elif best >= beta:
            lower = best
        else:
            lower = upper = best
        self._table[key] = 3 * (lower + 1) + upper + 1
        return best


def _kill(sets: Sets, move: int, other: int) -> Sets:
    """The sets still live after a stone at `move`, when `other` holds the opponent's stones."""
    return tuple(x for x in sets if not (x[1] & move and x[1] & other))

