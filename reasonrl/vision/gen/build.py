"""Reproduce the shipped image models: `python -m reasonrl.vision.gen.build --out runs/images`.

Each stage is one `reasonrl train-image ...` command (the same argv a user would type, listed in
docs/images.md), run as a resumable run under OUT/NAME; rerunning resumes or skips finished
stages. `--only` picks stages (comma-separated, in order); `--ship` then copies the finished
models of the chosen stages named in SHIPPED_STAGES into reasonrl/vision/gen/shipped/ (float16 weights),
leaving the other shipped models as they are.

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

from reasonrl.vision.gen.io import CONFIG, SHIPPED, WEIGHTS

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
    """Copy finished model directories (no checkpoints, logs or reports) with float16 weights.

    Every stage must hold a finished model before anything is replaced, and each is written beside
    its destination and renamed into place, so a failure never leaves a shipped folder empty or
    half-written."""
    unfinished = [s for s in stages if not all((out / s / f).is_file() for f in (CONFIG, WEIGHTS))]
    if unfinished:
        raise FileNotFoundError(f"nothing shipped: no finished model ({CONFIG} and {WEIGHTS}) under {out} for these "
                                f"stages: {', '.join(unfinished)}; run them first (--only {','.join(unfinished)})")
    for stage in stages:
        dst = to / stage
        tmp, old = dst.with_name(f".{stage}.tmp"), dst.with_name(f".{stage}.old")
        for stale in (tmp, old):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
        _copy_model(out / stage, tmp, half=stage != "text")  # the text model loads in its saved dtype: kept fp32
        if dst.exists():
            dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old, ignore_errors=True)


def _copy_model(src: Path, dst: Path, half: bool) -> None:
    for f in src.iterdir():
        if f.name == WEIGHTS and half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(f)).items()}
            save_file(state, str(dst / f.name))
        elif f.name == WEIGHTS or (f.is_file() and f.suffix == ".json" and f.name != "metrics.json"):
            shutil.copy(f, dst / f.name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory of the runs, one per stage")
    p.add_argument("--only", default=",".join(STAGES), help="comma-separated stages, run in this order")
    p.add_argument("--ship", action="store_true", help="copy the shipped stages into reasonrl/vision/gen/shipped")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    stages = [s for s in args.only.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage {unknown[0]!r}; known: {', '.join(STAGES)}")
    for stage in stages:
        if run_stage(stage, out):
            return 1
    if args.ship:
        try:
            ship(out, stages=[s for s in SHIPPED_STAGES if s in stages], to=SHIPPED)  # only what this build ran
        except FileNotFoundError as e:
            raise SystemExit(str(e)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
