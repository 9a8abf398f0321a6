"""How much of the judge's analytic scores a linear read-out of a model's states recovers (a probe).

    python recipes/imagedoctor/probe_scores.py [--model reasonrl/demo/vlm]

Ridge regression (features standardised, one lambda) from two sets of frozen features of each judge
prompt (the image, then "Judge the image against the caption. Caption: ...") to the four scores and
to "has an artifact": the merged image tokens (mean, standard deviation and all 64 x hidden values),
and the language model's last layer at the prompt (the last position's state and the mean over the
prompt: what the judge writes its answer from). Fitted on the bench's training stream, measured as the
Pearson correlation on its held-out stream (docs/benchmarks.md, ImageDoctor). `--model` takes a
Qwen2.5-VL directory or a saved judge.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from reasonrl.models.loader import MASTER_DTYPE, load_model
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.imagedoctor.build import judge_items
from reasonrl.reward.imagedoctor.evaluate import pearson
from reasonrl.reward.imagedoctor.export import DoctorDataConfig, judge_examples
from reasonrl.reward.imagedoctor.model import load_doctor

TARGETS = ("alignment", "plausibility", "aesthetics", "overall", "has artifact")


@torch.no_grad()
def features(model, tokenizer, split: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image features (n, F), prompt-state features (n, 2 hidden), targets (n, 5)) of n judge prompts."""
    items = judge_items(judge_examples(DoctorDataConfig(out="unused", n=n, split=split)), tokenizer, model)
    image, text, y = [], [], []
    for it in items:
        p = it.prompt
        tokens = model.encode_images(p.pixel_values, p.image_grid_thw)  # (merged tokens, hidden)
        hidden = model.forward_padded(torch.tensor([list(p.input_ids)]), [p], tokens)[0]
        image.append(torch.cat([tokens.mean(0), tokens.std(0), tokens.flatten()]).numpy())
        text.append(torch.cat([hidden[-1], hidden.mean(0)]).numpy())
        y.append([it.scores[k] for k in TARGETS[:4]] + [float(it.maps[1].sum() > 0)])
    return np.array(image), np.array(text), np.array(y)


def ridge(x_fit: np.ndarray, y_fit: np.ndarray, x: np.ndarray, lam: float) -> np.ndarray:
    mu, sd = x_fit.mean(0), x_fit.std(0) + 1e-6
    a = (x_fit - mu) / sd
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (y_fit - y_fit.mean(0)))
    return ((x - mu) / sd) @ w + y_fit.mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reasonrl/demo/vlm", help="a Qwen2.5-VL directory or a saved judge")
    parser.add_argument("--train", type=int, default=1200, help="images the probe is fitted on (training stream)")
    parser.add_argument("--eval", type=int, default=300, help="held-out images it is measured on (eval stream)")
    parser.add_argument("--lam", type=float, default=100.0, help="ridge penalty on the standardised features")
    args = parser.parse_args()
    config = json.loads((Path(args.model) / "config.json").read_text())
    model = (load_doctor(args.model, dtype=MASTER_DTYPE).backbone if "misalignment_token_id" in config
             else load_model(args.model, dtype=MASTER_DTYPE))
    model, tokenizer = model.eval(), Tokenizer.from_dir(args.model)
    fit, held = features(model, tokenizer, "train", args.train), features(model, tokenizer, "eval", args.eval)
    print(f"{args.model}: ridge (lambda {args.lam}) fitted on {args.train}, Pearson r on {args.eval} held out")
    print("| features | " + " | ".join(TARGETS) + " |")
    print("|---" * (len(TARGETS) + 1) + "|")
    for name, k in (("merged image tokens", 0), ("prompt states (last, mean)", 1)):
        pred = ridge(fit[k], fit[2], held[k], args.lam)
        print(f"| {name} | " + " | ".join(f"{pearson(pred[:, j], held[2][:, j]):.3f}" for j in range(len(TARGETS))) + " |")


if __name__ == "__main__":
    main()
