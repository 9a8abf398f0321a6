"""An LVR checkpoint measured with each latent feedback (and exit), whatever it was trained for.

    python recipes/lvr/feedback.py runs/lvr/sft-lvr --feedback state image_token
    python recipes/lvr/feedback.py runs/lvr/sft-lvr --feedback image_token --exit end_token

The experiment's measurements (vision/lvr/experiment.py `measure`: accuracy, the interventions,
reconstruction and pointing, the steps sweep) on its held-out questions (test split, `--seed`,
`--eval-problems`, the scenes `--image-size`, `--min-objects` and `--max-objects` say: give those the
checkpoint was trained on), once per feedback: "state"
feeds each latent the model's scaled final state (LVR), "image_token" the prompt's image token
nearest to it (engine/latent.py); `--exit` likewise ("steps": after the quota; "end_token": where the
model predicts `<|lvr_end|>`), the checkpoint's own when not given. Prints one JSON line per feedback.
"""

from __future__ import annotations

import argparse
import json

import torch

from reasonrl.engine.latent import EXIT_KEY, EXITS, FEEDBACK_KEY, FEEDBACKS, LatentConfig
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.loader import MASTER_DTYPE
from reasonrl.vision.lvr.env import LVRShapesEnvironment
from reasonrl.vision.lvr.experiment import LVRExperimentConfig, eval_items, measure
from reasonrl.vision.lvr.train import make_examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--feedback", nargs="+", choices=FEEDBACKS, default=list(FEEDBACKS))
    parser.add_argument("--exit", choices=EXITS, help="the exit to serve with (default: the checkpoint's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-problems", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=LVRExperimentConfig.image_size)
    parser.add_argument("--min-objects", type=int, default=LVRExperimentConfig.min_objects)
    parser.add_argument("--max-objects", type=int, default=LVRExperimentConfig.max_objects)
    parser.add_argument("--sweep", type=int, nargs="+", default=[4, 8, 16])
    args = parser.parse_args()
    cfg = LVRExperimentConfig(seed=args.seed, eval_problems=args.eval_problems, image_size=args.image_size,
                              min_objects=args.min_objects, max_objects=args.max_objects, sweep=tuple(args.sweep))
    torch.manual_seed(cfg.seed)
    model, tok = load_model(args.checkpoint, "cpu", MASTER_DTYPE), Tokenizer.from_dir(args.checkpoint)
    env = LVRShapesEnvironment(cfg.scenes())
    latent = LatentConfig.from_tokenizer(tok, steps=cfg.latent_steps)
    problems = env.problems(cfg.eval_problems, seed=cfg.seed, split="test")
    items = eval_items(model, tok, env, make_examples(model, tok, problems, latent), problems)
    if args.exit:
        model.vlm_config.raw[EXIT_KEY] = args.exit
    for feedback in args.feedback:
        model.vlm_config.raw[FEEDBACK_KEY] = feedback  # what the engine reads (LatentConfig.for_model)
        served = model.vlm_config.raw.get(EXIT_KEY, "steps")
        print(json.dumps({"feedback": feedback, "exit": served, **measure(model, tok, items, latent, cfg)}), flush=True)


if __name__ == "__main__":
    main()
