"""`reasonrl data lvr`: LVR's SFT data from the shapes world, as JSONL and PNG images.

    reasonrl data lvr --n 2000 --out data/lvr

Each row is a detail question whose region the world knows exactly, in `reasonrl sft`'s prompt /
response layout plus the region:

    {"id", "image": "images/lvr_000000.png", "prompt": [user message: the image, the question],
     "response": "<|lvr_start|><|lvr|>...<|lvr_end|>\\boxed{red}" (one <|lvr|> per region token),
     "answer", "answer_type", "roi": [x0, y0, x1, y1], "roi_tokens": [indices among the image's
     merged tokens, row-major: the latent targets]}

The region tokens depend on how the checkpoint named by `model` resizes and patches an image
(preprocessor_config.json: patch and merge sizes, pixel bounds). The LVR loss needs the teacher-
forced region tokens: train with `reasonrl.vision.lvr.train` (the experiment builds the same
examples in memory); plain `reasonrl sft` on these rows would learn the placeholders as text.
An `out` holding an earlier run's lvr.jsonl or images/ is refused unless `overwrite` (which deletes
them first), as `reasonrl data doctor` does: a smaller rerun would leave stale images beside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reasonrl.envs.shapes import INSTRUCTION
from reasonrl.models.loader import is_vlm
from reasonrl.models.qwen2_5_vl.config import ARCHITECTURE as VLM_ARCHITECTURE
from reasonrl.models.qwen2_5_vl.processor import ImageConfig, smart_resize
from reasonrl.vision.gen.io import clear_outputs
from reasonrl.vision.lvr.env import LVRShapesConfig, LVRShapesEnvironment
from reasonrl.vision.lvr.sft import roi_tokens
from reasonrl.vision.world.export import write_png

EMBEDDED_VLM = str(Path(__file__).parents[2] / "demo" / "vlm")


@dataclass
class LVRDataConfig:
    n: int = 1000
    """Examples to write."""
    seed: int = 0
    """Seeds scenes and questions: the same seed writes the same files."""
    split: Literal["train", "eval", "test"] = "train"
    """Which of the `lvr` environment's disjoint splits to draw from."""
    out: str = "data/lvr"
    """Output directory: lvr.jsonl and images/lvr_NNNNNN.png go inside it."""
    image_size: int = 224
    """Width and height of the scenes."""
    min_objects: int = 1
    """Fewest objects in a scene."""
    max_objects: int = 4
    """Most objects in a scene."""
    model: str = EMBEDDED_VLM
    """The vision-language checkpoint whose image preprocessing places the region tokens."""
    overwrite: bool = False
    """Delete an earlier run's lvr.jsonl and images/ in `out` first (without it they are refused)."""


def _what(model: Path) -> str:
    """What a checkpoint's config.json says it is: `a qwen2 model (architectures ['Qwen2ForCausalLM'])`."""
    try:
        config = json.loads((model / "config.json").read_text())
    except (OSError, ValueError) as e:
        return f"not readable as a checkpoint (config.json: {e})"
    if not isinstance(config, dict):
        return "not a checkpoint (config.json holds no object)"
    return f"a {config.get('model_type', 'model_type-less')} model (architectures {config.get('architectures')})"


def lvr_response(answer: str, n_latents: int) -> str:
    return "<|lvr_start|>" + "<|lvr|>" * n_latents + f"<|lvr_end|>\\boxed{{{answer}}}"


def export_lvr(cfg: LVRDataConfig) -> int:
    """Write the rows and images; -> the number written."""
    if not (Path(cfg.model) / "config.json").is_file():  # the region tokens depend on its preprocessing
        raise FileNotFoundError(f"model {cfg.model} is not a checkpoint directory (no config.json)")
    if not is_vlm(cfg.model):  # a text model has no image preprocessing: the defaults would place the regions
        raise ValueError(f"model {cfg.model} is {_what(Path(cfg.model))}, not a vision-language checkpoint: "
                         f"LVR data needs a Qwen2.5-VL one ({VLM_ARCHITECTURE}), such as the default, {EMBEDDED_VLM}")
    image = ImageConfig.from_dir(cfg.model)
    env = LVRShapesEnvironment(LVRShapesConfig(image_size=cfg.image_size, min_objects=cfg.min_objects,
                                               max_objects=cfg.max_objects))
    problems = env.problems(cfg.n, seed=cfg.seed, split=cfg.split)  # (bad options refused before any file is touched)
    out = Path(cfg.out)
    clear_outputs(out, [out / "lvr.jsonl", out / "images"], cfg.overwrite)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / "lvr.jsonl"
    partial = path.with_suffix(".jsonl.partial")  # a stopped run leaves no lvr.jsonl that looks complete
    with open(partial, "w", encoding="utf-8") as jsonl:
        for i, problem in enumerate(problems):
            row, name = problem.row, f"images/lvr_{i:06d}.png"
            write_png(problem.rendering.image, out / name)
            h, w = problem.rendering.image.shape[:2]
            rh, rw = smart_resize(h, w, image.patch_size * image.merge_size, image.min_pixels, image.max_pixels)
            grid = (1, rh // image.patch_size, rw // image.patch_size)
            cells = roi_tokens(row["roi"], (h, w), grid, image.merge_size, image.patch_size)
            prompt = [{"role": "user", "content": [{"type": "image", "image": name},
                                                   {"type": "text", "text": f"{row['question']} {INSTRUCTION}"}]}]
            jsonl.write(json.dumps({"id": row["id"], "image": name, "prompt": prompt,
                                    "response": lvr_response(row["answer"], len(cells)), "answer": row["answer"],
                                    "answer_type": row["answer_type"], "roi": row["roi"], "roi_tokens": cells}) + "\n")
    os.replace(partial, path)
    return len(problems)
