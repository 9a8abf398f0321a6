"""Reproduce the embedded small VLM: `python -m reasonrl.demo.vlm_policy --out DIR`.

A tiny Qwen2.5-VL-architecture model (vision tower, 2x2 merger, M-RoPE decoder) with its own
tokenizer, trained from scratch here on the shapes world in two SFT stages (`reasonrl sft`'s loop):

1. captioning: "Describe the image." -> the scene's caption, so that the vision tower learns to
   see colours, shapes, sizes and where things are;
2. visual question answering on deliberately imperfect traces: the worked form describes the
   scene (its caption) and then boxes the answer; on scenes of `lazy_from` objects or more, most
   traces skip the description and box a guess (a fixed answer per question type). A policy
   fine-tuned on them guesses on busy scenes although it has seen, and can sample, the worked
   form that would have been right. RL has that to fix (`recipes/shapes-vqa.yaml`).

Its prompts are the `shapes` environment's (an image and a question ending in "Put the answer in
\\boxed{}."), rendered with the checkpoint's chat template.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reasonrl.envs.shapes import INSTRUCTION, ShapesVQAConfig, ShapesVQAEnvironment, vqa_prompt
from reasonrl.models import load_model
from reasonrl.models.chat import ChatEncoder
from reasonrl.models.loader import save_model
from reasonrl.models.tiny_vlm import make_vlm_checkpoint, make_vlm_tokenizer
from reasonrl.rl.sft import SFTConfig, sft_example, train_sft
from reasonrl.vision.world import SceneConfig, caption, render, sample_scene

SHIPPED = Path(__file__).parent / "vlm"
FAMILIES = ("count", "colour", "shape", "exists")
ENV = ShapesVQAConfig(families=FAMILIES, max_objects=4)
"""The environment the policy is made for: `shapes:?families=count,colour,shape,exists&max_objects=4`."""
GUESS = {"number": "2", "colour": "red", "shape": "circle", "yes_no": "yes"}
ARCH = dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, vision_hidden_size=64, vision_depth=2,
            vision_heads=2)


@dataclass
class VLMPolicyConfig:
    caption_steps: int = 800
    """SFT steps on captions (stage 1)."""
    vqa_steps: int = 800
    """SFT steps on the imperfect VQA traces (stage 2)."""
    num_scenes: int = 4000
    """Scenes rendered for each stage's data."""
    lazy_from: int = 3
    """Scenes with at least this many objects get a guessed answer ..."""
    lazy: float = 0.7
    """... with this probability."""
    lr: float = 3e-3
    """Peak learning rate of both stages."""
    seed: int = 0
    """Seeds scenes, traces, weights and data order."""


def caption_rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    cfg = SceneConfig(min_objects=ENV.min_objects, max_objects=ENV.max_objects)
    rows = []
    for _ in range(n):
        scene = sample_scene(rng, cfg)
        rows.append({"prompt": [{"role": "user", "content": [{"type": "image", "image": render(scene).image},
                                                             {"type": "text", "text": "Describe the image."}]}],
                     "response": caption(scene)})
    return rows


def vqa_rows(n: int, cfg: VLMPolicyConfig) -> list[dict]:
    """The environment's training prompts with worked responses (the caption, then the answer) or
    lazy ones (a guess) on busy scenes."""
    rng = random.Random(cfg.seed)
    rows = []
    for problem in ShapesVQAEnvironment(ENV).problems(n, seed=cfg.seed + 7):
        prompt = vqa_prompt(problem)
        lazy = prompt.metadata["objects"] >= cfg.lazy_from and rng.random() < cfg.lazy
        answer = GUESS[prompt.metadata["answer_type"]] if lazy else prompt.answer
        response = f"\\boxed{{{answer}}}" if lazy else f"{caption(problem.scene)} \\boxed{{{answer}}}"
        rows.append({"prompt": prompt.messages, "response": response, "objects": prompt.metadata["objects"]})
    return rows


def make_vlm_policy(out: str | Path, cfg: VLMPolicyConfig = VLMPolicyConfig(), log=None) -> Path:
    captions, vqa = caption_rows(cfg.num_scenes, cfg.seed), vqa_rows(cfg.num_scenes, cfg)
    corpus = ([r["response"] for r in captions[:1000]] + [r["response"] for r in vqa[:1000]]
              + [p["text"] for r in vqa[:1000] for p in r["prompt"][0]["content"] if p["type"] == "text"]
              + ["Describe the image.", INSTRUCTION])
    tok = make_vlm_tokenizer(corpus, vocab_size=400)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(make_vlm_checkpoint(Path(tmp) / "base", tok, seed=cfg.seed, **ARCH))
    encoder = ChatEncoder(tok, model)
    for rows, steps in ((captions, cfg.caption_steps), (vqa, cfg.vqa_steps)):
        data = [sft_example(r["prompt"], r["response"], encoder) for r in rows]
        sft = SFTConfig(epochs=steps * 32 / len(data), lr=cfg.lr, samples_per_step=32, warmup_steps=10, seed=cfg.seed)
        train_sft(model, data, sft, log)
    return save_model(model, out, tok)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(SHIPPED))
    p.add_argument("--caption-steps", type=int, default=VLMPolicyConfig.caption_steps)
    p.add_argument("--vqa-steps", type=int, default=VLMPolicyConfig.vqa_steps)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    def log(step, steps, loss, seconds):
        if step % 50 == 0 or step == steps:
            print(f"sft {step}/{steps} loss {loss:.3f} ({seconds:.0f}s)", file=sys.stderr, flush=True)

    cfg = VLMPolicyConfig(caption_steps=args.caption_steps, vqa_steps=args.vqa_steps, seed=args.seed)
    print(f"saved {make_vlm_policy(args.out, cfg, log)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
