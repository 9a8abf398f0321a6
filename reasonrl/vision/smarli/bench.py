"""`reasonrl bench smarli`: layout metrics of SMARLI models on the same held-out layouts.

Every model samples the same layouts with the same seed. Two sets: all held-out layouts, and the
layouts of exactly two objects of different colours (where leakage between objects shows).
Compare the mask ablations (models trained with each rule set) and a model before and after
layout GRPO by listing their directories.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from reasonrl.config import min_ints
from reasonrl.vision.gen.grid import save_grid
from reasonrl.vision.gen.images import make_images
from reasonrl.vision.gen.noise import row_generators

from .judge import judge_all
from .layout import Layout, encode_layouts
from .sampler import sample
from .train import load_smarli, smarli_images

HELD_OUT_SEED = 6 * 10 ** 6


@dataclass
class SmarliBenchConfig:
    models: list[str] = field(default_factory=list)
    """SMARLI model directories to compare."""
    layouts: int = 256
    """Held-out layouts (of 1-3 objects)."""
    pairs: int = 128
    """Held-out layouts of exactly two objects of different colours."""
    sample_steps: int = 8
    """Next-set steps per image."""
    seed: int = 0
    """Seeds the layouts and the draws."""
    grid: str | None = None
    """Also write a PNG grid of the first 16 pair layouts' images per model to PREFIX_N.png."""

    def __post_init__(self):
        if not self.models:
            raise ValueError("models: name at least one SMARLI model directory")
        min_ints(self, dict.fromkeys(("layouts", "pairs", "sample_steps"), 1))


def pair_layouts(n: int, seed: int, side: int) -> list[Layout]:
    rng, out = np.random.default_rng(seed), []
    cfg = smarli_images(side)
    while len(out) < n:
        scene = make_images(type(cfg)(side=side, min_objects=2, max_objects=2, gradient_fraction=0.0), 1,
                            int(rng.integers(2 ** 31))).scenes[0]
        if scene.objects[0].colour != scene.objects[1].colour:
            out.append(Layout.of(scene))
    return out


@torch.no_grad()
def images_for(model, tok, codebook, layouts: list[Layout], steps: int, seed: int, batch: int = 64) -> np.ndarray:
    c, out = model.config, []
    for i in range(0, len(layouts), batch):
        b = encode_layouts(layouts[i:i + batch], tok, c.prompt_slots, c.layout_slots, c.grid, c.rules)
        gen = row_generators(seed, i, len(layouts[i:i + batch]))
        out += [codebook.decode(t) for t in sample(model.eval(), b, steps, generator=gen).tokens.numpy()]
    return np.stack(out)


def bench_smarli(cfg: SmarliBenchConfig) -> list[dict]:
    rows = []
    for k, path in enumerate(cfg.models):
        model, tok, codebook = load_smarli(path)
        side = model.config.grid * model.config.cell
        every = [Layout.of(s) for s in make_images(smarli_images(side), cfg.layouts, HELD_OUT_SEED + cfg.seed).scenes]
        pairs = pair_layouts(cfg.pairs, HELD_OUT_SEED + 1 + cfg.seed, side)
        start = time.perf_counter()
        all_images = images_for(model, tok, codebook, every, cfg.sample_steps, cfg.seed)
        pair_images = images_for(model, tok, codebook, pairs, cfg.sample_steps, cfg.seed)
        row = {"model": path, "rules": model.config.rules, **judge_all(every, all_images)}
        row.update({f"pairs_{key}": v for key, v in judge_all(pairs, pair_images).items()
                    if key in ("miou", "precision", "colour", "leakage")})
        row["seconds"] = time.perf_counter() - start
        if cfg.grid:
            save_grid(pair_images[:16], f"{cfg.grid}_{k}.png", columns=8, scale=2)
        rows.append(row)
    return rows
