"""A realism classifier: the quality term of layout GRPO, in place of SMARLI's HPS score.

SMARLI adds a human-preference (HPS) advantage to its layout reward; no preference model can be
downloaded here, so quality is a tiny CNN trained to tell real scenes (renders passed through the
cell codebook, exactly what a perfect generator would emit) from the SFT policy's samples of other
layouts: P(real) of an image is its quality. Like HPS it knows nothing of the prompt's layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reasonrl.config import min_ints
from reasonrl.vision.gen.images import make_images, to_tensor
from reasonrl.vision.gen.io import register_kind
from reasonrl.vision.gen.noise import row_generators
from reasonrl.vision.gen.run import JobState

from .layout import Layout
from .sampler import sample
from .train import load_smarli, smarli_images

HELD_OUT_SEED = 4 * 10 ** 6


@dataclass(frozen=True)
class RealismConfig:
    channels: int = 16
    """Channels of the first convolution (doubled at each of the three)."""


@register_kind("realism", RealismConfig)
class RealismClassifier(nn.Module):
    def __init__(self, cfg: RealismConfig):
        super().__init__()
        self.config = cfg
        c = cfg.channels
        self.convs = nn.ModuleList([nn.Conv2d(3, c, 3, 2, 1), nn.Conv2d(c, 2 * c, 3, 2, 1), nn.Conv2d(2 * c, 4 * c, 3, 2, 1)])
        self.head = nn.Linear(4 * c, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B,) logit of 'real'."""
        x = pixels
        for conv in self.convs:
            x = F.silu(conv(x))
        return self.head(x.mean((2, 3)))[:, 0]

    @torch.no_grad()
    def score(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N,) P(real)."""
        return torch.sigmoid(self(to_tensor(images))).numpy()


@dataclass
class RealismTrainConfig:
    policy: str = ""
    """SMARLI model directory whose samples are the 'generated' class."""
    steps: int = 300
    """Optimizer steps."""
    images_per_step: int = 64
    """Images per step, half real, half generated (at least 2)."""
    generated: int = 1024
    """Samples drawn from the policy once, at the start (on layouts of their own seeds)."""
    lr: float = 2e-3
    """AdamW learning rate."""
    seed: int = 0
    """Seeds the scenes, samples and weights."""

    def __post_init__(self):
        if not self.policy:
            raise ValueError("policy is required (a SMARLI model directory)")
        min_ints(self, {"steps": 1, "generated": 1, "images_per_step": 2})


class RealismJob(JobState):
    def __init__(self, cfg: RealismTrainConfig):
        torch.manual_seed(cfg.seed)
        self.cfg, self.steps, self.step_count = cfg, cfg.steps, 0
        policy, tok, self.codebook = load_smarli(cfg.policy)
        self.images = smarli_images(policy.config.grid * policy.config.cell)
        self.fake = policy_samples(policy, tok, self.codebook, self.images, cfg.generated, cfg.seed)
        self.held_fake = policy_samples(policy, tok, self.codebook, self.images, 128, HELD_OUT_SEED + cfg.seed)
        self.model = RealismClassifier(RealismConfig())
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr)

    def real(self, n: int, seed: int) -> np.ndarray:
        data = make_images(self.images, n, seed)
        return np.stack([self.codebook.decode(self.codebook.encode(i)) for i in data.images])

    def train_step(self) -> dict[str, float]:
        half = self.cfg.images_per_step // 2
        pick = np.random.default_rng([self.cfg.seed, self.step_count]).integers(len(self.fake), size=half)
        images = np.concatenate([self.real(half, self.cfg.seed * 10 ** 7 + self.step_count), self.fake[pick]])
        labels = torch.cat([torch.ones(half), torch.zeros(half)])
        loss = F.binary_cross_entropy_with_logits(self.model(to_tensor(images)), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step_count += 1
        return {"loss": float(loss.detach())}

    def evaluate(self) -> dict[str, float]:
        real = self.model.score(self.real(128, HELD_OUT_SEED + self.cfg.seed))
        fake = self.model.score(self.held_fake)
        return {"eval_accuracy": float(((real > 0.5).mean() + (fake <= 0.5).mean()) / 2),
                "eval_real_score": float(real.mean()), "eval_generated_score": float(fake.mean())}



@torch.no_grad()
def policy_samples(policy, tok, codebook, images, n: int, seed: int, batch: int = 64) -> np.ndarray:
    """n images sampled by `policy` from the layouts of n fresh scenes."""
    from .layout import encode_layouts

    c = policy.config
    scenes = make_images(images, n, seed).scenes
    out = []
    for i in range(0, n, batch):
        lays = [Layout.of(s) for s in scenes[i:i + batch]]
        b = encode_layouts(lays, tok, c.prompt_slots, c.layout_slots, c.grid, c.rules)
        tokens = sample(policy.eval(), b, generator=row_generators(seed, i, len(lays))).tokens
        out += [codebook.decode(t) for t in tokens.numpy()]
    return np.stack(out)
