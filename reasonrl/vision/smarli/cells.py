"""Image tokens for SMARLI-mini: a deterministic cell codebook instead of a learned VQ.

Show-o (SMARLI's base) reads MAGVIT-v2 codes. Here each cell of a grid x grid split of a
palette-exact image (gen/images.py) is one token: `EMPTY` when the cell shows only background,
else (shape of the cell's object pixels, colour): the 16-bit occupancy pattern of a 4 x 4 cell,
looked up in a codebook of the patterns seen most often in training scenes (a pattern outside
it becomes its nearest codebook pattern by Hamming distance), and the cell's most common palette
colour. Token id = 1 + pattern * 8 + colour; decoding paints the pattern in that colour on a
plain grey background, so a scene's image round-trips exactly when its patterns are in the
codebook and no cell holds two colours (the research note's "deterministic quantiser" option).
"""

from __future__ import annotations

import numpy as np

from reasonrl.vision.world import COLOURS, PALETTE, quantise

EMPTY = 0
BACKGROUND = (128, 128, 128)
NUM_COLOURS = len(COLOURS)
PALETTE_RGB = np.array([PALETTE[c] for c in COLOURS], dtype=np.uint8)


def cells(image: np.ndarray, cell: int) -> np.ndarray:
    """(S, S, 3) uint8 -> (G * G, cell * cell) palette index per pixel (-1 background), row-major cells."""
    q = quantise(image)
    g = q.shape[0] // cell
    return q.reshape(g, cell, g, cell).transpose(0, 2, 1, 3).reshape(g * g, cell * cell)


def pattern_codes(fg: np.ndarray) -> np.ndarray:
    """(..., cell * cell) bool occupancy -> (...,) int64 codes, pixel k on bit k."""
    return (fg.astype(np.int64) << np.arange(fg.shape[-1])).sum(-1)


def pattern_bits(code: int, size: int) -> np.ndarray:
    return (code >> np.arange(size)) & 1 == 1


def fit_patterns(images: np.ndarray, cell: int, size: int) -> tuple[int, ...]:
    """The `size` most common non-empty cell patterns of the images (ties: smaller code first)."""
    codes = np.concatenate([pattern_codes(cells(image, cell) >= 0) for image in images])
    found, counts = np.unique(codes[codes > 0], return_counts=True)
    order = np.lexsort((found, -counts))  # most common first, ties by smaller code
    return tuple(int(c) for c in found[order][:size])


class CellCodebook:
    def __init__(self, patterns: tuple[int, ...], cell: int = 4):
        self.cell, self.patterns = cell, tuple(patterns)
        self.bits = np.stack([pattern_bits(p, cell * cell) for p in patterns])  # (M, cell*cell)
        self.sorted = np.argsort(np.array(patterns, dtype=np.int64))
        self.sorted_codes = np.array(patterns, dtype=np.int64)[self.sorted]

    @property
    def vocab_size(self) -> int:
        return 1 + len(self.patterns) * NUM_COLOURS

    def encode(self, image: np.ndarray) -> np.ndarray:
        """(S, S, 3) uint8 -> (G * G,) int64 tokens."""
        c = cells(image, self.cell)  # (G*G, cell*cell)
        fg = c >= 0
        colour = (c[..., None] == np.arange(NUM_COLOURS)).sum(1).argmax(1)  # most common colour (ties: lower)
        out = 1 + self.pattern_ids(fg) * NUM_COLOURS + colour
        return np.where(fg.any(1), out, EMPTY).astype(np.int64)

    def pattern_ids(self, fg: np.ndarray) -> np.ndarray:
        """(n, cell*cell) occupancy -> (n,) codebook index, the nearest by Hamming distance when absent."""
        codes = pattern_codes(fg)
        at = np.clip(np.searchsorted(self.sorted_codes, codes), 0, len(self.sorted_codes) - 1)
        ids = self.sorted[at]
        missing = self.sorted_codes[at] != codes
        if missing.any():
            ids[missing] = (self.bits[None] != fg[missing][:, None]).sum(-1).argmin(1)
        return ids

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """(G * G,) tokens -> (S, S, 3) uint8 (ids outside the vocabulary paint nothing)."""
        tokens = np.asarray(tokens).astype(np.int64)
        g, c = int(round(len(tokens) ** 0.5)), self.cell
        out = np.empty((g * g, c * c, 3), dtype=np.uint8)
        out[:] = BACKGROUND
        for j, t in enumerate(tokens):
            if 1 <= t < self.vocab_size:
                pattern, colour = divmod(int(t) - 1, NUM_COLOURS)
                out[j][self.bits[pattern]] = PALETTE_RGB[colour]
        return out.reshape(g, g, c, c, 3).transpose(0, 2, 1, 3, 4).reshape(g * c, g * c, 3)
