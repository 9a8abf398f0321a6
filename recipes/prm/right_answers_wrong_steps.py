"""How many verified-right `sums` samples have a wrong step: what a PRM could remove that the verifier keeps.

    python recipes/prm/right_answers_wrong_steps.py "sums:?min_terms=7&max_terms=12"

Samples what a RAFT round samples (`reasonrl raft`'s defaults: 8 per prompt at temperature 1, up to
128 tokens, seed 0) from the policy on training prompts, and counts the samples the outcome reward
accepts whose exact step labels (`SumsEnvironment.step_labels`) hold a wrong step: a right answer
reached through a wrong running total. Only these could a PRM, ranking among verified samples,
tell apart from the others (docs/benchmarks.md, "Process reward models", RAFT).
"""

from __future__ import annotations

import argparse

import torch

from reasonrl.envs.registry import load_environment
from reasonrl.models import load_model
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.prm.steps import StepFormat, split_steps
from reasonrl.rl.raft import sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env", nargs="?", default="sums:", help="a sums environment spec (default: sums:)")
    parser.add_argument("--policy", default="reasonrl/demo/policy")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        env = load_environment(args.env)
    except ValueError as exc:
        parser.error(str(exc))
    if not hasattr(env, "step_labels"):
        parser.error(f"{args.env}: this environment has no exact step labels (sums: has)")
    model, tokenizer = load_model(args.policy, dtype=torch.float32), Tokenizer.from_dir(args.policy)
    fmt = StepFormat(delimiter=env.step_delimiter)  # a sums solution's steps: one per running total
    samples = right = wrong_step = 0
    for request in sample(model, tokenizer, env.prompts(args.prompts), args.samples, 1.0, 128, 0):
        for text in request.texts:
            samples += 1
            if env.rewards([request.prompt], [text])[0] < 0.5:
                continue
            right += 1
            wrong_step += min(env.step_labels(request.prompt, [s.text for s in split_steps(text, fmt)]), default=1) == 0
    print(f"{args.env}: {samples} samples, {right} the outcome reward accepts, {wrong_step} of those with a wrong step "
          f"({wrong_step / max(right, 1):.1%})")


if __name__ == "__main__":
    main()
