"""Training a tokenizer (binary or VQ) on shapes-world images, as a resumable run (gen/run.py).

Each step draws fresh scenes (seeded by the run seed and the step, so a resumed run sees the same
images), reconstructs them with pixel MSE plus the quantiser's own loss, and on a share
hires_fraction of the steps, spread evenly (`is_hires_step`), decodes at twice the resolution
against the 2x render instead.

The MSE weighs object pixels `object_weight` times more than background pixels (a departure):
objects cover a few percent of a shapes image, and with a plain MSE a small ViT spends its first
thousand steps on the background alone, its reconstructions empty of objects. PSNR is reported
unweighted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from reasonrl.config import finite_numbers
from reasonrl.rl.config import OptimSection
from reasonrl.rl.update import make_optimizer
from reasonrl.vision.gen.images import ImageConfig, make_images, to_tensor
from reasonrl.vision.gen.run import JobState
from reasonrl.vision.world import quantise

from .measure import measure_tokenizer
from .tokenizer import BitTokenizer, TokenizerConfig

HELD_OUT_SEED = 10 ** 6  # held-out images come from seeds the training steps never use


@dataclass
class TokenizerTrainConfig:
    steps: int = 3000
    """Optimizer steps."""
    images_per_step: int = 64
    """Fresh images per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    schedule: Literal["constant", "cosine"] = "cosine"
    """Learning-rate schedule after warm-up."""
    aux_weight: float = 0.1
    """Weight of the quantiser's loss (bit polarisation for binary, codebook + commitment for vq)."""
    object_weight: float = 10.0
    """Pixels of objects weigh this much more than background pixels in the loss (1: plain MSE)."""
    hires_fraction: float = 0.25
    """Share of steps that decode at twice the resolution against the 2x render (0: never)."""
    eval_images: int = 256
    """Held-out images for PSNR and code usage."""
    seed: int = 0
    """Seeds the weights and the images."""

    def __post_init__(self):
        if self.steps < 1 or self.images_per_step < 1 or self.eval_images < 1:
            raise ValueError("steps, images_per_step and eval_images must be >= 1")
        if not 0 <= self.hires_fraction <= 1:
            raise ValueError(f"hires_fraction must be in [0, 1], got {self.hires_fraction}")
        finite_numbers(self, above={"lr": 0, "object_weight": 0}, at_least={"aux_weight": 0})


def is_hires_step(step: int, fraction: float) -> bool:
    """Step `step` (from 0) decodes at 2x when floor((step + 1) f) > floor(step f): a share f of the
    steps, spread evenly, and fixed by the step alone (a resumed run keeps the schedule). For f = 1/n it
    is steps n-1, 2n-1, ..."""
    f = Fraction(fraction).limit_denominator(10 ** 6)  # exact, so that f = 1/3 gives every third step
    return math.floor((step + 1) * f) > math.floor(step * f)


def object_mask(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 1, H, W) float: 1 on palette (object) pixels, 0 on background."""
    return torch.from_numpy(np.stack([quantise(i) >= 0 for i in images])).float()[:, None]


class TokenizerJob(JobState):
    def __init__(self, model_cfg: TokenizerConfig, cfg: TokenizerTrainConfig, images: ImageConfig):
        if images.side != model_cfg.image_size:
            raise ValueError(f"image side {images.side} differs from the tokenizer's image_size {model_cfg.image_size}")
        torch.manual_seed(cfg.seed)
        self.cfg, self.images, self.steps, self.step_count = cfg, images, cfg.steps, 0
        self.model = BitTokenizer(model_cfg)
        optim = OptimSection(lr=cfg.lr, warmup_steps=cfg.warmup_steps, schedule=cfg.schedule, betas=(0.9, 0.99))
        self.optimizer, self.scheduler = make_optimizer(self.model.parameters(), optim, cfg.steps)
        self.held = make_images(images, cfg.eval_images, HELD_OUT_SEED + cfg.seed)

    def train_step(self) -> dict[str, float]:
        self.model.train()
        batch = make_images(self.images, self.cfg.images_per_step, self.cfg.seed * 10 ** 7 + self.step_count)
        hires = is_hires_step(self.step_count, self.cfg.hires_fraction)
        target_images = batch.renders if hires else batch.images
        target = to_tensor(target_images)
        recon, q = self.model(to_tensor(batch.images), *target.shape[-2:])
        weight = 1 + (self.cfg.object_weight - 1) * object_mask(target_images)  # (B, 1, H, W)
        mse = F.mse_loss(recon, target)
        loss = (weight * (recon - target) ** 2).mean() / weight.mean() + self.cfg.aux_weight * q.aux_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        return {"loss": float(loss.detach()), "mse": float(mse.detach()), "aux_loss": float(q.aux_loss.detach()), "hires": float(hires),
                "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0]}

    def evaluate(self) -> dict[str, float]:
        return {f"eval_{k}": v for k, v in measure_tokenizer(self.model, self.held).items()}

