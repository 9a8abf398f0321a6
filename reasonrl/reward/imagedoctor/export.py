"""Judge data as files (`reasonrl data doctor`) and as in-memory items for training and evaluation.

Layout of `cfg.out`: judge.jsonl, one row per image, in `reasonrl sft`'s format ({"prompt": chat
messages with the image, "response": the look-think-predict text}) plus "scores" (the analytic
ones), "boxes" and "maps" (an .npz path with `misalignment` and `artifact`, (H, W) uint8 in {0, 1});
images/doctor_NNNNNN.png and maps/doctor_NNNNNN.npz. A directory holding an earlier run's files is
refused unless `overwrite` (which deletes them first). `reasonrl sft` on the JSONL trains the text
alone (cross-entropy); the heatmap term needs the maps (`reward/imagedoctor/sft.py`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reasonrl.envs.shapes import SPLIT_SEEDS as SHAPES_SPLIT_SEEDS, check_split_seed
from reasonrl.reward.imagedoctor.data import GeneratorView, JudgeDataConfig, JudgeExample, judge_example
from reasonrl.vision.world import SceneConfig
from reasonrl.vision.world.shapes import MAX_SIDE, MIN_SIDE

INSTRUCTION = "Judge the image against the caption."
SPLIT_SEEDS = {s: SHAPES_SPLIT_SEEDS[s] for s in ("train", "eval")}  # the shapes world's disjoint streams


@dataclass
class DoctorDataConfig:
    out: str
    """Directory to write (judge.jsonl, images/, maps/)."""
    n: int = 1000
    """Images to write."""
    seed: int = 0
    """Which images: the same seed gives the same files (0 <= seed < 1,000,000: the splits stay disjoint)."""
    split: str = "train"
    """train or eval: disjoint streams, so an eval set never repeats a training image."""
    image_size: int = 224
    """Width and height (multiples of 28 give whole merged Qwen2.5-VL tokens; the demo VLM's is 224)."""
    max_objects: int = 4
    """Most objects in a prompt scene."""
    misaligned_max: int = 2
    """Objects perturbed at most per image."""
    artifacts_max: int = 2
    """Artifact patches at most per image."""
    generator: str | None = None
    """A SMARLI model directory: judge that generator's kind of image instead of renders (each scene
    drawn as its data draws them, medium and large objects without stripes, at twice its side, every
    second pixel, through its cell codebook, scaled up by pixel repetition to image_size: what the
    dense reward shows the judge; data.py). None: renders."""
    overwrite: bool = False
    """Delete an earlier run's judge.jsonl, images/ and maps/ in `out` first (without it they are refused)."""

    def __post_init__(self):
        if self.split not in SPLIT_SEEDS:
            raise ValueError(f"--split must be one of {', '.join(SPLIT_SEEDS)}, got {self.split!r}")
        if self.n < 1 or self.max_objects < 1:
            raise ValueError("--n must be >= 1 and --max-objects >= 1")
        if not MIN_SIDE <= self.image_size <= MAX_SIDE:
            raise ValueError(f"--image-size must be >= {MIN_SIDE} and at most {MAX_SIDE}, got {self.image_size!r}")
        check_split_seed(self.seed)
        for flag, value in (("--misaligned-max", self.misaligned_max), ("--artifacts-max", self.artifacts_max)):
            if value < 0:
                raise ValueError(f"{flag} must be >= 0, got {value}")

    def judge_config(self, view: GeneratorView | None = None) -> JudgeDataConfig:
        side = 2 * view.side if view is not None else self.image_size  # the render's (the view's scenes: data.py)
        scene = SceneConfig(width=side, height=side, max_objects=self.max_objects)
        return JudgeDataConfig(misaligned_max=self.misaligned_max, artifacts_max=self.artifacts_max,
                               patch=max(4, side * 12 // 112), scene=scene)

    def view(self) -> GeneratorView | None:
        if self.generator is None:
            return None
        from reasonrl.vision.smarli.train import load_smarli

        model, _, codebook = load_smarli(self.generator)
        side = model.config.grid * model.config.cell
        if self.image_size % side:
            raise ValueError(f"--image-size {self.image_size} is not a multiple of the generator's side {side} "
                             f"({self.generator}): its images are scaled up by pixel repetition")
        return GeneratorView(codebook, side, self.image_size // side)


def judge_examples(cfg: DoctorDataConfig, view: GeneratorView | None = None) -> list[JudgeExample]:
    """`view`: cfg.view() where the caller has it already."""
    rng = np.random.default_rng(SPLIT_SEEDS[cfg.split] + cfg.seed)
    view = view or cfg.view()
    judge = cfg.judge_config(view)
    return [judge_example(rng, judge, view) for _ in range(cfg.n)]


def judge_messages(caption: str, image) -> list[dict]:
    """The judge's prompt: the image, then the caption it was generated from."""
    return [{"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": f"{INSTRUCTION} Caption: {caption}"}]}]


def export_judge_data(cfg: DoctorDataConfig) -> int:
    from reasonrl.vision.gen.io import clear_outputs
    from reasonrl.vision.world.export import write_png

    out = Path(cfg.out)
    view = cfg.view()  # a generator that does not load is refused before anything is written
    clear_outputs(out, [out / "judge.jsonl", out / "images", out / "maps"], cfg.overwrite)
    for sub in ("images", "maps"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    path = out / "judge.jsonl"
    partial = path.with_suffix(".jsonl.partial")
    with open(partial, "w", encoding="utf-8") as jsonl:
        for i, ex in enumerate(judge_examples(cfg, view)):
            name = f"doctor_{i:06d}"
            write_png(ex.image, out / "images" / f"{name}.png")
            np.savez_compressed(out / "maps" / f"{name}.npz", misalignment=ex.misalignment.astype(np.uint8),
                                artifact=ex.artifact.astype(np.uint8))
            row = {"id": f"{cfg.split}-{cfg.seed}-{i}", "prompt": judge_messages(ex.caption, f"images/{name}.png"),
                   "response": ex.judgement(), "scores": ex.scores, "boxes": ex.boxes, "maps": f"maps/{name}.npz"}
            jsonl.write(json.dumps(row) + "\n")
    os.replace(partial, path)
    return cfg.n
