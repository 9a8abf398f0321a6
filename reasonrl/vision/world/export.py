"""`export_shapes(cfg)`: shapes-world problems written as one JSONL file plus one PNG per problem.

Layout of `cfg.out`: TASK.jsonl, one row per problem, and images/TASK_NNNNNN.png; each row's
"image" is its PNG's path relative to the JSONL (the row schema is in problems.py). Rows and
their keys come in a fixed order and PNGs carry no metadata, so the same configuration writes
byte-identical files (with the same numpy and Pillow versions). An `out` holding an earlier run's
TASK.jsonl or TASK images is refused unless `overwrite` (which deletes them first), as `reasonrl
data lvr` and `data doctor` do: a smaller rerun would leave stale images beside the new JSONL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .problems import ShapesDataConfig, iter_problems


@dataclass(frozen=True)
class ShapesExportConfig(ShapesDataConfig):
    """`reasonrl data shapes`: the data's options, and what to do with an earlier run's files."""
    overwrite: bool = False
    """Delete an earlier run's TASK.jsonl and images/TASK_*.png in `out` first (without it they are refused)."""


def export_shapes(cfg: ShapesDataConfig, overwrite: bool = False) -> int:
    """Write cfg.n problems of cfg.task under cfg.out; returns the number written."""
    from reasonrl.vision.gen.io import clear_outputs

    out = Path(cfg.out)
    path = out / f"{cfg.task}.jsonl"
    partial = path.with_suffix(".jsonl.partial")  # a failed export leaves no JSONL that looks complete
    clear_outputs(out, [path, partial, *(out / "images").glob(f"{cfg.task}_*.png")], overwrite)
    (out / "images").mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with open(partial, "w", encoding="utf-8") as jsonl:
            for written, problem in enumerate(iter_problems(cfg), start=1):
                name = f"images/{cfg.task}_{written - 1:06d}.png"
                write_png(problem.rendering.image, out / name)
                jsonl.write(json.dumps({"id": problem.row["id"], "image": name, **problem.row}) + "\n")
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"the export is incomplete: {partial} and the images written so far in "
                                f"{out / 'images'} are left; rerun with --overwrite to write it again") from None
    os.replace(partial, path)
    return written


def export_command(cfg: ShapesExportConfig) -> int:
    """`reasonrl data shapes`."""
    return export_shapes(cfg, cfg.overwrite)


def write_png(image: np.ndarray, path: str | Path) -> None:
    """An (H, W, 3) uint8 image as a PNG (no metadata: the bytes depend only on the pixels)."""
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path, format="PNG")


def read_png(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an image file."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
