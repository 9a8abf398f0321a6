"""Shapes-world images at the generators' size: scenes drawn at 2x and subsampled, with their prompts.

The shapes world draws at 64 pixels or more (world/shapes.py MIN_SIDE); the image models here see
`side` x `side` pixels (32 by default), which is every second pixel of a 2*side render (the pixel
at odd row and column, so every value stays an exact palette or background colour). The 2*side
render is kept: it is the target when a tokenizer decodes at twice the resolution, and the oracle
detector judges a generated image after nearest-neighbour upsampling to 2*side (`judge_view`).

Small objects (4-5 pixels at 32) are left out by default: after subsampling the detector names
their shape right only 69% of the time (medium and large: 100%, 300 scenes), and every generation
metric is read through it. Stripes are off by default for the same reason (one-pixel stripes
alias at stride 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reasonrl.vision.world import SIZES, Scene, SceneConfig, render, sample_scene
from reasonrl.vision.world.shapes import MIN_SIDE

MAX_TRIES = 1000  # scenes drawn per image before a size filter is called impossible


@dataclass(frozen=True)
class ImageConfig:
    side: int = 32
    """Side in pixels of the images the models see (scenes are drawn at twice this and subsampled)."""
    min_objects: int = 1
    """Fewest objects in a scene."""
    max_objects: int = 3
    """Most objects in a scene."""
    sizes: tuple[str, ...] = ("medium", "large")
    """Object size classes kept (scenes with other sizes are redrawn)."""
    gradient_fraction: float = 0.5
    """Chance of a gradient background rather than a plain one."""
    striped_fraction: float = 0.0
    """Chance that an object is striped."""

    def __post_init__(self):
        if not isinstance(self.side, int) or 2 * self.side < MIN_SIDE:
            raise ValueError(f"ImageConfig.side must be an integer >= {MIN_SIDE // 2}, got {self.side!r}")
        sizes = tuple(self.sizes.split(",")) if isinstance(self.sizes, str) else tuple(self.sizes)
        if not sizes or any(s not in SIZES for s in sizes):
            raise ValueError(f"ImageConfig.sizes must name some of {', '.join(SIZES)}, got {self.sizes!r}")
        object.__setattr__(self, "sizes", sizes)
        self.scene_config()  # validates counts and fractions

    def scene_config(self) -> SceneConfig:
        return SceneConfig(2 * self.side, 2 * self.side, self.min_objects, self.max_objects,
                           striped_fraction=self.striped_fraction, gradient_fraction=self.gradient_fraction)


@dataclass
class ImageSet:
    scenes: list[Scene]
    images: np.ndarray
    """(N, side, side, 3) uint8: what the models see."""
    renders: np.ndarray
    """(N, 2*side, 2*side, 3) uint8: the full renders (targets at twice the resolution)."""

    def __len__(self) -> int:
        return len(self.scenes)


def draw_scene(rng: np.random.Generator, cfg: ImageConfig) -> Scene:
    """A scene of the configured kind (redrawn until every object has an allowed size)."""
    scene_cfg = cfg.scene_config()
    for _ in range(MAX_TRIES):
        scene = sample_scene(rng, scene_cfg)
        if all(o.size in cfg.sizes for o in scene.objects):
            return scene
    raise ValueError(f"no scene with sizes {cfg.sizes} in {MAX_TRIES} draws ({cfg})")


def subsample(render_image: np.ndarray) -> np.ndarray:
    """(2S, 2S, 3) -> (S, S, 3): the pixel at odd row and column of each 2x2 block."""
    return np.ascontiguousarray(render_image[1::2, 1::2])


def judge_view(image: np.ndarray) -> np.ndarray:
    """(S, S, 3) -> (2S, 2S, 3) nearest-neighbour upsampling: the image the detector reads."""
    return np.asarray(image).repeat(2, axis=0).repeat(2, axis=1)


def make_images(cfg: ImageConfig, n: int, seed: int) -> ImageSet:
    """n scenes drawn from `seed`, rendered; the same arguments give the same set."""
    rng = np.random.default_rng(seed)
    scenes = [draw_scene(rng, cfg) for _ in range(n)]
    renders = np.stack([render(s).image for s in scenes]) if scenes else np.zeros((0, 2 * cfg.side, 2 * cfg.side, 3), np.uint8)
    return ImageSet(scenes, np.stack([subsample(r) for r in renders]) if scenes else renders[:, ::2, ::2], renders)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] (values outside are clipped) -> (N, H, W, 3) uint8."""
    x = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
