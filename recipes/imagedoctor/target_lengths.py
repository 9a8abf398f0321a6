"""Token lengths of the ImageDoctor bench's target judgements (end of turn included), against a budget.

    python recipes/imagedoctor/target_lengths.py --budget 384

The bench's default data (`reasonrl bench imagedoctor`: 2000 training and 150 held-out images, seed 0)
with the embedded VLM's tokenizer and the task tokens: a judgement cut before `</answer>` scores
nothing, so a generation budget below the longest target cuts some (docs/benchmarks.md, ImageDoctor).
"""

from __future__ import annotations

import argparse

from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.imagedoctor.build import target_ids, task_token_ids
from reasonrl.reward.imagedoctor.experiment import JudgeBenchConfig
from reasonrl.reward.imagedoctor.export import DoctorDataConfig, judge_examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=384, help="generation budget to count targets over")
    parser.add_argument("--out", default="/tmp/imagedoctor-target-lengths", help="where the data is rendered")
    args = parser.parse_args()
    cfg = JudgeBenchConfig()
    tokenizer = Tokenizer.from_dir(cfg.vlm)
    task_token_ids(tokenizer)
    for split, n in (("train", cfg.train_images), ("eval", cfg.eval_images)):
        lengths = [len(target_ids(ex, tokenizer))
                   for ex in judge_examples(DoctorDataConfig(out=args.out, n=n, seed=cfg.seed, split=split))]
        print(f"{split}: {n} targets, longest {max(lengths)} tokens, {sum(x > args.budget for x in lengths)} "
              f"longer than {args.budget}")


if __name__ == "__main__":
    main()
