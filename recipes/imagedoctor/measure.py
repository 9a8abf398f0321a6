"""A saved judge measured again on the bench's held-out images: scores as written and as expected.

    python recipes/imagedoctor/measure.py runs/imagedoctor/sft/model
    python recipes/imagedoctor/measure.py runs/imagedoctor-gen/sft/cold_start/model --generator reasonrl/vision/gen/shipped/smarli --no-maps

`evaluate.judge_metrics` on the held-out images `reasonrl bench imagedoctor` measures (150, seed 0;
`--generator` for a judge trained on a generator's kind of image): PLCC and SRCC of the written
scores (`plcc/*`) and of their expectations over the judge's digit probabilities (`plcc_expected/*`,
expected.py), and the heatmaps' CC and IoU unless `--no-maps` (a cold-start judge writes no task
token). A stage's recorded metrics predate the expected scores when it was trained before them; this
measures it as it is now. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import torch

from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.imagedoctor.build import judge_items
from reasonrl.reward.imagedoctor.evaluate import judge_metrics
from reasonrl.reward.imagedoctor.experiment import JudgeBenchConfig
from reasonrl.reward.imagedoctor.export import DoctorDataConfig, judge_examples
from reasonrl.reward.imagedoctor.model import load_doctor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("judge", help="a saved judge directory (OUT/sft/model, OUT/sft/cold_start/model, OUT/grpo/model)")
    parser.add_argument("--generator", help="the SMARLI model the judge's data was viewed through (bench --generator)")
    parser.add_argument("--no-maps", action="store_true", help="scores only (a cold-start judge)")
    parser.add_argument("--data", default="/tmp/imagedoctor-measure", help="where the held-out images are rendered")
    args = parser.parse_args()
    bench = JudgeBenchConfig()
    data = DoctorDataConfig(out=args.data, n=bench.eval_images, seed=bench.seed, split="eval", generator=args.generator)
    doctor, tokenizer = load_doctor(args.judge), Tokenizer.from_dir(args.judge)
    items = judge_items(judge_examples(data, data.view()), tokenizer, doctor.backbone)
    with torch.no_grad():
        metrics = judge_metrics(doctor, tokenizer, items, bench.max_tokens, maps=not args.no_maps)
    print(json.dumps({"judge": args.judge, "device": f"CPU, {torch.get_num_threads()} threads", **metrics}))


if __name__ == "__main__":
    main()
