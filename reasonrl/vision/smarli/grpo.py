"""Layout GRPO: SMARLI's post-training on layout rewards, with reasonrl's advantages and losses.

    rollout (next-set sampling, each step's state and kept set recorded) -> reward (oracle
    detector: 0.5 attribute + 0.5 mIoU + 0.1 precision; optionally a realism score) -> advantage
    (the registry's estimator over the G samples of each layout) -> per-token weights (1.2 on image
    tokens inside some box) -> loss (the registry's policy loss on the replayed log-probs of the
    current policy, the rollout's as old, the reference's for the KL) -> AdamW step

The step reads like the text trainer's (rl/trainer.py) and runs under the same run machinery
(gen/run.py: run directory, metrics.jsonl, checkpoints, resume, report). What differs is forced
by next-set generation: log-probabilities come from replaying recorded states (sampler.replay),
not from one causal pass over the response.

Paper settings (SMARLI): G = 4, 10 generation steps, lr 1e-4, 100 iterations, LoRA rank 256,
beta = 0, CFG 5. Here: full fine-tuning of the tiny model, 8 steps, no CFG; `reward` picks the
layout reward, the quality score alone (the paper's HPS-only ablation) or their sum.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from reasonrl.config import finite_numbers, min_ints
from reasonrl.rl.advantages import AdvantageConfig, get_advantage
from reasonrl.rl.config import OptimSection
from reasonrl.rl.losses import LossConfig, get_loss
from reasonrl.rl.update import make_optimizer
from reasonrl.vision.gen.images import make_images
from reasonrl.vision.gen.io import load_model_dir
from reasonrl.vision.gen.run import JobState

from .judge import judge, judge_all
from .layout import Layout, encode_layouts
from .realism import RealismClassifier
from .sampler import replay, sample
from .train import load_smarli, smarli_images

HELD_OUT_SEED = 5 * 10 ** 6


@dataclass
class LayoutGRPOConfig:
    policy: str = ""
    """SMARLI model directory to start from (`reasonrl train-image smarli`)."""
    reward: Literal["layout", "quality", "both"] = "layout"
    """layout: 0.5 attribute + 0.5 mIoU + 0.1 precision; quality: the realism score alone; both: their sum."""
    realism: str = ""
    """Realism classifier directory (`reasonrl train-image realism`), for reward quality or both."""
    quality_weight: float = 1.0
    """Weight of the realism score in reward `both`."""
    steps: int = 100
    """Training steps (rollout + update each)."""
    layouts_per_step: int = 8
    """Layouts (prompts) per step."""
    samples_per_layout: int = 4
    """G, samples per layout."""
    sample_steps: int = 8
    """Next-set steps per image."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    in_box_weight: float = 1.2
    """Advantage weight of image tokens inside some layout box (others: 1)."""
    eval_layouts: int = 64
    """Held-out layouts for the layout metrics before, during and after."""
    seed: int = 0
    """Seeds the layouts and the draws."""

    def __post_init__(self):
        if not self.policy:
            raise ValueError("policy is required (a SMARLI model directory)")
        if self.reward != "layout" and not self.realism:
            raise ValueError(f"reward {self.reward!r} needs a realism classifier (realism)")
        min_ints(self, dict.fromkeys(("steps", "layouts_per_step", "sample_steps", "eval_layouts"), 1))
        if not isinstance(self.samples_per_layout, int) or self.samples_per_layout < 2:
            raise ValueError(f"samples_per_layout must be >= 2 (a group of one has no advantage to learn from), "
                             f"got {self.samples_per_layout!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        finite_numbers(self, above={"in_box_weight": 0})  # a negative one flips the in-box signal


class LayoutGRPOJob(JobState):
    def __init__(self, cfg: LayoutGRPOConfig, loss: LossConfig, advantage: AdvantageConfig, optim: OptimSection):
        torch.manual_seed(cfg.seed)
        self.cfg, self.loss_cfg, self.adv_cfg, self.optim = cfg, loss, advantage, optim
        self.steps, self.step_count = cfg.steps, 0
        self.model, self.tokenizer, self.codebook = load_smarli(cfg.policy)
        self.reference = copy.deepcopy(self.model).requires_grad_(False).eval() if loss.beta > 0 else None
        self.realism: RealismClassifier | None = load_model_dir(cfg.realism, expect="realism") if cfg.realism else None
        self.loss_fn, self.advantage_fn = get_loss(loss.name), get_advantage(advantage.name)
        self.optimizer, self.scheduler = make_optimizer(self.model.parameters(), optim, cfg.steps)
        self.images = smarli_images(self.model.config.grid * self.model.config.cell)
        self.held = [Layout.of(s) for s in make_images(self.images, cfg.eval_layouts, HELD_OUT_SEED + cfg.seed).scenes]

    def encode(self, layouts: list[Layout]):
        c = self.model.config
        return encode_layouts(layouts, self.tokenizer, c.prompt_slots, c.layout_slots, c.grid, c.rules)

    def rewards(self, layouts: list[Layout], images: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        scores = [judge(lay, img) for lay, img in zip(layouts, images)]
        layout = np.array([s["reward"] for s in scores])
        quality = self.realism.score(images) if self.realism is not None else np.zeros(len(images))
        total = {"layout": layout, "quality": quality, "both": layout + self.cfg.quality_weight * quality}[self.cfg.reward]
        stats = {k: _nanmean([s[k] for s in scores]) for k in ("miou", "attribute", "precision", "leakage")}
        return torch.tensor(total, dtype=torch.float32), {**stats, "layout_reward": float(layout.mean()),
                                                          "quality": float(quality.mean())}

    def train_step(self) -> dict[str, float]:
        cfg, g = self.cfg, self.cfg.samples_per_layout
        scenes = make_images(self.images, cfg.layouts_per_step, cfg.seed * 10 ** 7 + self.step_count).scenes
        layouts = [Layout.of(s) for s in scenes for _ in range(g)]
        batch = self.encode(layouts)
        gen = torch.Generator().manual_seed(cfg.seed * 10 ** 7 + self.step_count)
        rollout = sample(self.model.eval(), batch, cfg.sample_steps, cfg.temperature, generator=gen)
        images = np.stack([self.codebook.decode(t) for t in rollout.tokens.numpy()])
        rewards, stats = self.rewards(layouts, images)
        groups = torch.arange(len(layouts)) // g
        update = self.update(batch, rollout, self.token_advantages(rewards, groups, batch))
        self.step_count += 1
        return {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()), **stats, **update,
                "lr": self.scheduler.get_last_lr()[0]}

    def token_advantages(self, rewards: torch.Tensor, groups: torch.Tensor, batch) -> torch.Tensor:
        """(B, N) advantage of each image token: its sample's, weighted by `token_weights`."""
        return self.advantage_fn(rewards, groups, self.adv_cfg)[:, None] * self.token_weights(batch)

    def token_weights(self, batch) -> torch.Tensor:
        """(B, N) weight of each image token's advantage: in_box_weight inside some layout box, else 1
        (a judge's dense reward overrides it, reward/imagedoctor/dense.py)."""
        return torch.where(batch.cover, self.cfg.in_box_weight, 1.0)

    def update(self, batch, rollout, token_adv: torch.Tensor) -> dict[str, float]:
        """ppo_epochs passes of minibatches_per_epoch optimizer steps over this step's samples."""
        self.model.train()
        mask = torch.ones_like(token_adv, dtype=torch.bool)
        ref = replay(self.reference, batch, rollout).detach() if self.reference is not None else None
        stats, n = {}, 0
        for _ in range(self.optim.ppo_epochs):
            for rows in torch.arange(len(token_adv)).chunk(self.optim.minibatches_per_epoch):
                part = _rows(batch, rows), _rollout_rows(rollout, rows)
                logp = replay(self.model, *part)
                loss, s = self.loss_fn(logp, rollout.logp[rows], None, token_adv[rows], mask[rows], self.loss_cfg,
                                       ref_logp=None if ref is None else ref[rows])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                s["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
                self.optimizer.step()
                s["policy_loss"] = loss.detach()
                stats = {k: stats.get(k, 0.0) + float(v) for k, v in s.items() if k != "denominator"}
                n += 1
        self.scheduler.step()
        self.model.eval()
        return {k: v / n for k, v in stats.items()}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        rollout = sample(self.model.eval(), self.encode(self.held), self.cfg.sample_steps,
                         generator=torch.Generator().manual_seed(0))
        images = np.stack([self.codebook.decode(t) for t in rollout.tokens.numpy()])
        out = {f"eval_{k}": v for k, v in judge_all(self.held, images).items()}
        out["eval_reward_mean"] = float(self.rewards(self.held, images)[0].mean())
        if self.realism is not None:
            out["eval_quality"] = float(self.realism.score(images).mean())
        return out

    def save(self, path: Path) -> Path:
        self.tokenizer.save(path)
        return super().save(path)


def _nanmean(values: list[float]) -> float:
    """Mean over the defined values (leakage is undefined on one-object layouts); nan if none is."""
    kept = [v for v in values if not np.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def _rows(batch, rows: torch.Tensor):
    from dataclasses import fields, replace

    return replace(batch, **{f.name: getattr(batch, f.name)[rows] for f in fields(batch)})


def _rollout_rows(rollout, rows: torch.Tensor):
    from .sampler import Rollout

    return Rollout(rollout.tokens[rows], [s[rows] for s in rollout.states], [k[rows] for k in rollout.kept],
                   rollout.logp[rows], rollout.temperature)
