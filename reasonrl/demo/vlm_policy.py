"""Reproduce the embedded small VLM: `python -m reasonrl.demo.vlm_policy --out DIR`.

A tiny Qwen2.5-VL-architecture model (vision tower, 2x2 merger, M-RoPE decoder) with its own
tokenizer, trained from scratch here on 224-pixel shapes-world scenes in three stages:

0. the vision tower alone, with linear heads dropped after, on labels of its merged tokens: each
   object's shape and colour from the tokens it covers max-pooled (`vision_probe.object_cells`)
   and which tokens hold an object's centre; captions alone teach a tower from scratch too little
   about shape (docs/vision.md, "The embedded VLM");
1. captioning, `reasonrl sft`'s loop: "Describe the image." -> the scene's caption;
2. visual question answering on deliberately imperfect traces: the worked form describes the
   scene (its caption) and then boxes the answer; on scenes of `lazy_from` objects or more, most
   traces skip the description and box a guess (a fixed answer per question type). A policy
   fine-tuned on them guesses on busy scenes although it has seen, and can sample, the worked
   form that would have been right. RL has that to fix (`recipes/shapes-vqa.yaml`).

Its prompts are the `shapes` environment's (an image and a question ending in "Put the answer in
\\boxed{}."), rendered with the checkpoint's chat template. Examples are encoded when a step
draws them (a 224-pixel image is 1.2 MB of pixel values), so memory stays flat.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reasonrl.demo.vision_probe import cell_targets, object_cells
from reasonrl.envs.shapes import INSTRUCTION, ShapesVQAConfig, ShapesVQAEnvironment, vqa_prompt
from reasonrl.models import load_model
from reasonrl.models.chat import ChatEncoder
from reasonrl.models.loader import save_model
from reasonrl.models.qwen2_5_vl.processor import preprocess
from reasonrl.models.tiny_vlm import make_vlm_checkpoint, make_vlm_tokenizer
from reasonrl.rl.sft import SFTConfig, sft_example, train_sft
from reasonrl.rollout.sample import Sample
from reasonrl.vision.world import ShapesDataConfig, caption, render, sample_scene
from reasonrl.vision.world.palette import COLOURS
from reasonrl.vision.world.shapes import SHAPES

SHIPPED = Path(__file__).parent / "vlm"
FAMILIES = ("count", "colour", "shape", "exists")
ENV = ShapesVQAConfig(families=FAMILIES, image_size=224, max_objects=4)
"""The environment the policy is made for: `shapes:?families=count,colour,shape,exists&image_size=224&max_objects=4`."""
SCENES = ShapesDataConfig(task="vqa", n=1, image_size=ENV.image_size, min_objects=ENV.min_objects,
                          max_objects=ENV.max_objects).scene_config()
"""The environment's scenes, for stages 0 and 1."""
GUESS = {"number": "2", "colour": "red", "shape": "circle", "yes_no": "yes"}
ARCH = dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, vision_hidden_size=64, vision_depth=2,
            vision_heads=2)


@dataclass
class VLMPolicyConfig:
    tower_steps: int = 700
    """Steps of 32 scenes training the vision tower on per-token labels (stage 0)."""
    tower_lr: float = 1e-3
    """AdamW learning rate of stage 0."""
    caption_steps: int = 900
    """SFT steps of 32 on captions (stage 1), each caption of a fresh scene."""
    vqa_steps: int = 500
    """SFT steps of 32 on the imperfect VQA traces (stage 2)."""
    vqa_problems: int = 4000
    """Distinct VQA problems behind stage 2."""
    lazy_from: int = 3
    """Scenes with at least this many objects get a guessed answer ..."""
    lazy: float = 0.7
    """... with this probability."""
    lr: float = 3e-3
    """Peak learning rate of stages 1 and 2."""
    hidden_size: int = ARCH["hidden_size"]
    """The decoder's width (the vision tower keeps its size; docs/benchmarks.md times a wider one)."""
    num_layers: int = ARCH["num_layers"]
    """The decoder's layers."""
    num_heads: int = ARCH["num_heads"]
    """The decoder's attention heads."""
    num_kv_heads: int = ARCH["num_kv_heads"]
    """The decoder's key-value heads."""
    seed: int = 0
    """Seeds scenes, traces, weights and data order."""


