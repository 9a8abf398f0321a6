"""LVR's supervised stage on the shapes world, and its control (arXiv 2509.24251).

    model, tok = lvr_policy("reasonrl/demo/vlm")          # the embedded VLM plus LVR's three tokens
    examples = make_examples(model, tok, problems, latent)  # detail questions with their regions
    train_sft_lvr(model, examples, LVRTrainConfig(latents=True))   # CE + 0.1 x MSE on the region tokens
    train_sft_lvr(other, examples, LVRTrainConfig(latents=False))  # the same answers without the span

Both arms see the same examples in the same order with the same optimizer; only the latent span
(and its MSE) differs, as in LVR's control. The vision tower and merger are frozen, so each image's
merged tokens are computed once (`LVRExample.image`) and the pixels dropped.
"""

from __future__ import annotations

import dataclasses
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from reasonrl.engine.latent import EXIT_KEY, FEEDBACK_KEY, SCALE_KEY, LatentConfig
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.grow import add_special_tokens
from reasonrl.models.loader import MASTER_DTYPE
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt
from reasonrl.models.tiny_vlm import LVR_TOKENS
from reasonrl.rl.config import OptimSection
from reasonrl.rl.update import autocast, freeze_vision, make_optimizer, trainable
from reasonrl.vision.lvr.data import lvr_example
from reasonrl.vision.lvr.sft import LVRSequence, latent_scale, lvr_sft_loss, plain_sequence
from reasonrl.vision.world import Problem, QAItem


@dataclass
class LVRExample:
    prompt: MultimodalPrompt  # pixel values dropped once encoded: `image` holds them
    image: torch.Tensor  # (M, hidden) the frozen tower's merged tokens of the prompt's image
    lvr: LVRSequence  # prompt, latent span over the region's tokens, answer
    plain: LVRSequence  # prompt, answer


