"""Unlimited fresh TTT-Bench problems: sampled, labelled by the published rule, solved exactly.

Paper: TTT-Bench (arXiv 2506.10209) generates problems programmatically but released only the
412 problems, not the generator. Ours follows the published settings by default: the number
of stones already played (`Game.move_counts`) and the mix of verdicts and of single/multiple
answers (`Game.verdict_counts`, `Game.unique_counts`).

Departures (the paper does not say how its positions were drawn):
- Positions are uniform over the legal ones with a published move count (the count itself
  uniform): random play conditioned on nobody having won, which is the same distribution.
- Problems are unique up to the board's symmetries (symmetry.py); move order is not part of
  a problem's identity.
- A problem is kept only if its rule answer is sound under perfect play (problem.check).
- The answer mix is met as a running quota: problem i is drawn from the (verdict, unique)
  class furthest behind its share, so any prefix follows the mix closely and the published
  size reproduces the published counts. How multi-answer problems split between "win" and
  "fork" is unknown; `published_mix` infers the most even split consistent with both
  published marginals.
- The train and eval splits are fixed by a hash of the canonical position (EVAL_PERCENT).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import Counter, deque
from typing import Iterator

from .games import VERDICTS, Game, get_game
from .problem import Problem, solve
from .rules import Answer, answer, has_line, sides, winning_cells
from .solver import Solver
from .symmetry import symmetry_of

EVAL_PERCENT = 10  # share of canonical positions that belong to the eval split
MAX_MISSES = 20_000  # samples without a new problem of a class before it counts as exhausted
POOL_SIZE = 2_000  # problems of other classes kept aside while looking for one class

Cell = tuple[str, bool]  # (verdict, is_unique_solution)


def published_mix(game: Game, exclude: frozenset[Cell] = frozenset()) -> dict[Cell, float]:
    """Share of each (verdict, unique) class: the published marginals, joined.

    The paper gives only the two marginals. Classes that cannot occur are set to zero ("blocked"
    always has one answer; `exclude`; a "win" with several answers where the player to move
    has too few stones, see `_multi_win_possible`), and iterative proportional fitting finds
    the most even table with both marginals. For oTTT, cTTT and sTTT this puts every
    multi-answer problem in "fork", as it must be in the published data too.
    """
    verdicts = dict(game.verdict_counts)
    unique = {True: game.unique_counts[0], False: game.unique_counts[1]}
    cells = [(v, u) for v in verdicts for u in unique if (v, u) not in exclude]
    cells = [c for c in cells if c != ("blocked", False)]
    if not _multi_win_possible(game):
        cells = [c for c in cells if c != ("win", False)]
    table = {c: 1.0 for c in cells}
    for _ in range(200):
        for targets, axis in ((verdicts, 0), (unique, 1)):
            for key, target in targets.items():
                row = [c for c in table if c[axis] == key]
                total = sum(table[c] for c in row)
                for c in row:
                    table[c] *= target / total if total else 0.0
    norm = sum(table.values())
    return {c: share / norm for c, share in table.items() if share > 0}


def _multi_win_possible(game: Game) -> bool:
    """Whether the player to move can hold two sets one stone short on different cells.

    That takes at least |S1 | S2| - 2 of its stones for two winning sets S1, S2; the player to
    move has floor(N/2) stones after N moves.
    """
    fewest = min(
        (a | b).bit_count() - 2 for a, b in itertools.combinations(game.set_masks, 2)
    )
    return max(game.move_counts) // 2 >= fewest


def split_of(game: Game, canonical: int) -> str:
    digest = hashlib.blake2b(f"{game.name}:{canonical}".encode(), digest_size=8).digest()
    return "eval" if int.from_bytes(digest, "big") % 100 < EVAL_PERCENT else "train"


class _Sampler:
    """Draws fresh positions and files them by class; each canonical position is used once."""

    def __init__(self, game: Game, rng: random.Random, split: str | None):
        self.game, self.rng, self.split = game, rng, split
        self.symmetry = symmetry_of(game)
        self.seen: set[int] = set()
        self.pools: dict[Cell, deque] = {}
        self._cells = list(range(game.n))

    def draw(self, cell: Cell) -> tuple[str, ...] | None:
        """Moves of a fresh position of class `cell`, or None once MAX_MISSES draws fail."""
        pool = self.pools.setdefault(cell, deque())
        for _ in range(MAX_MISSES):
            if pool:
                return pool.popleft()
            self._sample_once()
        return pool.popleft() if pool else None

    def _sample_once(self) -> None:
        game = self.game
        order = self._random_moves()
        white = black = 0
        for i, c in enumerate(order):
            if i % 2:
                black |= 1 << c
            else:
                white |= 1 << c
        for s in game.set_masks:
            if s & white == s or s & black == s:
                return  # the game was already over
        rule = _may_have_answer(game, white, black)
        if rule is None:
            return
        cell = (rule.verdict, not rule.moves & (rule.moves - 1))
        pool = self.pools.setdefault(cell, deque())
        if len(pool) >= POOL_SIZE:
            return
        key = self.symmetry.canonical(white, black)
        if key in self.seen or (self.split and split_of(game, key) != self.split):
            return
        self.seen.add(key)
        pool.append(tuple(game.labels[c] for c in order))

    def _random_moves(self) -> list[int]:
        """A uniform move count and move sequence, from one 96-bit draw (bias below 2^-50).

        A partial Fisher-Yates shuffle of `self._cells`, which may start in any order.
        """
        cells, n = self._cells, self.game.n
        r = self.rng.getrandbits(96)
        counts = self.game.move_counts
        k = counts[r % len(counts)]
        r //= len(counts)
        for i in range(k):
            j = i + r % (n - i)
            r //= n - i
            cells[i], cells[j] = cells[j], cells[i]
        return cells[:k]


def _may_have_answer(game: Game, white: int, black: int) -> Answer | None:
    """The rule's answer, or None if there is none or it cannot be sound.

    A "fork" while the opponent has an immediate win (then it has two: one would make the
    verdict "blocked") always loses; skipping it here saves asking the solver.
    """
    rule = answer(game, white, black)
    if rule is not None and rule.verdict == "fork":
        own, opp = sides(white, black)
        if winning_cells(game, opp, own):
            return None
    return rule


def generate(
    game: str | Game,
    n: int,
    seed: int = 0,
    split: str | None = None,
    mix: dict[Cell, float] | None = None,
    solver: Solver | None = None,
) -> Iterator[Problem]:
    """Up to `n` verified problems, unique up to symmetry; fewer if the classes run out.

    The same (game, n, seed, split, mix) always gives the same problems in the same order.
    """
    game = get_game(game) if isinstance(game, str) else game
    if split not in (None, "train", "eval"):
        raise ValueError(f"split must be 'train', 'eval' or None, not {split!r}")
    fit = mix is None
    mix = {cell: share for cell, share in (mix or published_mix(game)).items() if share > 0}
    for verdict, unique in mix:
        if verdict not in VERDICTS or not isinstance(unique, bool):
            raise ValueError(f"mix keys are (verdict in {VERDICTS}, is_unique: bool), got {(verdict, unique)}")
    solver = solver or Solver(game)
    sampler = _Sampler(game, random.Random(f"ttt:{game.name}:{seed}"), split)
    made: Counter = Counter()
    exhausted: set[Cell] = set()
    for number in range(n):
        problem = None
        while problem is None and mix:
            cell = _most_behind(mix, made, number)
            moves = sampler.draw(cell)
            if moves is None:  # exhausted: the other classes share its quota from now on
                exhausted.add(cell)
                mix = published_mix(game, frozenset(exhausted)) if fit else mix
                mix.pop(cell, None)
                continue
            problem = solve(game, solver, moves, number)
        if problem is None:
            return
        made[(problem.verdict, len(problem.solution) == 1)] += 1
        yield problem


def _most_behind(mix: dict[Cell, float], made: Counter, number: int) -> Cell:
    total = sum(mix.values())
    return max(mix, key=lambda cell: mix[cell] / total * (number + 1) - made[cell])


def enumerate_positions(game: Game) -> Iterator[tuple[tuple[int, ...], Answer]]:
    """(move order, rule answer) for every symmetry class of positions with a published move
    count, nobody having won, and an answer that may be sound (`_may_have_answer`).

    Each class appears once, as its canonical member; moves are Alice's cells then Bob's in
    label order, interleaved.
    """
    symmetry = symmetry_of(game)
    for count in game.move_counts:
        for white_cells in itertools.combinations(range(game.n), (count + 1) // 2):
            white = sum(1 << c for c in white_cells)
            if has_line(game, white):
                continue
            rest = [c for c in range(game.n) if not white >> c & 1]
            for black_cells in itertools.combinations(rest, count // 2):
                black = sum(1 << c for c in black_cells)
                if has_line(game, black):
                    continue
                rule = _may_have_answer(game, white, black)
                if rule is None or symmetry.canonical(white, black) != symmetry.pack(white, black):
                    continue
                order = [0] * count
                order[0::2], order[1::2] = white_cells, black_cells
                yield tuple(order), rule


def enumerate_problems(game: str | Game, solver: Solver | None = None) -> Iterator[Problem]:
    """Every problem of the published settings, one per symmetry class, with a sound answer."""
    game = get_game(game) if isinstance(game, str) else game
    solver = solver or Solver(game)
    number = 0
    for order, _ in enumerate_positions(game):
        problem = solve(game, solver, tuple(game.labels[c] for c in order), number)
        if problem is not None:
            number += 1
            yield problem
