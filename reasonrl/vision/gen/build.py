"""Reproduce the shipped image models: `python -m reasonrl.vision.gen.build --out runs/images`.

Each stage is one `reasonrl train-image ...` command (the same argv a user would type, listed in
docs/images.md), run as a resumable run under OUT/NAME; rerunning resumes or skips finished
stages. `--only` picks stages (comma-separated, in order); `--ship` then copies the finished
models named in SHIPPED_STAGES into reasonrl/vision/gen/shipped/ with float16 weights.

Stages and their order (later ones read earlier ones' directories):
    tokenizer, tokenizer-vq   binary and one-hot VQ tokenizers, 32 tokens x 8 bits (256 bits)
    text                      the conditioning language model
    ar, diffusion             the two bit generators (need tokenizer and text)
    smarli, smarli-causal, smarli-no-isolation   SMARLI-mini and its mask ablations
    realism                   the realism classifier (needs smarli)
    grpo, grpo-quality        layout GRPO of smarli with the layout reward / the quality reward alone

The sizes are chosen to train on a 2-core CPU in about three hours all told (the two tokenizers are
most of it); every figure in docs/benchmarks.md names the stage it measured.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from reasonrl.vision.gen.io import SHIPPED, WEIGHTS

TOKENIZER = ["--num-latent-tkns", "32", "--codebook-size", "8", "--patch-size", "8", "--steps", "5000",
             "--images-per-step", "32", "--lr", "1e-3", "--warmup-steps", "100", "--schedule", "cosine",
             "--object-weight", "1", "--hires-fraction", "0", "--eval-images", "256", "--eval-every", "250",
             "--save-every", "250", "--latent-positions", "--pooled-latents"]
GENERATOR = ["--text-model", "{out}/text", "--image-tokenizer", "{out}/tokenizer", "--width", "128",
             "--num-heads", "4", "--steps", "5000", "--prompts-per-step", "32", "--eval-prompts", "64",
             "--eval-every", "500", "--save-every", "500"]
SMARLI = ["--width", "96", "--num-layers", "4", "--steps", "3000", "--layouts-per-step", "16",
          "--eval-layouts", "64", "--save-every", "500"]
GRPO_BASE = ["--policy", "{out}/smarli", "--realism", "{out}/realism", "--layouts-per-step", "8", "--eval-layouts", "64",
             "--beta", "0"]
GRPO = [*GRPO_BASE, "--steps", "60", "--lr", "1e-4", "--samples-per-layout", "8", "--save-every", "20"]
# the quality-only ablation keeps the shorter recipe it was measured with (docs/benchmarks.md)
GRPO_QUALITY = [*GRPO_BASE, "--steps", "20", "--lr", "2e-4", "--samples-per-layout", "4", "--save-every", "10"]

STAGES: dict[str, list[str]] = {
    "tokenizer": ["tokenizer", *TOKENIZER, "--straight-through", "linear", "--aux-weight", "0.01", "--logit-bound", "2"],
    "tokenizer-vq": ["tokenizer", *TOKENIZER, "--quantizer", "vq", "--aux-weight", "1.0"],
    "text": ["text"],
    "ar": ["generator", "--method", "ar", *GENERATOR],
    "diffusion": ["generator", "--method", "diffusion", *GENERATOR],
    "smarli": ["smarli", *SMARLI],
    "smarli-causal": ["smarli", *SMARLI, "--rules", "causal"],
    "smarli-no-isolation": ["smarli", *SMARLI, "--rules", "no_isolation"],
    "realism": ["realism", "--policy", "{out}/smarli", "--steps", "150", "--generated", "512"],
    "grpo": ["layout-grpo", *GRPO, "--reward", "layout"],
    "grpo-quality": ["layout-grpo", *GRPO_QUALITY, "--reward", "quality"],
}
SHIPPED_STAGES = ("tokenizer", "text", "ar", "diffusion", "smarli", "grpo")


def command(stage: str, out: Path) -> list[str]:
    """The `reasonrl train-image` argv of a stage, writing to OUT/STAGE."""
    argv = [a.replace("{out}", str(out)) for a in STAGES[stage]]
    return ["train-image", *argv, "--out", str(out / stage)]


def run_stage(stage: str, out: Path) -> int:
    from reasonrl.cli import main

    argv = command(stage, out)
    print("reasonrl " + " ".join(argv), file=sys.stderr, flush=True)
    return main(argv)


def ship(out: Path, stages=SHIPPED_STAGES, to: Path = SHIPPED) -> None:
    """Copy finished model directories (no checkpoints, logs or reports) with float16 weights."""
    for stage in stages:
        src, dst = out / stage, to / stage
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        for f in src.iterdir():
            if f.name == WEIGHTS and stage != "text":  # the text model loads in its saved dtype: kept fp32
                state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(f)).items()}
                save_file(state, str(dst / f.name))
            elif f.name == WEIGHTS:
                shutil.copy(f, dst / f.name)
            elif f.is_file() and f.suffix == ".json" and f.name != "metrics.json":
                shutil.copy(f, dst / f.name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory of the runs, one per stage")
    p.add_argument("--only", default=",".join(STAGES), help="comma-separated stages, run in this order")
    p.add_argument("--ship", action="store_true", help="copy the shipped stages into reasonrl/vision/gen/shipped")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    for stage in [s for s in args.only.split(",") if s]:
        if stage not in STAGES:
            raise SystemExit(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
        if run_stage(stage, out):
            return 1
    if args.ship:
        ship(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
