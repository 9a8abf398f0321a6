"""Layout GRPO with part of a SMARLI model frozen: does the rest learn from the oracle's reward?

    python recipes/smarli/partial_grpo.py runs/images/smarli-causal --train no-embeddings
    python recipes/smarli/partial_grpo.py runs/images/smarli-causal --train blocks --lr 5e-5

The trainer's step (vision/smarli/grpo.py: the oracle detector's layout reward, no in-box bonus, 4
layouts x 4 images a step by default) with `requires_grad` off on every parameter outside `--train`:
`no-embeddings` freezes the input embeddings (positions, segments, boxes, text and cell embeddings, the
special tokens; what a LoRA on the transformer would leave untouched), `blocks` trains the transformer
blocks alone, `all` is the trainer as it is. Prints the held-out layout reward (and shape accuracy and
mIoU) before training and every `--eval-every` steps, one JSON object per line.
"""

from __future__ import annotations

import argparse
import json

import torch

from reasonrl.rl.advantages import AdvantageConfig
from reasonrl.rl.config import OptimSection
from reasonrl.rl.losses import LossConfig
from reasonrl.vision.smarli.grpo import LayoutGRPOConfig, LayoutGRPOJob

EMBEDDINGS = ("image_pos", "text_embed", "text_pos", "segment", "box_embed", "pattern_embed", "colour_embed", "special")
PARTS = ("all", "no-embeddings", "blocks")


def trains(name: str, part: str) -> bool:
    """Whether parameter `name` trains under `part` (PARTS)."""
    if part == "no-embeddings":
        return name.split(".")[0] not in EMBEDDINGS
    return part == "all" or name.startswith("blocks.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", help="a SMARLI model directory")
    parser.add_argument("--train", default="no-embeddings", choices=PARTS)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument("--eval-layouts", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    job = LayoutGRPOJob(LayoutGRPOConfig(policy=args.policy, in_box_weight=1.0, eval_layouts=args.eval_layouts,
                                         steps=args.steps, layouts_per_step=4, samples_per_layout=4),
                        LossConfig(), AdvantageConfig(), OptimSection(lr=args.lr, grad_clip=1.0))
    for name, p in job.model.named_parameters():
        p.requires_grad_(trains(name, args.train))  # a frozen parameter gets no gradient, so AdamW skips it
    trained = sum(p.numel() for p in job.model.parameters() if p.requires_grad)
    print(json.dumps({"train": args.train, "trained_parameters": trained}), flush=True)
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            e = job.evaluate()
            print(json.dumps({"step": step, "reward": e["eval_reward_mean"], "shape": e["eval_shape"],
                              "miou": e["eval_miou"]}), flush=True)
        if step < args.steps:
            job.train_step()


if __name__ == "__main__":
    main()