class Drawn(Sequence):
    """`n` examples made when drawn: `make(i)` is called on each access."""

    def __init__(self, n: int, make: Callable[[int], Sample]):
        self.n, self.make = n, make

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        return self.make(i)


def scene_at(i: int, seed: int):
    """The i-th scene of a seeded stream (any i, in any order)."""
    return sample_scene(np.random.default_rng([seed, i]), SCENES)


def caption_row(i: int, seed: int) -> dict:
    scene = scene_at(i, seed)
    return {"prompt": [{"role": "user", "content": [{"type": "image", "image": render(scene).image},
                                                     {"type": "text", "text": "Describe the image."}]}],
            "response": caption(scene)}


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


def pretrain_tower(model, cfg: VLMPolicyConfig, log=None) -> dict[str, float]:
    """Stage 0: the tower and merger with linear heads (dropped after): each object's shape and colour
    from its tokens max-pooled (`object_cells`, cross-entropy), and which tokens hold an object's
    centre (`cell_targets`' last bit, binary cross-entropy). Held-out accuracies at the end."""
    torch.manual_seed(cfg.seed)
    width = model.config.hidden_size
    heads = nn.ModuleDict({"shape": nn.Linear(width, len(SHAPES)), "colour": nn.Linear(width, len(COLOURS)),
                           "centre": nn.Linear(width, 1)})
    opt = torch.optim.AdamW([*model.visual.parameters(), *heads.parameters()], lr=cfg.tower_lr)
    start = time.time()
    for step in range(1, cfg.tower_steps + 1):
        loss, _ = _tower_loss(model, heads, step * 32, 32, cfg.seed + 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log:
            log(step, cfg.tower_steps, loss.item(), time.time() - start)
    with torch.no_grad():
        _, held = _tower_loss(model, heads, 0, 200, cfg.seed + 2)
    model.zero_grad(set_to_none=True)
    return held


def _tower_loss(model, heads: nn.ModuleDict, start: int, n: int, seed: int) -> tuple[torch.Tensor, dict[str, float]]:
    """(summed loss, held-out style accuracies) on scenes start..start+n of a seeded stream."""
    scenes = [scene_at(start + j, seed) for j in range(n)]
    renders = [render(s) for s in scenes]
    tokens = model.encode_images(*preprocess([r.image for r in renders], model.image_config))
    per_image, pooled, labels = tokens.view(n, -1, tokens.shape[-1]), [], []
    for b, (s, r) in enumerate(zip(scenes, renders)):
        for on, shape, colour in object_cells(s, r):
            pooled.append(per_image[b][torch.from_numpy(on)].amax(0))
            labels.append((shape, colour))
    pooled, labels = torch.stack(pooled), torch.tensor(labels)
    centres = torch.from_numpy(np.concatenate([cell_targets(s, r)[:, -1:] for s, r in zip(scenes, renders)]))
    logits = {k: heads[k](pooled) for k in ("shape", "colour")}
    loss = (F.cross_entropy(logits["shape"], labels[:, 0]) + F.cross_entropy(logits["colour"], labels[:, 1])
            + F.binary_cross_entropy_with_logits(heads["centre"](tokens), centres))
    return loss, {f"{k}_accuracy": float((logits[k].argmax(1) == labels[:, i]).float().mean())
                  for i, k in enumerate(("shape", "colour"))}


def make_vlm_policy(out: str | Path, cfg: VLMPolicyConfig = VLMPolicyConfig(), log=None) -> Path:
    vqa = vqa_rows(cfg.vqa_problems, cfg)
    corpus = ([caption(scene_at(i, cfg.seed)) for i in range(1000)] + [r["response"] for r in vqa[:1000]]
              + [p["text"] for r in vqa[:1000] for p in r["prompt"][0]["content"] if p["type"] == "text"]
              + ["Describe the image.", INSTRUCTION])
    tok = make_vlm_tokenizer(corpus, vocab_size=400)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(make_vlm_checkpoint(Path(tmp) / "base", tok, seed=cfg.seed, **{
            **ARCH, **{k: getattr(cfg, k) for k in ("hidden_size", "num_layers", "num_heads", "num_kv_heads")}}))
    held = pretrain_tower(model, cfg, log)
    print(f"tower, held out: {held}", file=sys.stderr, flush=True)
    encoder = ChatEncoder(tok, model)
    captions = Drawn(cfg.caption_steps * 32, lambda i: _example(caption_row(i, cfg.seed + 3), encoder))
    answers = Drawn(len(vqa), lambda i: _example(vqa[i], encoder))
    for data, steps in ((captions, cfg.caption_steps), (answers, cfg.vqa_steps)):
        sft = SFTConfig(epochs=steps * 32 / len(data), lr=cfg.lr, samples_per_step=32, warmup_steps=10, seed=cfg.seed)
        train_sft(model, data, sft, log)
    return save_model(model, out, tok)


def image_reliance(path: str | Path, n: int = 200, seed: int = 0) -> dict[str, dict[str, float]]:
    """Greedy held-out accuracy per family and overall, with each prompt's scene and with a blank
    (mid-grey) image instead: a policy that uses its image loses accuracy on the blank one."""
    from reasonrl.engine.llm import LLM
    from reasonrl.engine.sampling_params import SamplingParams
    env, llm = ShapesVQAEnvironment(ENV), LLM(path, max_num_seqs=64)
    prompts = env.prompts(n, seed=seed, split="test")
    out = {}
    for kind in ("scene", "blank"):
        chats = [_blanked(p.messages) if kind == "blank" else p.messages for p in prompts]
        replies = [o.outputs[0].text for o in llm.chat(chats, SamplingParams(temperature=0.0, max_tokens=96))]
        rewards = [env.score(p, r) for p, r in zip(prompts, replies)]
        out[kind] = {k.removeprefix("accuracy/"): v for k, v in env.metrics(prompts, replies, rewards).items()
                     if k.startswith("accuracy")}
    return out


def _blanked(messages: list[dict]) -> list[dict]:
    parts = messages[0]["content"]
    return [{"role": "user", "content": [{**q, "image": np.full_like(q["image"], 128)} if q["type"] == "image" else q
                                         for q in parts]}]


def _example(row: dict, encoder: ChatEncoder) -> Sample:
    return sft_example(row["prompt"], row["response"], encoder)


def main(argv: list[str] | None = None) -> int:
    from reasonrl.cli.flags import add_flags, values
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(SHIPPED))
    p.add_argument("--check", metavar="DIR", help="only print DIR's held-out accuracy with scenes and with blank images")
    add_flags(p, VLMPolicyConfig)
    args = p.parse_args(argv)
    if args.check:
        try:
            reliance = image_reliance(args.check)
        except (FileNotFoundError, ValueError) as exc:  # no checkpoint there, or a text-only one
            p.error(f"--check {args.check}: {exc}")
        for kind, acc in reliance.items():
            print(kind, " ".join(f"{k} {v:.3f}" for k, v in sorted(acc.items())))
        return 0

    def log(step, steps, loss, seconds):
        if step % 50 == 0 or step == steps:
            print(f"{step}/{steps} loss {loss:.3f} ({seconds:.0f}s)", file=sys.stderr, flush=True)

    print(f"saved {make_vlm_policy(args.out, VLMPolicyConfig(**values(args, VLMPolicyConfig)), log)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