@dataclass
class LVRTrainConfig:
    latents: bool = True
    """Train the latent span (CE + weight x MSE); false: the control, the same answers without it."""
    steps: int = 300
    """Optimizer steps."""
    batch: int = 16
    """Examples per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay)."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    weight: float = 0.1
    """Weight of the latent MSE next to cross-entropy (LVR: 0.1)."""
    latent_inputs: Literal["teacher", "own"] = "teacher"
    """Inputs of the latent rows in training: teacher (the true region tokens, LVR) or own (the model's own
    predicted latents, as inference feeds back; sft.py)."""
    own_passes: int = 1
    """With latent_inputs own: forwards without gradient before the graded one, each fed the previous one's
    predictions (p passes make the first p latents of a span exactly the autoregressive ones)."""
    pointer_weight: float = 0.0
    """Weight of the pointer loss (the region token among the prompt's image tokens, by cosine; sft.py)."""
    pointer_target: Literal["token", "region", "remaining"] = "token"
    """The pointer loss's right answer for latent k: region token k, any of the region's tokens, or any of region
    tokens k onwards (sft.py)."""
    feedback: Literal["state", "image_token"] = "state"
    """What inference feeds a latent position (engine/latent.py), recorded in the checkpoint; with latent_inputs
    own, what the own passes feed back."""
    exit: Literal["steps", "end_token"] = "steps"
    """How inference ends a span (engine/latent.py), recorded in the checkpoint: "steps" (a fixed quota, LVR) or
    "end_token" (the model predicts the end; the CE then trains every latent row's next token, sft.py)."""
    autocast: Literal["bfloat16", "float16"] | None = None
    """Compute dtype on CUDA under torch.autocast, over the float32 weights; None: float32 throughout."""
    seed: int = 0
    """Seeds the data order."""


def lvr_policy(path: str | Path, device: str = "cpu"):
    """A vision-language checkpoint with LVR's tokens added (embeddings grown) -> (model, tokenizer)."""
    model, tok = load_model(path, device, MASTER_DTYPE), Tokenizer.from_dir(path)
    add_special_tokens(model, tok, LVR_TOKENS)
    return model, tok


def qa_item(problem: Problem) -> QAItem:
    """The world's question behind a vqa problem's row (its region included)."""
    r = problem.row
    return QAItem(r["question"], r["answer"], r["family"], r["answer_type"], r["needs_image"],
                  tuple(r["roi"]) if r["roi"] else None, tuple(r["targets"]))


@torch.no_grad()
def make_examples(model, tok: Tokenizer, problems: list[Problem], latent: LatentConfig,
                  chunk: int = 32) -> list[LVRExample]:
    """One example per problem, images encoded `chunk` at a time by the (frozen) tower."""
    out = []
    for lo in range(0, len(problems), chunk):
        made = [lvr_example(tok, model, p.rendering.image, qa_item(p), latent) for p in problems[lo:lo + chunk]]
        prompts = [m[1] for m in made]
        images = model.encode_images(torch.cat([p.pixel_values for p in prompts]),
                                     torch.cat([p.image_grid_thw for p in prompts]))
        start = 0
        for seq, prompt in made:
            n = len(prompt.image_rows)
            answer = seq.input_ids[seq.latent_rows[-1] + 2:]  # after the span's end token
            no_pixels = prompt.pixel_values.new_zeros(0, prompt.pixel_values.shape[1])  # not a view: frees them
            out.append(LVRExample(dataclasses.replace(prompt, pixel_values=no_pixels),
                                  images[start:start + n].clone(), seq, plain_sequence(prompt, answer)))
            start += n
    return out


def train_sft_lvr(model, examples: list[LVRExample], cfg: LVRTrainConfig, log=None) -> list[dict[str, float]]:
    """Train in place; per step {loss, ce, latent_mse, input_cosine, pointer_top1}. The LVR arm records its
    latent scale, feedback and exit in the model's config (saved with it as `lvr_latent_scale`,
    `lvr_latent_feedback` and `lvr_latent_exit`, read by the engine)."""
    freeze_vision(model)
    scale = 1.0
    if cfg.latents:
        scale = latent_scale(model, torch.cat([e.image[e.lvr.targets] for e in examples[:256]]))
        model.vlm_config.raw[SCALE_KEY] = scale
        model.vlm_config.raw[FEEDBACK_KEY] = cfg.feedback
        model.vlm_config.raw[EXIT_KEY] = cfg.exit
        if cfg.pointer_weight and cfg.feedback == "state":
            warnings.warn("a pointer loss trains the choice of an image token, but feedback 'state' records that the "
                          "engine feeds this model its states (on which a pointer-trained model collapses, "
                          "docs/benchmarks.md); use feedback 'image_token' (--latent-feedback image_token)", stacklevel=2)
    optim = OptimSection(lr=cfg.lr, warmup_steps=cfg.warmup_steps, schedule="cosine", grad_clip=1.0)
    optimizer, scheduler = make_optimizer(trainable(model), optim, cfg.steps)
    rng, order, history, start = random.Random(cfg.seed), [], [], time.perf_counter()
    model.train()
    for step in range(1, cfg.steps + 1):
        while len(order) < cfg.batch:
            epoch = list(range(len(examples)))
            rng.shuffle(epoch)
            order += epoch
        batch, order = [examples[i] for i in order[:cfg.batch]], order[cfg.batch:]
        with autocast(model.device, cfg.autocast):
            loss, stats = lvr_sft_loss(model, [e.lvr if cfg.latents else e.plain for e in batch],
                                       [e.prompt for e in batch], cfg.weight, image_embeds=torch.cat([e.image for e in batch]),
                                       scale=scale, latent_inputs=cfg.latent_inputs, own_passes=cfg.own_passes,
                                       pointer_weight=cfg.pointer_weight, feedback=cfg.feedback,
                                       pointer_target=cfg.pointer_target, exit=cfg.exit)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable(model), optim.grad_clip)
        optimizer.step()
        scheduler.step()
        history.append({"loss": float(loss.detach()), "ce": stats["ce"], "latent_mse": stats["latent_mse"],
                        "input_cosine": stats["input_cosine"], "pointer_top1": stats["pointer_top1"]})
        if log is not None:
            log(step, cfg.steps, history[-1], time.perf_counter() - start)
    model.eval()
    return history
