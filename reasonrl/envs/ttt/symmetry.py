"""Canonical forms of TTT-Bench positions under each board's symmetry group.

Paper: TTT-Bench (arXiv 2506.10209). The paper says nothing of symmetry; we use it so that
generated problems are unique up to relabelling and the solver's table is shared between
symmetric positions.

A relabelling of a mask is computed with lookup tables, one per CHUNK-bit slice of the board:
the image is the OR of the table entries of the slices (one or two lookups per mask on these
boards), not a loop over cells.
"""

from __future__ import annotations

from functools import lru_cache

from .games import Game

CHUNK = 13  # bits per lookup table: 2^13 entries, one slice for boards up to 13 cells


class Symmetry:
    """Relabels and canonicalises positions (pairs of masks) of one game."""

    def __init__(self, game: Game):
        self.n = game.n
        self.size = len(game.perms)
        self._tables = tuple(_slice_tables(perm) for perm in game.perms)
        self._single = len(self._tables[0]) == 1
        if self._single:  # small boards: for every mask b, its smallest image and who makes it
            flat = [t for (t,) in self._tables]
            self._smallest = []
            for b in range(1 << self.n):
                low = min(t[b] for t in flat)
                self._smallest.append((low, tuple(t for t in flat if t[b] == low)))

    def image(self, g: int, mask: int) -> int:
        """`mask` relabelled by symmetry number `g` (the order of `game.symmetries`)."""
        out = 0
        for table in self._tables[g]:
            out |= table[mask & (len(table) - 1)]
            mask >>= CHUNK
        return out

    def pack(self, a: int, b: int) -> int:
        return a | b << self.n

    def images(self, a: int, b: int) -> list[int]:
        """The packed pair under every symmetry."""
        n = self.n
        if self._single:
            return [t[a] | t[b] << n for (t,) in self._tables]
        a0, a1, b0, b1 = a & _LOW, a >> CHUNK, b & _LOW, b >> CHUNK
        return [t0[a0] | t1[a1] | (t0[b0] | t1[b1]) << n for t0, t1 in self._tables]

    def canonical(self, a: int, b: int) -> int:
        """The smallest packed image: equal for two pairs iff a symmetry maps one onto the other."""
        if self._single:  # b's image is the high half: only the symmetries minimising it compete
            low, tables = self._smallest[b]
            return min(t[a] for t in tables) | low << self.n
        return min(self.images(a, b))

    def stabilizer(self, a: int, b: int) -> int:
        """How many symmetries fix the pair (its orbit has size / stabilizer members)."""
        return self.images(a, b).count(self.pack(a, b))


_LOW = (1 << CHUNK) - 1


def _slice_tables(perm: tuple[int, ...]) -> tuple[list[int], ...]:
    tables = []
    for start in range(0, len(perm), CHUNK):
        images = [1 << p for p in perm[start : start + CHUNK]]
        table = [0] * (1 << len(images))
        for value in range(1, len(table)):
            low = value & -value  # table[value] = table[value without its lowest bit] | image
            table[value] = table[value ^ low] | images[low.bit_length() - 1]
        tables.append(table)
    if len(tables) > 2:
        raise ValueError("boards of more than 2 * CHUNK cells are not supported")
    return tuple(tables)


@lru_cache(maxsize=None)
def symmetry_of(game: Game) -> Symmetry:
    """One shared instance per game (the tables take a moment to build)."""
    return Symmetry(game)
