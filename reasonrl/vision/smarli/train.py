"""Training SMARLI-mini (masked next-set prediction) on shapes-world layouts, as a resumable run.

Setup (once, from the seed): a cell codebook (cells.py) and a BPE tokenizer fitted on training
scenes. Each step draws fresh scenes (seeded by the run seed and the step), masks a share
cos(pi/2 u), u ~ U(0, 1), of each image's tokens (MaskGIT's schedule) and takes one AdamW step
on the cross-entropy of the masked tokens. Held-out: the masked-token loss at half masking and
the layout metrics (judge.py) of images sampled from held-out layouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from reasonrl.config import min_ints
from reasonrl.models.tiny import make_tokenizer
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.rl.config import OptimSection
from reasonrl.rl.update import make_optimizer
from reasonrl.vision.gen.images import ImageConfig, make_images
from reasonrl.vision.gen.io import load_model_dir
from reasonrl.vision.gen.run import JobState
from reasonrl.vision.world import COLOURS, SHAPES

from .cells import CellCodebook, fit_patterns
from .judge import judge_all
from .layout import Layout, encode_layouts
from .model import Smarli, SmarliConfig
from .sampler import sample

HELD_OUT_SEED = 3 * 10 ** 6


def smarli_images(side: int = 32) -> ImageConfig:
    """SMARLI-mini's scenes: 1-3 medium or large solid objects on a plain background."""
    return ImageConfig(side=side, min_objects=1, max_objects=3, gradient_fraction=0.0)


@dataclass
class SmarliTrainConfig:
    rules: Literal["structured", "no_isolation", "causal"] = "structured"
    """Attention mask: SMARLI's rules or an ablation (mask.py)."""
    width: int = 128
    """Transformer width."""
    num_heads: int = 4
    """Attention heads."""
    num_layers: int = 4
    """Transformer blocks."""
    patterns: int = 255
    """Cell codebook size (occupancy patterns)."""
    codebook_scenes: int = 2000
    """Scenes the codebook and the text tokenizer are fitted on."""
    steps: int = 3000
    """Optimizer steps."""
    layouts_per_step: int = 32
    """Fresh (layout, image) pairs per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (cosine schedule after warm-up)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    sample_steps: int = 8
    """Next-set steps when sampling held-out images."""
    eval_layouts: int = 64
    """Held-out layouts for the loss and the layout metrics."""
    seed: int = 0
    """Seeds the weights, codebook, tokenizer and scenes."""

    def __post_init__(self):
        min_ints(self, dict.fromkeys(("width", "num_heads", "num_layers", "patterns", "codebook_scenes", "steps",
                                          "layouts_per_step", "sample_steps", "eval_layouts"), 1))
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} must be a multiple of num_heads {self.num_heads}")


class SmarliJob(JobState):
    def __init__(self, cfg: SmarliTrainConfig, images: ImageConfig | None = None):
        torch.manual_seed(cfg.seed)
        self.cfg, self.images, self.steps, self.step_count = cfg, images or smarli_images(), cfg.steps, 0
        fit = make_images(self.images, cfg.codebook_scenes, cfg.seed + 17)
        self.codebook = CellCodebook(fit_patterns(fit.images, 4, cfg.patterns))
        self.tokenizer = make_tokenizer([Layout.of(s).prompt for s in fit.scenes], vocab_size=384)
        self.model = Smarli(SmarliConfig(self.tokenizer.vocab_size, self.codebook.patterns, cfg.width, cfg.num_heads,
                                         cfg.num_layers, self.images.side // 4, 4, rules=cfg.rules))
        self._check_layout_slots()
        optim = OptimSection(lr=cfg.lr, warmup_steps=cfg.warmup_steps, schedule="cosine", betas=(0.9, 0.99))
        self.optimizer, self.scheduler = make_optimizer(self.model.parameters(), optim, cfg.steps)
        self.held = make_images(self.images, cfg.eval_layouts, HELD_OUT_SEED + cfg.seed)

    def _check_layout_slots(self) -> None:
        """Refuse, before the run starts, a tokenizer fitted on so few scenes (`codebook_scenes`) that it
        splits unseen words into bytes and a full layout would overflow the model's layout slots."""
        words = [f"{size} {colour} {shape}" for size in self.images.sizes for colour in COLOURS for shape in SHAPES]
        longest = max(len(self.tokenizer.encode(w, add_special_tokens=False)) for w in words)  # unstriped objects
        slots = self.model.config.layout_slots
        if self.images.max_objects * (longest + 1) > slots:  # + 1: each object's box token
            raise ValueError(f"codebook_scenes={self.cfg.codebook_scenes} is too few: the text tokenizer fitted on "
                             f"them splits an object's words into up to {longest} tokens, and "
                             f"{self.images.max_objects} such objects overflow the {slots} layout slots; fit it on "
                             "more scenes (the default 2000; 30 suffice for seeds 0-2)")

    def encode(self, layouts: list[Layout]):
        c = self.model.config
        return encode_layouts(layouts, self.tokenizer, c.prompt_slots, c.layout_slots, c.grid, c.rules)

    def train_step(self) -> dict[str, float]:
        self.model.train()
        data = make_images(self.images, self.cfg.layouts_per_step, self.cfg.seed * 10 ** 7 + self.step_count)
        rng = torch.Generator().manual_seed(self.cfg.seed * 10 ** 7 + self.step_count)
        loss = masked_loss(self.model, self.encode([Layout.of(s) for s in data.scenes]),
                           torch.from_numpy(np.stack([self.codebook.encode(i) for i in data.images])), rng)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        return {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0]}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        layouts = [Layout.of(s) for s in self.held.scenes]
        batch = self.encode(layouts)
        tokens = torch.from_numpy(np.stack([self.codebook.encode(i) for i in self.held.images]))
        loss = masked_loss(self.model, batch, tokens, torch.Generator().manual_seed(0), ratio=0.5)
        rollout = sample(self.model, batch, self.cfg.sample_steps, generator=torch.Generator().manual_seed(0))
        images = np.stack([self.codebook.decode(t) for t in rollout.tokens.numpy()])
        return {"eval_loss": float(loss), **{f"eval_{k}": v for k, v in judge_all(layouts, images).items()}}

    def save(self, path: Path) -> Path:
        self.tokenizer.save(path)
        return super().save(path)


def masked_loss(model: Smarli, batch, tokens: torch.Tensor, gen: torch.Generator, ratio: float | None = None):
    """Cross-entropy of the masked image tokens; per row a share cos(pi/2 u) is masked (or `ratio`)."""
    b, n = tokens.shape
    share = torch.full((b,), ratio) if ratio is not None else torch.cos(math.pi / 2 * torch.rand(b, generator=gen))
    count = (share * n).ceil().clamp(1, n)
    order = torch.rand(b, n, generator=gen).argsort(1).argsort(1)  # a random rank per position
    masked = order < count[:, None]
    logprobs = model(batch, torch.where(masked, model.config.mask_id, tokens))
    nll = -logprobs.gather(-1, tokens[..., None])[..., 0]
    return nll[masked].mean()


def load_smarli(path: str | Path) -> tuple[Smarli, Tokenizer, CellCodebook]:
    model = load_model_dir(path, expect="smarli")
    return model, Tokenizer.from_dir(path), CellCodebook(model.config.patterns, model.config.cell)


def with_rules(model: Smarli, rules: str) -> Smarli:
    """The same weights under other mask rules (config only)."""
    model.config = replace(model.config, rules=rules)
    return model
