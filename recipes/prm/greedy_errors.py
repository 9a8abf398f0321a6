"""What kind of mistakes each policy makes on held-out hard `sums` problems, greedy.

    python recipes/prm/greedy_errors.py reasonrl/demo/policy runs/prm/r6-raft-lenient-outcome ...

For each policy: how many of 100 held-out problems (`sums:?min_terms=7&max_terms=12`, eval split,
seed 123) it answers right, how many answers are guesses (a box with no running total), and how
the worked wrong ones went wrong: terms skipped (fewer running totals than terms - 1), extra
steps, or a wrong total with every term there (a slip in the arithmetic or a wrong term read).
"""

from __future__ import annotations

import argparse

import torch

from reasonrl.envs.registry import load_environment
from reasonrl.envs.sums import terms_of
from reasonrl.models import load_model
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.prm.steps import StepFormat, split_steps
from reasonrl.rl.raft import sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+")
    parser.add_argument("--problems", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = load_environment("sums:?min_terms=7&max_terms=12")
    prompts = env.prompts(args.problems, seed=123, split="eval")
    fmt = StepFormat(delimiter=env.step_delimiter)
    for path in args.policies:
        model, tokenizer = load_model(path, dtype=torch.float32), Tokenizer.from_dir(path)
        texts = [r.texts[0] for r in sample(model, tokenizer, prompts, 1, 0.0, 128, "eval")]
        kinds = {"guess": 0, "terms skipped": 0, "extra steps": 0, "wrong total": 0}
        right = 0
        for prompt, text in zip(prompts, texts):
            if env.score(prompt, text):
                right += 1
                continue
            totals = sum("+" in s.text for s in split_steps(text, fmt))
            need = len(terms_of(prompt)) - 1
            kind = "guess" if totals == 0 else "terms skipped" if totals < need else "extra steps" if totals > need \
                else "wrong total"
            kinds[kind] += 1
        print(f"{path}: {right} of {len(prompts)} right; wrong: " + ", ".join(f"{k} {v}" for k, v in kinds.items()))


if __name__ == "__main__":
    main()
