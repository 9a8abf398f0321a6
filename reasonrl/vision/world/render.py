"""Drawing a scene: exact palette pixels (no anti-aliasing) and the exact pixels of every object."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .palette import PALETTE
from .scene import Background, Box, Scene
from .shapes import mask_box, stripe_template, stripe_width, template


@dataclass(frozen=True)
class Rendering:
    image: np.ndarray
    """(H, W, 3) uint8."""
    owner: np.ndarray
    """(H, W) int16: index of the object seen at each pixel, -1 where the background shows."""

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool: the visible pixels of each object (N is the highest index seen plus one)."""
        return self.owner[None] == np.arange(int(self.owner.max()) + 1)[:, None, None]

    def mask(self, i: int) -> np.ndarray:
        """(H, W) bool: the visible pixels of object i."""
        return self.owner == i

    def visible_box(self, i: int) -> Box | None:
        """Tight box [x0, y0, x1, y1) of object i's visible pixels; None when it is hidden."""
        return mask_box(self.mask(i))


def render(scene: Scene) -> Rendering:
    """The scene's image and which object each pixel shows; objects are drawn in order."""
    image = background_image(scene.background, scene.height, scene.width)
    owner = np.full((scene.height, scene.width), -1, dtype=np.int16)
    width = stripe_width(scene.side)
    for i, obj in enumerate(scene.objects):
        e = scene.extent(obj)
        window = (slice(obj.y, obj.y + e), slice(obj.x, obj.x + e))
        body = template(obj.shape, e)
        image[window][body] = PALETTE[obj.colour]
        owner[window][body] = i
        if obj.stripe_colour is not None:
            image[window][stripe_template(obj.shape, e, width)] = PALETTE[obj.stripe_colour]
    return Rendering(image, owner)


def full_mask(scene: Scene, i: int) -> np.ndarray:
    """(H, W) bool: all pixels of object i, including those later objects cover."""
    obj, mask = scene.objects[i], np.zeros((scene.height, scene.width), dtype=bool)
    e = scene.extent(obj)
    mask[obj.y:obj.y + e, obj.x:obj.x + e] = template(obj.shape, e)
    return mask


def background_image(background: Background, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8: a plain colour, or a linear ramp from start to end along `angle`."""
    start = np.array(background.start, dtype=np.float64)
    if background.kind == "plain":
        return np.broadcast_to(start.astype(np.uint8), (height, width, 3)).copy()
    theta = np.radians(background.angle)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    along = xs * np.cos(theta) + ys * np.sin(theta)
    t = (along - along.min()) / max(float(along.max() - along.min()), 1e-9)  # 0 at the start, 1 at the end
    end = np.array(background.end, dtype=np.float64)
    return np.rint(start + (end - start) * t[..., None]).astype(np.uint8)

