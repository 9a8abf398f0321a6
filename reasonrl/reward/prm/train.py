"""Training a PRM: per-step cross-entropy at the separators, with ORM initialisation and negative up-sampling.

Paper: Athena-PRM (arXiv 2506.09532). The PRM classifies every step as correct or not (cross-entropy
on the head's two logits at each step's separator). Two tricks: initialise from an outcome reward
model (the same network first trained on outcome labels), and up-sample negative steps.

Where this departs from it:
- ORM initialisation is a first phase of the same run, `orm_init_epochs` on outcome labels (the
  label of a solution's last step is its outcome, earlier steps unlabelled), then the step labels,
  with a fresh optimizer and schedule; the paper trains a separate ORM first. Same weights either way.
- Negative up-sampling repeats each solution holding a step labelled wrong `negative_upsample`
  times per epoch (the paper does not give its ratio).
- Steps without a label (the completers disagree, `labels.py`) are left out of the loss; soft MC
  labels train with the same cross-entropy against a target in [0, 1].
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from reasonrl.reward.prm.labels import SOURCES, Source, labels_of
from reasonrl.reward.prm.scoring import Encoded, PRMScorer
from reasonrl.rl.batch import token_batches
from reasonrl.rl.config import OptimSection
from reasonrl.rl.update import make_optimizer, trainable


@dataclass
class PRMTrainConfig:
    labels: Source = "consistent"
    """Step labels to train on: exact (the environment's), outcome (an ORM), weak, strong, consistent."""
    completions: int | None = None
    """MC labels from the first n continuations per completer (default: all that were stored)."""
    soft: bool = False
    """weak/strong labels: the success rate of the continuations instead of any-success."""
    orm_init_epochs: float = 0.0
    """ORM initialisation: epochs on outcome labels before the step labels (0: off)."""
    negative_upsample: int = 1
    """Solutions holding a step labelled wrong are repeated this many times per epoch (1: off)."""
    epochs: float = 3.0
    """Passes over the (up-sampled) labelled solutions."""
    lr: float = 1e-3
    """Peak learning rate of AdamW (linear warm-up, then cosine)."""
    warmup_steps: int = 10
    """Linear warm-up over this many optimizer steps."""
    samples_per_step: int = 32
    """Solutions per optimizer step."""
    max_tokens_per_microbatch: int = 16384
    """Padded tokens per forward/backward; larger steps accumulate gradients."""
    grad_clip: float = 1.0
    """Clip the gradient's global norm to this."""
    seed: int = 0
    """Seeds the data order and the head's initialisation."""

    def __post_init__(self):
        if self.labels not in SOURCES:
            raise ValueError(f"labels must be one of {', '.join(SOURCES)}, got {self.labels!r}")
        if not isinstance(self.negative_upsample, int) or self.negative_upsample < 1:
            raise ValueError(f"negative_upsample must be an integer >= 1, got {self.negative_upsample!r}")
        if self.completions is not None and (not isinstance(self.completions, int) or self.completions < 1):
            raise ValueError(f"completions must be an integer >= 1 (or unset: all), got {self.completions!r}")
        if self.soft and self.labels not in ("weak", "strong"):
            raise ValueError(f"soft labels are the success rate of one completer's continuations (labels weak or "
                             f"strong); labels {self.labels} have none, so soft would change nothing")
        if self.epochs <= 0 or self.orm_init_epochs < 0:
            raise ValueError(f"epochs must be > 0 and orm_init_epochs >= 0, got {self.epochs}, {self.orm_init_epochs}")

    def optim(self) -> OptimSection:
        return OptimSection(lr=self.lr, grad_clip=self.grad_clip, warmup_steps=self.warmup_steps, schedule="cosine",
                            max_tokens_per_microbatch=self.max_tokens_per_microbatch)


@dataclass
class Example:
    encoded: Encoded
    targets: list[float | None]  # one per seen step; None: not in the loss


def examples(scorer: PRMScorer, rows: Sequence[dict[str, Any]], source: Source, n: int | None = None,
             soft: bool = False) -> list[Example]:
    """Encoded solutions with their targets; solutions with no labelled seen step are left out."""
    out = []
    for row in rows:
        enc = scorer.encode(row["prompt"], row["steps"])
        targets = labels_of(row, source, n, hard=not soft)[:len(enc.positions)]
        if any(t is not None for t in targets):
            out.append(Example(enc, targets))
    return out


def upsample(data: list[Example], factor: int) -> list[Example]:
    """Each example holding a negative target (< 0.5) `factor` times, the others once."""
    return [e for e in data for _ in range(factor if any(t is not None and t < 0.5 for t in e.targets) else 1)]


def step_loss(scorer: PRMScorer, batch: Sequence[Example]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the labelled steps of a micro-batch, and how many there are."""
    logits = scorer.logits([e.encoded for e in batch])
    targets = [t for e in batch for t in e.targets]
    keep = torch.tensor([t is not None for t in targets], device=logits.device)
    y = torch.tensor([t if t is not None else 0.0 for t in targets], device=logits.device)
    logp = logits.float().log_softmax(-1)  # (K, 2): wrong, right
    loss = -(y * logp[:, 1] + (1 - y) * logp[:, 0])
    return loss[keep].sum(), int(keep.sum())


def train_phase(scorer: PRMScorer, data: list[Example], cfg: PRMTrainConfig, epochs: float, log=None) -> list[float]:
    """Train the PRM in place on `data` (not empty); the mean step loss of every optimizer step."""
    if not data:  # an empty order never fills a batch
        raise ValueError("no labelled solution to train on")
    prm, rng = scorer.prm, random.Random(cfg.seed)
    steps = max(1, math.ceil(len(data) * epochs / cfg.samples_per_step))
    optimizer, scheduler = make_optimizer(trainable(prm), cfg.optim(), steps)
    order, losses, start = [], [], time.perf_counter()
    for step in range(steps):
        while len(order) < cfg.samples_per_step:
            order += rng.sample(range(len(data)), len(data))
        batch, order = [data[i] for i in order[:cfg.samples_per_step]], order[cfg.samples_per_step:]
        losses.append(_update(scorer, batch, cfg, optimizer, scheduler))
        if log is not None and (step % 20 == 0 or step == steps - 1):
            log(f"step {step + 1}/{steps} loss {losses[-1]:.4f} ({time.perf_counter() - start:.0f}s)")
    prm.eval()
    return losses


def _update(scorer: PRMScorer, batch: list[Example], cfg: PRMTrainConfig, optimizer, scheduler) -> float:
    scorer.prm.train()
    optimizer.zero_grad(set_to_none=True)
    total, count = 0.0, 0
    for idx in token_batches([e.encoded.length for e in batch], cfg.max_tokens_per_microbatch):
        loss, n = step_loss(scorer, [batch[i] for i in idx])
        loss.backward()
        total, count = total + loss.item(), count + n
    for p in trainable(scorer.prm):
        if p.grad is not None:
            p.grad /= max(count, 1)
    torch.nn.utils.clip_grad_norm_(trainable(scorer.prm), cfg.grad_clip)
    optimizer.step()
    scheduler.step()
    return total / max(count, 1)


def train_prm(scorer: PRMScorer, rows: Sequence[dict[str, Any]], cfg: PRMTrainConfig, log=None) -> dict[str, Any]:
    """ORM initialisation (when asked), then the step labels, negative solutions up-sampled."""
    torch.manual_seed(cfg.seed)
    history: dict[str, Any] = {}
    data = upsample(examples(scorer, rows, cfg.labels, cfg.completions, cfg.soft), cfg.negative_upsample)
    if not data:
        raise ValueError(f"no solution has a {cfg.labels} label on a step the PRM sees")
    if cfg.orm_init_epochs > 0:
        orm = upsample(examples(scorer, rows, "outcome"), cfg.negative_upsample)
        if not orm:  # an outcome label is on a solution's last step only
            raise ValueError(f"ORM initialisation (orm_init_epochs={cfg.orm_init_epochs}) has nothing to train on: no "
                             f"solution's last step, which holds its outcome label, fits in the PRM's max_len "
                             f"({scorer.cfg.max_len} tokens); raise max_len or set orm_init_epochs to 0")
        history["orm_loss"] = train_phase(scorer, orm, cfg, cfg.orm_init_epochs, log)
    history["loss"] = train_phase(scorer, data, cfg, cfg.epochs, log)
    history["examples"] = len(data)
    return history
