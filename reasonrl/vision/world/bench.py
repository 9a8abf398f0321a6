"""The oracle detector measured: how many objects of random renders it recovers, and how fast.

`bench_detector(DetectorBenchConfig())` draws scenes, renders them (optionally adding Gaussian
pixel noise, a stand-in for a generator's imperfect pixels) and matches the detections to the
truth at IoU >= cfg.min_iou. Figures: recall (objects matched), attribute accuracy (matched with
shape, colour, size, texture and stripe colour all right), exact masks, and milliseconds per
image for sampling, rendering and detection on this machine.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from .detect import detect
from .match import match
from .render import render
from .sampling import SceneConfig, sample_scene


@dataclass(frozen=True)
class DetectorBenchConfig:
    n: int = 1000
    """Scenes to draw."""
    seed: int = 0
    """Seeds the scenes and the noise."""
    image_size: int = 112
    """Width and height of the images in pixels."""
    noise: float = 0.0
    """Standard deviation of Gaussian noise added to every pixel channel (0: clean renders)."""
    min_iou: float = 0.9
    """Box IoU a detection needs to count as its object."""


def bench_detector(cfg: DetectorBenchConfig = DetectorBenchConfig()) -> dict:
    import torch

    from reasonrl.bench.common import device_name

    rng, noise_rng = np.random.default_rng(cfg.seed), np.random.default_rng([cfg.seed, 1])  # same scenes at any noise
    scene_cfg = SceneConfig(cfg.image_size, cfg.image_size)
    clock = {"sample": 0.0, "render": 0.0, "detect": 0.0}
    counts = {"objects": 0, "matched": 0, "attributes": 0, "exact_masks": 0}
    for _ in range(cfg.n):
        scene = _timed(clock, "sample", sample_scene, rng, scene_cfg)
        rendering = _timed(clock, "render", render, scene)
        image = rendering.image
        if cfg.noise > 0:
            image = np.clip(image + noise_rng.normal(0, cfg.noise, image.shape), 0, 255).round().astype(np.uint8)
        found = _timed(clock, "detect", detect, image)
        _count(counts, scene, rendering, found, cfg.min_iou)
    total = max(counts["objects"], 1)
    return {"device": device_name(torch.device("cpu")), "config": asdict(cfg), "objects": counts["objects"],
            "recall": counts["matched"] / total, "attribute_accuracy": counts["attributes"] / total,
            "exact_masks": counts["exact_masks"] / total,
            **{f"{k}_ms_per_image": 1000 * v / max(cfg.n, 1) for k, v in clock.items()}}


def _timed(clock: dict, name: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    clock[name] += time.perf_counter() - start
    return out


def _count(counts: dict, scene, rendering, found, min_iou: float) -> None:
    counts["objects"] += len(scene.objects)
    for pair in match(found, [scene.box(i) for i in range(len(scene.objects))], min_iou):
        d, o = found[pair.detected], scene.objects[pair.truth]
        counts["matched"] += 1
        counts["attributes"] += (d.shape, d.colour, d.size, d.texture, d.stripe_colour) == \
            (o.shape, o.colour, o.size, o.texture, o.stripe_colour)
        counts["exact_masks"] += bool((d.mask == rendering.mask(pair.truth)).all())
