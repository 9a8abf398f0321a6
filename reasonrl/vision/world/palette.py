"""The shapes world's colours: 8 object colours far apart, and backgrounds kept far from all of them.

Object pixels are exactly palette colours (no anti-aliasing), and every background colour is a
near-grey: a grey level in [BACKGROUND_MIN, BACKGROUND_MAX] plus a tint of at most BACKGROUND_TINT
per channel. Plain and linear-gradient backgrounds only mix such colours, and that set is convex,
so no background pixel comes closer than about 78 (RGB Euclidean) to a palette colour while
palette colours are at least 87 apart. A pixel within QUANTISE_RADIUS of a palette colour is
therefore that colour, anything else is background (tests/vision/test_world_palette.py).
"""

from __future__ import annotations

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 170, 60),
    "cyan": (30, 200, 220),
    "blue": (40, 70, 225),
    "purple": (140, 50, 200),
    "pink": (245, 110, 190),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
PALETTE_RGB = np.array([PALETTE[c] for c in COLOURS], dtype=np.int32)  # (8, 3)

BACKGROUND_MIN, BACKGROUND_MAX = 40, 215  # grey levels of background colours
BACKGROUND_TINT = 10  # largest per-channel departure of a background colour from its grey
MIN_GRADIENT_CONTRAST = 50  # grey-level difference between a gradient's two ends
QUANTISE_RADIUS = 32.0  # a pixel this close to a palette colour is that colour


def quantise(image: np.ndarray, radius: float = QUANTISE_RADIUS) -> np.ndarray:
    """Palette index of each pixel, or -1 for background. (H, W, 3) uint8 -> (H, W) int8."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"quantise: image must be (H, W, 3), got shape {image.shape}")
    pixels = image.reshape(-1, 3).astype(np.int32)
    dist2 = sum((pixels[:, c:c + 1] - PALETTE_RGB[:, c]) ** 2 for c in range(3))  # (H*W, 8), exact integers
    index = dist2.argmin(1)
    index[dist2.min(1) > radius * radius] = -1
    return index.astype(np.int8).reshape(image.shape[:2])


def sample_background_colour(rng: np.random.Generator, grey: int | None = None) -> tuple[int, int, int]:
    """A near-grey colour: `grey` (or a random grey level) plus a small random tint."""
    level = int(rng.integers(BACKGROUND_MIN, BACKGROUND_MAX + 1)) if grey is None else grey
    tint = rng.integers(-BACKGROUND_TINT, BACKGROUND_TINT + 1, size=3)
    return tuple(int(v) for v in np.clip(level + tint, 0, 255))


def is_background_colour(rgb) -> bool:
    """Whether `rgb` lies in the set backgrounds are drawn from (grey level and tint bounds)."""
    values = np.asarray(rgb, dtype=np.int32)
    low, high = int(values.min()), int(values.max())
    # some grey g in range has |v - g| <= tint for every channel
    g_low, g_high = max(high - BACKGROUND_TINT, BACKGROUND_MIN), min(low + BACKGROUND_TINT, BACKGROUND_MAX)
    return values.shape == (3,) and g_low <= g_high
