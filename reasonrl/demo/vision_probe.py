"""Can a vision tower see shapes? `python -m reasonrl.demo.vision_probe --side 224 --steps 500`.

Trains a tiny Qwen2.5-VL vision tower (or, with `--model cnn`, a 3-layer convolutional network as
a reference) with a linear head on one question: the shape of the single object in a shapes-world
scene (plain background, solid colour), and prints held-out accuracy as it goes (chance 0.2). The
tower's stem is one linear map per 14-pixel patch, so how large objects are against patches decides
how fast it learns (docs/vision.md, "The embedded VLM").

`cell_targets` and `object_cells` are the labels of the embedded VLM's first stage: for each merged
token's square of the image, which colours and shapes cover it and whether an object's centre falls
in it; and for each object, the tokens it covers, its shape and its colour (learnt from the object's
tokens max-pooled: per-token shape bits alone do not train, docs/vision.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reasonrl.models import load_model
from reasonrl.models.qwen2_5_vl.processor import preprocess
from reasonrl.models.tiny_vlm import make_vlm_checkpoint, make_vlm_tokenizer
from reasonrl.vision.world import SceneConfig, render, sample_scene
from reasonrl.vision.world.palette import COLOURS
from reasonrl.vision.world.render import Rendering
from reasonrl.vision.world.scene import Scene
from reasonrl.vision.world.shapes import SHAPES


@dataclass
class ProbeConfig:
    model: Literal["tower", "cnn"] = "tower"
    """The Qwen2.5-VL vision tower, or a 3-layer CNN with global max pooling as a reference."""
    side: int = 112
    """Image side in pixels (objects are 1/7, 3/14 or 2/7 of it)."""
    steps: int = 300
    """Optimiser steps of 32 scenes."""
    lr: float = 1e-3
    """AdamW learning rate."""
    vision_hidden_size: int = 64
    """Tower width."""
    vision_depth: int = 2
    """Tower blocks."""
    eval_every: int = 50
    """Held-out accuracy (200 scenes) every this many steps."""
    seed: int = 0
    """Seeds weights and scenes."""


def cell_targets(scene: Scene, rendering: Rendering, cell: int = 28) -> np.ndarray:
    """(cells, 8 colours + 5 shapes + centre) multi-hot, cells in raster order of `cell`-pixel squares:
    a colour or shape is on where its object shows at least 8 pixels in the square."""
    h, w = rendering.owner.shape
    gh, gw = h // cell, w // cell
    t = np.zeros((gh, gw, len(COLOURS) + len(SHAPES) + 1), np.float32)
    for i, obj in enumerate(scene.objects):
        mask = rendering.owner == i
        if not mask.any():
            continue
        on = mask[:gh * cell, :gw * cell].reshape(gh, cell, gw, cell).sum((1, 3)) >= 8
        t[on, COLOURS.index(obj.colour)] = 1
        t[on, len(COLOURS) + SHAPES.index(obj.shape)] = 1
        ys, xs = np.nonzero(mask)
        t[min(int(ys.mean()) // cell, gh - 1), min(int(xs.mean()) // cell, gw - 1), -1] = 1
    return t.reshape(gh * gw, -1)


def object_cells(scene: Scene, rendering: Rendering, cell: int = 28) -> list[tuple[np.ndarray, int, int]]:
    """For each object showing at least 30 pixels: (the cells it covers as in `cell_targets`, a bool
    mask in raster order; its shape's index; its colour's index)."""
    h, w = rendering.owner.shape
    gh, gw = h // cell, w // cell
    out = []
    for i, obj in enumerate(scene.objects):
        mask = rendering.owner[:gh * cell, :gw * cell] == i
        on = mask.reshape(gh, cell, gw, cell).sum((1, 3)) >= 8
        if mask.sum() >= 30 and on.any():
            out.append((on.reshape(-1), SHAPES.index(obj.shape), COLOURS.index(obj.colour)))
    return out


def tower_features(cfg: ProbeConfig) -> tuple[nn.Module, callable, int]:
    """(trainable module, images -> (B, features), feature width)."""
    if cfg.model == "cnn":
        net = nn.Sequential(nn.Conv2d(3, 32, 5, 2, 2), nn.GELU(), nn.Conv2d(32, 64, 5, 2, 2), nn.GELU(),
                            nn.Conv2d(64, 128, 3, 2, 1), nn.GELU(), nn.AdaptiveMaxPool2d(1), nn.Flatten())
        return net, lambda imgs: net(torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255), 128
    hidden = 128
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(make_vlm_checkpoint(Path(tmp) / "tower", make_vlm_tokenizer(["a"], 300), seed=cfg.seed,
                                               hidden_size=hidden, vision_hidden_size=cfg.vision_hidden_size,
                                               vision_depth=cfg.vision_depth))

    def features(imgs):
        pv, grid = preprocess(imgs, model.image_config)
        return model.encode_images(pv, grid).view(len(imgs), -1, hidden).amax(1)  # max over merged tokens
    return model.visual, features, hidden


def scenes(rng: np.random.Generator, n: int, cfg: SceneConfig) -> tuple[list[np.ndarray], torch.Tensor]:
    drawn = [sample_scene(rng, cfg) for _ in range(n)]
    return [render(s).image for s in drawn], torch.tensor([SHAPES.index(s.objects[0].shape) for s in drawn])


def run_probe(cfg: ProbeConfig, log=print) -> list[dict]:
    """Train and evaluate; one {"step", "loss", "accuracy", "seconds"} per evaluation."""
    torch.manual_seed(cfg.seed)
    world = SceneConfig(width=cfg.side, height=cfg.side, min_objects=1, max_objects=1, striped_fraction=0.0,
                        gradient_fraction=0.0)
    net, features, width = tower_features(cfg)
    head = nn.Linear(width, len(SHAPES))
    opt = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=cfg.lr)
    rng, held, history, start = np.random.default_rng(cfg.seed + 1), scenes(np.random.default_rng(10_007), 200, world), [], time.time()
    for step in range(1, cfg.steps + 1):
        imgs, labels = scenes(rng, 32, world)
        loss = F.cross_entropy(head(features(imgs)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            with torch.no_grad():
                acc = (head(features(held[0])).argmax(1) == held[1]).float().mean().item()
            history.append({"step": step, "loss": loss.item(), "accuracy": acc, "seconds": time.time() - start})
            log(f"{cfg.model} {cfg.side}px step {step}: loss {loss.item():.3f}, held-out accuracy {acc:.3f} "
                f"({time.time() - start:.0f}s)")
    return history


def main(argv: list[str] | None = None) -> int:
    from reasonrl.cli.flags import add_flags, values
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flags(p, ProbeConfig)
    run_probe(ProbeConfig(**values(p.parse_args(argv), ProbeConfig)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
