"""Random scenes: `sample_scene(rng, cfg)` draws a background and 1-8 objects, deterministically from `rng`.

Clean scenes (occlusion off) keep every two objects' boxes at least GAP pixels apart, so each object
is one connected blob of its own. With occlusion on, objects may overlap, but two overlapping
objects never share a body colour and each keeps at least `min_visible` of its pixels in view.
A draw that cannot be placed is thrown away and redrawn from the same generator (the object
count is kept, so counts stay uniform over the configured range).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .palette import BACKGROUND_MAX, BACKGROUND_MIN, COLOURS, MIN_GRADIENT_CONTRAST, sample_background_colour
from .render import render
from .scene import Background, Scene, SceneObject
from .shapes import MAX_SIDE, MIN_SIDE, SHAPES, SIZES, size_extent, template_box

GAP = 2  # background pixels at least between two objects' boxes in a clean scene
BORDER = 1  # background pixels at least between an object's square and the image edge
CANDIDATES = 64  # positions tried per object before the draw is thrown away
MAX_DRAWS = 2000


@dataclass(frozen=True)
class SceneConfig:
    width: int = 112
    """Image width in pixels (Qwen2.5-VL: a multiple of 28 gives whole merged visual tokens)."""
    height: int = 112
    """Image height in pixels."""
    min_objects: int = 1
    """Fewest objects in a scene."""
    max_objects: int = 8
    """Most objects in a scene."""
    occlusion: bool = False
    """Let objects overlap (later ones in front); off, every object is fully visible and apart."""
    striped_fraction: float = 0.3
    """Chance that an object is striped (stripes in a second palette colour)."""
    gradient_fraction: float = 0.5
    """Chance that the background is a linear gradient rather than a plain colour."""
    min_visible: float = 0.5
    """With occlusion: the least share of each object's pixels left in view."""

    def __post_init__(self):
        for name in ("width", "height"):
            if not isinstance(getattr(self, name), int) or not MIN_SIDE <= getattr(self, name) <= MAX_SIDE:
                raise ValueError(f"SceneConfig.{name} must be an integer >= {MIN_SIDE} and at most {MAX_SIDE}, "
                                 f"got {getattr(self, name)!r}")
        if not (isinstance(self.min_objects, int) and isinstance(self.max_objects, int)
                and 1 <= self.min_objects <= self.max_objects <= 8):
            raise ValueError(f"SceneConfig.min_objects and max_objects must satisfy 1 <= min <= max <= 8, "
                             f"got {self.min_objects!r} and {self.max_objects!r}")
        for name in ("striped_fraction", "gradient_fraction", "min_visible"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SceneConfig.{name} must be in [0, 1], got {getattr(self, name)!r}")


def sample_scene(rng: np.random.Generator, cfg: SceneConfig = SceneConfig()) -> Scene:
    """A random scene; the same generator state gives the same scene."""
    background = sample_background(rng, cfg)
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    for _ in range(MAX_DRAWS):
        objects = [_sample_attributes(rng, cfg) for _ in range(n)]
        placed = _place(rng, objects, cfg)
        if placed is None:
            continue
        scene = Scene(cfg.width, cfg.height, background, tuple(placed))
        if not cfg.occlusion or _visible_enough(scene, cfg.min_visible):
            return scene
    raise RuntimeError(f"could not place {n} objects in a {cfg.width}x{cfg.height} image in {MAX_DRAWS} draws")


def sample_background(rng: np.random.Generator, cfg: SceneConfig) -> Background:
    if rng.random() >= cfg.gradient_fraction:
        colour = sample_background_colour(rng)
        return Background(colour, colour)
    first = int(rng.integers(BACKGROUND_MIN, BACKGROUND_MAX + 1))
    second = first
    while abs(second - first) < MIN_GRADIENT_CONTRAST:
        second = int(rng.integers(BACKGROUND_MIN, BACKGROUND_MAX + 1))
    start, end = sample_background_colour(rng, first), sample_background_colour(rng, second)
    return Background(start, end, int(rng.integers(0, 360)))


def _sample_attributes(rng: np.random.Generator, cfg: SceneConfig) -> dict:
    colour = COLOURS[rng.integers(len(COLOURS))]
    attrs = {"shape": SHAPES[rng.integers(len(SHAPES))], "colour": colour, "size": SIZES[rng.integers(len(SIZES))]}
    if rng.random() < cfg.striped_fraction:
        others = [c for c in COLOURS if c != colour]
        attrs.update(texture="striped", stripe_colour=others[rng.integers(len(others))])
    return attrs


def _place(rng: np.random.Generator, objects: list[dict], cfg: SceneConfig) -> list[SceneObject] | None:
    """Positions for the objects in order, or None when one finds no free spot."""
    side, placed, boxes, colours = min(cfg.width, cfg.height), [], [], []
    for attrs in objects:
        e = size_extent(attrs["size"], side)
        xs = rng.integers(BORDER, cfg.width - e - BORDER + 1, size=CANDIDATES)
        ys = rng.integers(BORDER, cfg.height - e - BORDER + 1, size=CANDIDATES)
        bx0, by0, bx1, by1 = template_box(attrs["shape"], e)
        candidates = np.stack([xs + bx0, ys + by0, xs + bx1, ys + by1], 1)  # (C, 4) boxes
        ok = _allowed(candidates, np.array(boxes).reshape(-1, 4), attrs["colour"], colours, cfg.occlusion)
        if not ok.any():
            return None
        k = int(np.argmax(ok))
        placed.append(SceneObject(x=int(xs[k]), y=int(ys[k]), **attrs))
        boxes.append(candidates[k])
        colours.append(attrs["colour"])
    return placed


def _allowed(candidates: np.ndarray, boxes: np.ndarray, colour: str, colours: list[str], occlusion: bool) -> np.ndarray:
    """(C,) bool: candidate boxes apart from every placed box (clean) or from those of the same colour."""
    if occlusion:
        boxes = boxes[np.array([c == colour for c in colours], dtype=bool)] if len(colours) else boxes
    gap = 0 if occlusion else GAP
    c, b = candidates[:, None], boxes[None]  # (C, 1, 4), (1, P, 4)
    apart = (c[..., 0] >= b[..., 2] + gap) | (b[..., 0] >= c[..., 2] + gap) \
        | (c[..., 1] >= b[..., 3] + gap) | (b[..., 1] >= c[..., 3] + gap)
    return apart.all(1)


def _visible_enough(scene: Scene, min_visible: float) -> bool:
    seen = np.bincount(render(scene).owner.ravel() + 1, minlength=len(scene.objects) + 1)[1:]
    return all(seen[i] >= min_visible * scene.area(i) for i in range(len(scene.objects)))
