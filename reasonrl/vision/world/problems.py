"""Problems of the shapes world for training and evaluation: one scene and its row per problem.

`iter_problems(cfg)` draws scenes from `cfg.seed` and turns each into a row of the task (vqa,
caption or layout); export.py writes them out. Problems are unique within one run (a vqa problem
is its scene and question, a caption or layout problem its scene) and reproducible from the
seed: the same configuration yields the same rows in the same order.

VQA families are taken in turn (row i asks families[i % len(families)]), so every family gets its
share; a scene with no question of the family due is skipped, and the next scene is drawn.

Row schema (boxes are [x0, y0, x1, y1] in pixels, x1 and y1 exclusive):
    every task: id, image (PNG path relative to the JSONL), width, height,
        background ("plain" | "gradient"),
        objects: per object in drawing order {shape, colour, size, texture, stripe_colour (or null),
            box (all its pixels), visible_box (its pixels in view; equal to box without occlusion),
            text ("a small red circle with blue stripes")},
        scene: Scene.to_dict(), which Scene.from_dict turns back into the scene (render it for masks)
    vqa: question, answer (canonical: "3", "red", "circle", "yes", "left", "striped"), family,
        answer_type (answer.VOCABULARY key, for score_answer), needs_image (false for family "text"),
        roi (the box to look at, or null), targets (indices into objects the question is about)
    caption: caption ("3 objects on a plain background, from left to right: a ..., a ... and a ...")
    layout: prompt (the same sentence); the boxes and texts to draw are in objects
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np

from .caption import caption
from .questions import FAMILIES, QAItem, ask
from .refer import indefinite, object_phrase
from .render import Rendering, render
from .sampling import SceneConfig, sample_scene
from .scene import Scene
from .shapes import MAX_SIDE, MIN_SIDE

TASKS = ("vqa", "caption", "layout")
MAX_MISSES = 5000  # scenes drawn in a row without a new problem before giving up


@dataclass(frozen=True)
class ShapesDataConfig:
    task: Literal["vqa", "caption", "layout"] = "vqa"
    """vqa (image, question, answer), caption (image, caption) or layout (caption plus a box and text per object)."""
    n: int = 1000
    """Problems to write."""
    seed: int = 0
    """Seeds every scene and question: the same seed writes byte-identical files."""
    out: str = "data/shapes"
    """Output directory: TASK.jsonl and images/TASK_NNNNNN.png go inside it."""
    image_size: int = 112
    """Width and height of the images in pixels (multiples of 28 give whole merged Qwen2.5-VL tokens)."""
    min_objects: int = 1
    """Fewest objects in a scene (1-8)."""
    max_objects: int = 8
    """Most objects in a scene (1-8)."""
    occlusion: bool = False
    """Let objects overlap, later ones in front (each keeps at least half its pixels in view)."""
    striped_fraction: float = 0.3
    """Chance that an object is striped."""
    gradient_fraction: float = 0.5
    """Chance that a background is a linear gradient rather than plain."""
    families: tuple[str, ...] = tuple(FAMILIES)
    """vqa: the question families to ask, in turn (count colour shape position extreme exists detail text)."""
    text_side: Literal["any", "train", "held_out"] = "any"
    """vqa: which image-free questions (the `text` family) may be asked. Their space is small and the
    scene plays no part, so splits drawn from other seeds share them; `train` keeps to the nine in
    ten a hash of the question assigns to training, `held_out` to the rest (the env's eval splits)."""

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"ShapesDataConfig.task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not isinstance(self.n, int) or self.n < 0:
            raise ValueError(f"ShapesDataConfig.n must be a non-negative integer, got {self.n!r}")
        if not isinstance(self.image_size, int) or not MIN_SIDE <= self.image_size <= MAX_SIDE:
            raise ValueError(f"ShapesDataConfig.image_size (--image-size) must be an integer >= {MIN_SIDE} and at most "
                             f"{MAX_SIDE}, got {self.image_size!r}")
        families = tuple(self.families.split(",")) if isinstance(self.families, str) else tuple(self.families)
        unknown = [f for f in families if f not in FAMILIES]
        if unknown or not families:
            raise ValueError(f"ShapesDataConfig.families must name some of {', '.join(FAMILIES)}, "
                             f"got {self.families!r}")
        object.__setattr__(self, "families", families)
        self.scene_config()  # validates the object counts and fractions

    def scene_config(self) -> SceneConfig:
        return SceneConfig(self.image_size, self.image_size, self.min_objects, self.max_objects, self.occlusion,
                           self.striped_fraction, self.gradient_fraction)


@dataclass(frozen=True)
class Problem:
    scene: Scene
    rendering: Rendering
    row: dict
    """The JSONL row, less the image file name (export.py adds it)."""


def iter_problems(cfg: ShapesDataConfig) -> Iterator[Problem]:
    """cfg.n unique problems, reproducible from cfg.seed.

    Raises ValueError naming the family (or task) when MAX_MISSES scenes in a row give no new
    problem: the configuration cannot ask it (e.g. "extreme" with one object per scene)."""
    rng, scene_cfg, seen = np.random.default_rng(cfg.seed), cfg.scene_config(), set()
    for i in range(cfg.n):
        family = cfg.families[i % len(cfg.families)] if cfg.task == "vqa" else None
        for _ in range(MAX_MISSES):
            scene = sample_scene(rng, scene_cfg)
            item = ask(family, scene, rng) if family else None
            free = item is not None and not item.needs_image  # the question alone is the problem
            key = (item.question if free else scene.key() + (f"\n{item.question}" if item else ""))
            if (item or not family) and key not in seen and (not free or _on_side(item.question, cfg.text_side)):
                break
        else:
            raise ValueError(f"no new {family or cfg.task} problem in {MAX_MISSES} scenes: the configuration "
                             f"({cfg}) leaves too few (after {i} problems)")
        seen.add(key)
        rendering = render(scene)
        yield Problem(scene, rendering, _row(cfg, i, scene, rendering, item))


def _on_side(question: str, side: str) -> bool:
    return side == "any" or (zlib.crc32(question.encode()) % 10 == 0) == (side == "held_out")


def _row(cfg: ShapesDataConfig, i: int, scene: Scene, rendering: Rendering, item: QAItem | None) -> dict:
    row = {"id": f"shapes-{cfg.task}-{cfg.seed}-{i:06d}", "width": scene.width, "height": scene.height}
    if item is not None:
        row.update(question=item.question, answer=item.answer, family=item.family, answer_type=item.answer_type,
                   needs_image=item.needs_image, roi=list(item.roi) if item.roi else None, targets=list(item.objects))
    elif cfg.task == "caption":
        row["caption"] = caption(scene)
    else:
        row["prompt"] = caption(scene)
    row.update(background=scene.background.kind, objects=object_rows(scene, rendering), scene=scene.to_dict())
    return row


def object_rows(scene: Scene, rendering: Rendering) -> list[dict]:
    """Per object, in drawing order: attributes, box, visible box and its text ('a small red circle')."""
    rows = []
    for i, obj in enumerate(scene.objects):
        visible = rendering.visible_box(i)
        rows.append({"shape": obj.shape, "colour": obj.colour, "size": obj.size, "texture": obj.texture,
                     "stripe_colour": obj.stripe_colour, "box": list(scene.box(i)),
                     "visible_box": list(visible) if visible else None, "text": indefinite(object_phrase(obj))})
    return rows
