"""Shape templates: the exact pixels of each shape at each size, and of its stripes.

Objects are never rotated and sit at whole-pixel offsets, so a (shape, extent) pair has exactly
one pixel mask: a pixel belongs to the shape when its centre lies inside the shape's outline in
an extent x extent square. Rendering pastes these templates, masks are exact, and every object of
a given shape and size has the same pixels wherever it is.

Sizes are classes (small, medium, large) with extents that are fixed fractions of the image side
(16, 24 and 32 pixels at 112), far enough apart that a detector reads the class off the box.
Stripes are horizontal bands of a second colour inside the shape, one pixel in from its outline,
with a band through the shape's centre, so even a small star shows a stripe and its outline is
always the body colour.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
SIZES: tuple[str, ...] = ("small", "medium", "large")
SIZE_FRACTIONS = {"small": 1 / 7, "medium": 3 / 14, "large": 2 / 7}  # of the image side: 16, 24, 32 at 112
TEXTURES: tuple[str, ...] = ("solid", "striped")
MIN_SIDE = 64  # smallest image side: small objects are 9 pixels there, still with visible stripes
MAX_SIDE = 2048  # largest: a 20,000-pixel scene takes gigabytes to render
CROSS_HALF_ARM = 0.18  # half the width of a cross's bars, as a fraction of the extent
STAR_INNER = 0.5  # inner / outer radius of the star (a regular star is 0.38: too thin when small)


def size_extent(size: str, side: int) -> int:
    """Edge in pixels of the square a `size` object occupies in an image whose shorter side is `side`."""
    if size not in SIZE_FRACTIONS:
        raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
    return max(5, round(SIZE_FRACTIONS[size] * side))


def stripe_width(side: int) -> int:
    """Height in pixels of one stripe (the gap between stripes is one pixel more)."""
    return max(1, round(side / 56))


@lru_cache(maxsize=None)
def template(shape: str, extent: int) -> np.ndarray:
    """(extent, extent) bool: the pixels of `shape` drawn in an extent x extent square. Read-only."""
    if shape not in _OUTLINES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    centres = (np.arange(extent) + 0.5) / extent  # pixel centres in the unit square
    v, u = np.meshgrid(centres, centres, indexing="ij")  # v: down, u: right
    mask = _OUTLINES[shape](u, v)
    mask.setflags(write=False)
    return mask


@lru_cache(maxsize=None)
def stripe_template(shape: str, extent: int, width: int) -> np.ndarray:
    """(extent, extent) bool: the stripe pixels of a striped `shape`. Read-only."""
    inside = template(shape, extent)
    interior = inside.copy()  # pixels whose four neighbours are all inside the shape
    interior[1:] &= inside[:-1]
    interior[:-1] &= inside[1:]
    interior[:, 1:] &= inside[:, :-1]
    interior[:, :-1] &= inside[:, 1:]
    interior[[0, -1]] = False
    interior[:, [0, -1]] = False
    rows = np.arange(extent) - (extent // 2 - width // 2)  # a stripe starts on the centre row
    bands = (rows % (2 * width + 1)) < width
    mask = interior & bands[:, None]
    mask.setflags(write=False)
    return mask


def template_box(shape: str, extent: int) -> tuple[int, int, int, int]:
    """Tight box [x0, y0, x1, y1) of the template's pixels inside its square."""
    return mask_box(template(shape, extent))


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box [x0, y0, x1, y1) of a (H, W) bool mask; None when it is empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _circle(u, v):
    return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25


def _square(u, v):
    return np.ones_like(u, dtype=bool)


def _triangle(u, v):
    return np.abs(u - 0.5) <= 0.5 * v  # apex at the top centre, base along the bottom


def _cross(u, v):
    return (np.abs(u - 0.5) <= CROSS_HALF_ARM) | (np.abs(v - 0.5) <= CROSS_HALF_ARM)


def _star(u, v):
    # five points up; the outer radius makes the star exactly as wide as its square, and the
    # centre is lowered so that its height (1.81 outer radii) is centred vertically
    outer = 0.5 / math.sin(math.radians(72))
    cy = outer + (1 - outer * (1 + math.cos(math.radians(36)))) / 2
    angles = np.radians(-90 + 36 * np.arange(10))
    radii = np.where(np.arange(10) % 2 == 0, outer, outer * STAR_INNER)
    return _inside_polygon(u, v, 0.5 + radii * np.cos(angles), cy + radii * np.sin(angles))


def _inside_polygon(u, v, xs, ys):
    """Even-odd rule: a point is inside when a ray to its right crosses the outline an odd number of times."""
    inside = np.zeros_like(u, dtype=bool)
    for x1, y1, x2, y2 in zip(xs, ys, np.roll(xs, -1), np.roll(ys, -1)):
        crosses = (y1 > v) != (y2 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (u < x_at)
    return inside


_OUTLINES = {"circle": _circle, "square": _square, "triangle": _triangle, "cross": _cross, "star": _star}
