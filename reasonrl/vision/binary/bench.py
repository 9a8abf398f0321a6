"""`reasonrl bench image-tokenizer` and `reasonrl bench image-gen`: the figures of docs/benchmarks.md.

image-tokenizer trains one tokenizer per (quantiser, K x d) with the same steps and data and
reports held-out PSNR against total bits, code usage, and PSNR at twice the resolution.
image-gen samples the same held-out prompts with each generator and scores them with
GenEval-lite; the real renders are scored too (the judge's ceiling), and so are the real renders
passed through each generator's tokenizer (encoded and decoded: the most a generator of those
bits can score).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from reasonrl.config import finite_numbers, min_ints
from reasonrl.vision.gen.geneval import geneval, palette_fd
from reasonrl.vision.gen.grid import save_grid
from reasonrl.vision.gen.images import ImageConfig, make_images
from reasonrl.vision.gen.io import SHIPPED, load_model_dir
from reasonrl.vision.gen.prompt import prompt

from .generator import load_pipeline
from .measure import measure_tokenizer, reconstruct
from .sample import SampleConfig, generate
from .tokenizer import TokenizerConfig
from .train_tokenizer import HELD_OUT_SEED, TokenizerJob, TokenizerTrainConfig


@dataclass
class TokenizerBenchConfig:
    shapes: list[str] = field(default_factory=lambda: ["binary:8x8", "binary:16x8", "binary:32x8", "binary:16x16",
                                                       "vq:8x8", "vq:16x8", "vq:32x8"])
    """QUANTIZER:KxD per tokenizer (K tokens of d bits)."""
    steps: int = 1500
    """Training steps of every tokenizer."""
    images_per_step: int = 32
    """Images per step."""
    lr: float = 2e-3
    """Peak learning rate."""
    patch_size: int = 8
    """Patch size of every tokenizer."""
    eval_images: int = 256
    """Held-out images."""
    seed: int = 0
    """Seeds weights and images."""
    models: list[str] = field(default_factory=list)
    """Trained tokenizer directories to measure instead of training `shapes` (e.g. the build's
    runs/images/tokenizer and tokenizer-vq), on the same held-out images."""
    grid: str | None = None
    """With `models`: also write PREFIX_K.png (8 held-out images over their reconstructions) and
    PREFIX_K_2x.png (the same codes decoded at twice the resolution) per model."""


    def __post_init__(self):
        min_ints(self, dict.fromkeys(("steps", "images_per_step", "eval_images"), 1))


def parse_shape(spec: str) -> tuple[str, int, int]:
    try:
        quantizer, dims = spec.split(":")
        k, d = (int(v) for v in dims.lower().split("x"))
    except ValueError:
        raise ValueError(f"tokenizer shape {spec!r} is not QUANTIZER:KxD (e.g. binary:16x16)") from None
    if quantizer not in ("binary", "vq"):
        raise ValueError(f"tokenizer shape {spec!r}: quantizer must be binary or vq")
    return quantizer, k, d


def bench_tokenizers(cfg: TokenizerBenchConfig) -> list[dict]:
    if cfg.models:
        return [measure_saved(path, cfg, k) for k, path in enumerate(cfg.models)]
    rows = []
    for spec in cfg.shapes:
        quantizer, k, d = parse_shape(spec)
        model = TokenizerConfig(num_latent_tkns=k, codebook_size=d, quantizer=quantizer, patch_size=cfg.patch_size)
        train = TokenizerTrainConfig(steps=cfg.steps, images_per_step=cfg.images_per_step, lr=cfg.lr,
                                     eval_images=cfg.eval_images, seed=cfg.seed)
        job, start = TokenizerJob(model, train, ImageConfig()), time.perf_counter()
        while job.step_count < job.steps:
            job.train_step()
        row = {"quantizer": quantizer, "tokens": k, "bits_per_token": d, **measure_tokenizer(job.model, job.held)}
        row["train_seconds"] = time.perf_counter() - start
        print(row, flush=True)
        rows.append(row)
    return rows


def measure_saved(path: str, cfg: TokenizerBenchConfig, k: int = 0) -> dict:
    tok = load_model_dir(path, expect="bit_tokenizer")
    c = tok.config
    held = make_images(ImageConfig(side=c.image_size), cfg.eval_images, HELD_OUT_SEED + cfg.seed)
    if cfg.grid:
        _, recon = reconstruct(tok, held.images[:8])
        _, recon2 = reconstruct(tok, held.images[:8], 2 * c.image_size)
        save_grid(np.concatenate([held.images[:8], recon]), f"{cfg.grid}_{k}.png", columns=8, scale=3)
        save_grid(recon2, f"{cfg.grid}_{k}_2x.png", columns=8, scale=1)
    params = sum(p.numel() for p in tok.parameters())
    return {"model": path, "quantizer": c.quantizer, "tokens": c.num_latent_tkns, "bits_per_token": c.codebook_size,
            "params": params, **measure_tokenizer(tok, held)}


@dataclass
class GenBenchConfig:
    models: list[str] = field(default_factory=lambda: [str(SHIPPED / "ar"), str(SHIPPED / "diffusion")])
    """Generator directories to compare (default: the shipped AR and diffusion models)."""
    prompts: int = 256
    """Held-out prompts (scenes) sampled once per generator (at least 2: the palette distance fits a covariance)."""
    guidance: float = 3.0
    """Classifier-free guidance scale."""
    seed: int = 0
    """Seeds the prompts' scenes and the draws."""
    grid: str | None = None
    """Also write a PNG grid of the first 16 prompts' images per model to this path prefix (PREFIX_K.png, K the
    model's index in `models`)."""

    def __post_init__(self):
        min_ints(self, {"prompts": 2})
        finite_numbers(self, at_least={"guidance": 0})


def bench_generators(cfg: GenBenchConfig) -> list[dict]:
    held = make_images(ImageConfig(), cfg.prompts, HELD_OUT_SEED + 7 + cfg.seed)
    prompts = [prompt(s) for s in held.scenes]
    rows = [{"model": "real renders", **geneval(held.scenes, held.images), "palette_fd": 0.0}]
    reference = make_images(ImageConfig(), cfg.prompts, HELD_OUT_SEED + 8 + cfg.seed).images
    rows[0]["palette_fd"] = palette_fd(held.images, reference)  # two real sets: the distance's noise floor
    ceilings: set = set()
    for k, path in enumerate(cfg.models):
        pipe = load_pipeline(path)
        if pipe.tokenizer_dir not in ceilings:  # the best any generator over these bits can score: the renders' own codes
            ceilings.add(pipe.tokenizer_dir)
            _, recon = reconstruct(pipe.tokenizer, held.images)
            rows.append({"model": f"real renders through {os.path.relpath(pipe.tokenizer_dir)} (its generators' ceiling)",
                         **geneval(held.scenes, recon), "palette_fd": palette_fd(recon, held.images)})
        start = time.perf_counter()
        images = generate(pipe, prompts, replace(SampleConfig(), guidance=cfg.guidance, seed=cfg.seed))
        seconds = time.perf_counter() - start
        name = type(pipe.generator).__name__
        params = sum(p.numel() for p in pipe.generator.parameters())
        rows.append({"model": path, "kind": name, "params": params, **geneval(held.scenes, images),
                     "palette_fd": palette_fd(images, held.images), "images_per_s": len(images) / seconds})
        if cfg.grid:
            save_grid(images[:16], f"{cfg.grid}_{k}.png", columns=8, scale=2)
    return rows


def format_rows(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "model"))  # every row's keys, first seen first
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        cells = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        lines.append(f"| {r.get('model', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


