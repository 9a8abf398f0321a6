"""`reasonrl generate-image`: prompts in, PNG files out, with a bit generator and its tokenizer."""

from __future__ import annotations

import json
import re
from pathlib import Path

from reasonrl.progress import Progress
from reasonrl.vision.gen.grid import save_grid
from reasonrl.vision.gen.io import SHIPPED, clear_outputs
from reasonrl.vision.world import write_png

from .generator import load_pipeline
from .sample import SampleConfig, generate, sampler_options

def default_model() -> Path:
    return SHIPPED / "diffusion"


def generate_images(job, cfg: SampleConfig, progress: float | None = None) -> list[Path]:
    """Write job.per_prompt images per prompt under job.out; returns their paths. `progress`: seconds
    between `generate-image: 64/500 images done (12.3 s)` lines on stderr (`reasonrl.progress`; None: none)."""
    out = Path(job.out)
    pipe = load_pipeline(job.model or default_model())
    if cfg.size is not None:  # a bad model or size must fail before --overwrite deletes the earlier images
        pipe.tokenizer.check_decode_size(cfg.size, cfg.size)
    sampler_options(pipe, cfg)  # (so must an option of the other kind of generator)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)  # (an unwritable --out fails here too, not after sampling)
    earlier = [p for p in out.glob("*.png") if re.fullmatch(r"[0-9]{4,}\.png|grid\.png", p.name)]
    clear_outputs(out, [out / "prompts.jsonl", *earlier], job.overwrite)  # before generating: a refusal costs little
    prompts = [p for p in job.prompts for _ in range(job.per_prompt)]
    line = None if progress is None else Progress("generate-image", len(prompts), "images", every=progress)
    try:
        images = generate(pipe, prompts, cfg, None if line is None else line.update)
    finally:
        if line is not None:  # (ended on an error too: a traceback starts on a line of its own)
            line.close()
    paths = []
    with open(out / "prompts.jsonl", "w", encoding="utf-8") as index:
        for k, (text, image) in enumerate(zip(prompts, images)):
            path = out / f"{k:04d}.png"
            write_png(image, path)
            index.write(json.dumps({"image": path.name, "prompt": text}) + "\n")
            paths.append(path)
    if job.grid:
        save_grid(images, out / "grid.png", columns=max(job.per_prompt, 1) if job.per_prompt > 1 else 8)
    return paths
