"""Training a bit generator (AR or diffusion) on shapes-world prompts, as a resumable run (gen/run.py).

Each step draws fresh scenes (seeded by the run seed and the step), encodes their images to bits
with the frozen tokenizer and their prompts with the frozen language model, drops a share of the
prompts for classifier-free guidance, and takes one AdamW step on the generator's loss.
Held-out metrics: the loss and bit accuracy (AR: teacher-forced next-token bits; diffusion: x_0
from x_t at t = 0.5), and GenEval-lite (gen/geneval.py) of sampled images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from reasonrl.config import min_ints
from reasonrl.rl.config import OptimSection
from reasonrl.rl.update import make_optimizer
from reasonrl.vision.gen.geneval import geneval, palette_fd
from reasonrl.vision.gen.images import ImageConfig, make_images, to_tensor
from reasonrl.vision.gen.io import load_model_dir, save_model_dir
from reasonrl.vision.gen.run import JobState
from reasonrl.vision.gen.prompt import prompt

from .ar import BitAR
from .conditioner import TextEncoder
from .diffusion import BitDiffusion, noise, x0_logits
from .generator import GeneratorConfig, Pipeline, tokenizer_digest, with_paths_relative_to
from .sample import SampleConfig, generate

HELD_OUT_SEED = 2 * 10 ** 6


@dataclass
class GeneratorTrainConfig:
    method: Literal["ar", "diffusion"] = "diffusion"
    """ar: causal, token by token; diffusion: Bernoulli diffusion over all bits."""
    text_model: str = ""
    """Conditioning language model directory (`reasonrl train-image text`)."""
    image_tokenizer: str = ""
    """Bit tokenizer directory (`reasonrl train-image tokenizer`); its bits are what is generated."""
    width: int = 192
    """Transformer width."""
    num_heads: int = 6
    """Attention heads."""
    steps: int = 3000
    """Optimizer steps."""
    prompts_per_step: int = 64
    """Fresh (image, prompt) pairs per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (cosine schedule after warm-up)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    cond_dropout: float = 0.1
    """Share of prompts replaced by the empty prompt (classifier-free guidance)."""
    eval_prompts: int = 64
    """Held-out prompts for the loss, bit accuracy and GenEval-lite (at least 2: the palette distance
    fits a covariance to them)."""
    guidance: float = 3.0
    """Classifier-free guidance scale of the held-out samples."""
    seed: int = 0
    """Seeds the weights, the scenes and the dropout."""

    def __post_init__(self):
        if not self.text_model or not self.image_tokenizer:
            raise ValueError("text_model and image_tokenizer are required (directories of trained models)")
        min_ints(self, {"steps": 1, "prompts_per_step": 1, "eval_prompts": 2})
        if not 0 <= self.cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")


class GeneratorJob(JobState):
    def __init__(self, cfg: GeneratorTrainConfig, images: ImageConfig):
        torch.manual_seed(cfg.seed)
        self.cfg, self.images, self.steps, self.step_count = cfg, images, cfg.steps, 0
        self.text = TextEncoder.from_dir(cfg.text_model)
        self.tokenizer = load_model_dir(cfg.image_tokenizer, expect="bit_tokenizer")
        if self.tokenizer.config.quantizer != "binary" or self.tokenizer.config.image_size != images.side:
            raise ValueError(f"{cfg.image_tokenizer}: needs a binary tokenizer of {images.side}-pixel images")
        tc = self.tokenizer.config
        self.model_config = GeneratorConfig(tc.num_latent_tkns, tc.codebook_size, cfg.width, cfg.num_heads,
                                            self.text.num_layers, self.text.width, cfg.text_model,
                                            cfg.image_tokenizer, cfg.method, tokenizer_digest(self.tokenizer))
        self.model = (BitAR if cfg.method == "ar" else BitDiffusion)(self.model_config)
        optim = OptimSection(lr=cfg.lr, warmup_steps=cfg.warmup_steps, schedule="cosine", betas=(0.9, 0.99))
        self.optimizer, self.scheduler = make_optimizer(self.model.parameters(), optim, cfg.steps)
        self.held = make_images(images, cfg.eval_prompts, HELD_OUT_SEED + cfg.seed)
        self.held_bits = self.tokenizer.encode(to_tensor(self.held.images))

    def batch(self, step: int):
        data = make_images(self.images, self.cfg.prompts_per_step, self.cfg.seed * 10 ** 7 + step)
        rng = np.random.default_rng([self.cfg.seed, step])
        prompts = [prompt(s) if rng.random() >= self.cfg.cond_dropout else "" for s in data.scenes]
        return self.tokenizer.encode(to_tensor(data.images)), *self.text.encode(prompts)

    def train_step(self) -> dict[str, float]:
        self.model.train()
        bits, states, mask = self.batch(self.step_count)
        loss = self.model.loss(bits, states, mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        return {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0]}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        states, mask = self.text.encode([prompt(s) for s in self.held.scenes])
        bits = self.held_bits
        if self.cfg.method == "ar":
            logits = self.model(bits, states, mask)
        else:
            gen = torch.Generator().manual_seed(0)
            xt = noise(bits, torch.full((len(bits),), 0.5), gen)
            logits = x0_logits(self.model(xt, torch.full((len(bits),), 0.5), self.model.stack.prefixes(states), mask), xt)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, bits)
        images = generate(Pipeline(self.model, self.text, self.tokenizer), [prompt(s) for s in self.held.scenes],
                          SampleConfig(guidance=self.cfg.guidance, seed=0))
        scores = geneval(self.held.scenes, images)
        return {"eval_loss": float(loss), "eval_bit_accuracy": float(((logits > 0).float() == bits).float().mean()),
                **{f"eval_{k}": v for k, v in scores.items()}, "eval_palette_fd": palette_fd(images, self.held.images)}

    def save(self, path: Path) -> Path:
        return save_model_dir(self.model, with_paths_relative_to(self.model_config, path), path)
