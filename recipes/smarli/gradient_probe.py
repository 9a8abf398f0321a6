"""Does layout GRPO's gradient point anywhere? Its agreement across independent batches, and the reward along it.

    python recipes/smarli/gradient_probe.py runs/images/smarli-causal
    python recipes/smarli/gradient_probe.py runs/images/smarli-causal --reward tokens
    python recipes/smarli/gradient_probe.py runs/images/smarli-causal --along 0.1 -0.1 0.3 -0.3

For a SMARLI model, the policy gradient of one layout-GRPO step (vision/smarli/grpo.py: its sampler,
replay, group advantages and loss; no in-box bonus) on `--batches` independent batches of `--layouts`
layouts x `--group` images each, with the oracle detector's layout reward, or with `--reward tokens`
(the share of the image's even token ids: a reward that decomposes over tokens, for comparison).
Reported: the cosine between every two batches' gradients and between the sums of the two halves
(near 1, a direction more samples would confirm; near 0, noise at this batch size); the parameters
with the largest share of the summed gradient's squared norm; and, for each step e of `--along`, the
mean layout reward of `--eval-layouts` x 4 fresh images (the same layouts and draws for every e) with
the parameters moved by e along the summed gradient's unit direction (e > 0 descends the loss). Prints
one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from reasonrl.rl.advantages import AdvantageConfig
from reasonrl.rl.config import OptimSection
from reasonrl.rl.losses import LossConfig
from reasonrl.vision.gen.images import make_images
from reasonrl.vision.smarli.grpo import LayoutGRPOConfig, LayoutGRPOJob
from reasonrl.vision.smarli.layout import Layout
from reasonrl.vision.smarli.sampler import replay, sample

TRAIN_SEED, EVAL_SEED = 4_242_000, 777_000  # away from the trainer's layouts (seed x 10^7 + step) and held-out set


def gradient(job: LayoutGRPOJob, batch_seed: int, layouts: int, group: int, reward: str) -> tuple[torch.Tensor, float]:
    """One batch's flattened policy gradient and its mean reward."""
    lays = [Layout.of(s) for s in make_images(job.images, layouts, TRAIN_SEED + batch_seed).scenes for _ in range(group)]
    batch = job.encode(lays)
    rollout = sample(job.model.eval(), batch, job.cfg.sample_steps, generator=torch.Generator().manual_seed(batch_seed))
    if reward == "tokens":
        rewards = (rollout.tokens % 2 == 0).float().mean(1)
    else:
        rewards = job.rewards(lays, np.stack([job.codebook.decode(t) for t in rollout.tokens.numpy()]))[0]
    adv = job.token_advantages(rewards, torch.arange(len(lays)) // group, batch)
    loss, _ = job.loss_fn(replay(job.model.train(), batch, rollout), rollout.logp, None, adv,
                          torch.ones_like(adv, dtype=torch.bool), job.loss_cfg)
    job.model.zero_grad(set_to_none=True)
    loss.backward()
    job.model.eval()
    return torch.cat([p.grad.flatten() for p in job.model.parameters()]), float(rewards.mean())


@torch.no_grad()
def eval_reward(job: LayoutGRPOJob, layouts: int) -> float:
    lays = [Layout.of(s) for s in make_images(job.images, layouts, EVAL_SEED).scenes for _ in range(4)]
    rollout = sample(job.model.eval(), job.encode(lays), job.cfg.sample_steps, generator=torch.Generator().manual_seed(0))
    return float(job.rewards(lays, np.stack([job.codebook.decode(t) for t in rollout.tokens.numpy()]))[0].mean())


def probe_job(policy: str) -> LayoutGRPOJob:
    """The trainer's step as the probe takes it: its defaults, no in-box bonus."""
    return LayoutGRPOJob(LayoutGRPOConfig(policy=policy, in_box_weight=1.0, eval_layouts=1), LossConfig(),
                         AdvantageConfig(), OptimSection())


def probe(policy: str, batches: int = 4, layouts: int = 16, group: int = 8, reward: str = "layout",
          along: tuple[float, ...] = (), eval_layouts: int = 64, top: int = 6) -> dict:
    if batches < 2 or batches % 2:
        raise ValueError(f"--batches must be even and at least 2 (two halves are compared), got {batches}")
    if reward not in ("layout", "tokens"):
        raise ValueError(f"--reward: unknown {reward!r}; known: layout, tokens")
    job = probe_job(policy)
    grads, rewards = zip(*(gradient(job, b, layouts, group, reward) for b in range(batches)))
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()).clamp(min=1e-30))  # noqa: E731
    half = batches // 2
    total = sum(grads)
    shares, start = [], 0
    for name, p in job.model.named_parameters():
        part = total[start: start + p.numel()]
        shares.append({"parameter": name, "numel": p.numel(), "share": float(part.norm() ** 2 / total.norm() ** 2)})
        start += p.numel()
    out = {"policy": policy, "reward": reward, "samples_per_batch": layouts * group, "batch_rewards": list(rewards),
           "cosines": [cos(grads[i], grads[j]) for i in range(batches) for j in range(i + 1, batches)],
           "halves_cosine": cos(sum(grads[:half]), sum(grads[half:])), "gradient_norm": float(total.norm()),
           "largest_shares": sorted(shares, key=lambda s: -s["share"])[:top]}
    if along:
        params = list(job.model.parameters())
        base = [p.detach().clone() for p in params]
        unit = total / total.norm()
        out["along"] = []
        for e in along:
            with torch.no_grad():
                start = 0
                for p, b in zip(params, base):
                    p.copy_(b - e * unit[start: start + p.numel()].view_as(p))
                    start += p.numel()
            out["along"].append({"step": e, "eval_reward": eval_reward(job, eval_layouts)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", help="a SMARLI model directory")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--layouts", type=int, default=16, help="layouts per batch")
    parser.add_argument("--group", type=int, default=8, help="images per layout")
    parser.add_argument("--reward", default="layout", help="layout (the oracle's) or tokens (share of even token ids)")
    parser.add_argument("--along", type=float, nargs="*", default=(), help="steps along the summed gradient's direction")
    parser.add_argument("--eval-layouts", type=int, default=64, help="layouts (x 4 images) per point along it")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(json.dumps(probe(args.policy, args.batches, args.layouts, args.group, args.reward, tuple(args.along),
                           args.eval_layouts), indent=1))


if __name__ == "__main__":
    main()
