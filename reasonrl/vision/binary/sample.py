"""Text to pixels with a bit generator: prompts -> language-model states -> bits -> tokenizer decoder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from reasonrl.config import finite_numbers
from reasonrl.vision.gen.images import to_uint8
from reasonrl.vision.gen.noise import row_generators

from .ar import BitAR
from .generator import Pipeline, with_unconditional


@dataclass
class SampleConfig:
    guidance: float = 3.0
    """Classifier-free guidance scale (1: no guidance)."""
    temperature: float | None = None
    """AR generators only: temperature of the bit draws (0: threshold; default: the model's, 1)."""
    steps: int | None = None
    """Diffusion generators only: sampling steps (default: the model's, 20)."""
    size: int | None = None
    """Decode at this side in pixels (default: the tokenizer's training size; 2x uses the position rescaling)."""
    batch_size: int = 64
    """Prompts per batch."""
    seed: int = 0
    """Seeds the draws: image k of a run depends on the seed, k and its prompt only (not on the batch size
    or the other prompts)."""

    def __post_init__(self):
        finite_numbers(self, at_least={"guidance": 0, **({} if self.temperature is None else {"temperature": 0})})
        if (self.steps is not None and self.steps < 1) or self.batch_size < 1 or self.seed < 0:
            raise ValueError("steps and batch_size must be >= 1, seed >= 0")
        if self.size is not None and self.size < 1:
            raise ValueError(f"size must be >= 1 pixels (leave it out for the tokenizer's own size), got {self.size}")


def sampler_options(pipe: Pipeline, cfg: SampleConfig) -> dict:
    """The generator's own option that `cfg` sets (AR: temperature, diffusion: steps; unset, the
    model's default); the other kind's option, set, is an error rather than silently ignored."""
    ar = isinstance(pipe.generator, BitAR)
    own, other = ("temperature", "steps") if ar else ("steps", "temperature")
    if getattr(cfg, other) is not None:
        raise ValueError(f"--{other} does not apply to this model, {'an AR' if ar else 'a diffusion'} generator "
                         f"(its option is --{own})")
    return {} if getattr(cfg, own) is None else {own: getattr(cfg, own)}


@torch.no_grad()
def generate_bits(pipe: Pipeline, prompts: list[str], cfg: SampleConfig,
                  progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """(N, K, d) bits for the prompts; `progress(done)` after each batch."""
    options, out = sampler_options(pipe, cfg), []
    for start in range(0, len(prompts), cfg.batch_size):
        batch = prompts[start:start + cfg.batch_size]
        states, mask = with_unconditional(pipe.text, batch)
        gen = row_generators(cfg.seed, start, len(batch))
        out.append(pipe.generator.sample(states, mask, cfg.guidance, generator=gen, **options))
        if progress is not None:
            progress(start + len(batch))
    return torch.cat(out)


@torch.no_grad()
def generate(pipe: Pipeline, prompts: list[str], cfg: SampleConfig = SampleConfig(),
             progress: Callable[[int], None] | None = None) -> np.ndarray:
    """(N, S, S, 3) uint8 images for the prompts; `progress(done)` after each batch is sampled."""
    if cfg.size is not None:
        pipe.tokenizer.check_decode_size(cfg.size, cfg.size)  # before sampling, not after
    pipe.generator.eval()
    bits = generate_bits(pipe, prompts, cfg, progress)
    return np.concatenate([to_uint8(pipe.tokenizer.decode(bits[i:i + cfg.batch_size], cfg.size, cfg.size))
                           for i in range(0, len(bits), cfg.batch_size)])
