"""Judge data on the shapes world: "generated" images with exact flaw maps and analytic scores.

The prompt is a scene's caption; the image is rendered from a perturbed copy of that scene, then
local artifacts are painted on it (ImageDoctor-mini, docs/vision.md; the analogue of RichHF-18K's
human heatmaps and scores for ImageDoctor, arXiv 2510.01010):

- misalignment: an object recoloured, reshaped or dropped. Its map is the object's pixels in the
  prompt's render and in the image (all of them for a recolour; both for a reshape), or the
  prompt object's box when it was dropped;
- artifacts: square patches of noise, pixel shuffle or box blur, centred on an object's edge. The
  map is the pixels that differ from the clean render (exact: a blurred flat area changed nothing);
- scores: alignment = 1 - misaligned / objects; plausibility = max(0, 1 - k * artifact fraction of
  the image); aesthetics = (contrast + centring) / 2, contrast being the grey-level standard deviation
  over 128 (at most 1), centring 1 - the distance of the objects' centroid from the image centre over
  half the diagonal; overall = the `weights` sum.

With a `GeneratorView` the judged image is what an image generator of this repository would show the
judge instead of a render (the dense reward, dense.py): the scene drawn as the generator's data draws
them (medium and large objects) at twice its side, every second pixel kept (vision/gen/images.py),
passed through the generator's cell codebook (vision/smarli/cells.py) and scaled back up by pixel
repetition. The flaws are painted on the render as above; their maps, the artifact share and the
aesthetics are those of the viewed image (an artifact the view wipes out is no flaw, and gets no note).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from reasonrl.reward.imagedoctor.judgement import render_judgement
from reasonrl.vision.world import COLOURS, SHAPES, Scene, SceneConfig, caption, render, sample_scene
from reasonrl.vision.world.refer import object_phrase

if TYPE_CHECKING:
    from reasonrl.vision.smarli.cells import CellCodebook

PERTURBATIONS = ("recolour", "reshape", "drop")
ARTIFACTS = ("noise", "shuffle", "blur")


@dataclass
class JudgeDataConfig:
    misaligned_max: int = 2
    """Objects perturbed at most per image (0 to this many, never all of them)."""
    artifacts_max: int = 2
    """Artifact patches at most per image (0 to this many)."""
    patch: int = 12
    """Side of an artifact patch in pixels."""
    plausibility_k: float = 10.0
    """Plausibility = 1 - k x the artifact share of the image's pixels."""
    weights: tuple[float, float, float] = (0.5, 0.3, 0.2)
    """Overall = weights . (alignment, plausibility, aesthetics)."""
    scene: SceneConfig = field(default_factory=lambda: SceneConfig(width=112, height=112))
    """The prompt scenes."""


@dataclass
class JudgeExample:
    prompt: Scene  # what the caption describes
    caption: str
    image: np.ndarray  # (H, W, 3) uint8, the judged image
    misalignment: np.ndarray  # (H, W) float32 in {0, 1}
    artifact: np.ndarray  # (H, W) float32 in {0, 1}
    scores: dict[str, float]  # alignment, aesthetics, plausibility, overall
    notes: list[str]  # one sentence per flaw
    boxes: list[tuple[int, int, int, int]]  # xyxy (end exclusive) of each flaw's map

    def judgement(self) -> str:
        """The look-think-predict text a judge should write for this image."""
        return render_judgement(self.scores, self.boxes, " ".join(self.notes) or "The image matches the caption.")


@dataclass
class GeneratorView:
    """How a generator with a cell codebook shows a scene drawn at 2 x `side` pixels: every second
    pixel, through the codebook, each pixel repeated `scale` times (up to the judge's image size)."""
    codebook: CellCodebook
    side: int
    scale: int
    sizes: tuple[str, ...] = ("medium", "large")
    """Object sizes the generator draws (vision/gen/images.py leaves small ones out: at 32 px a small
    object's shape does not survive, nor would a judge's view of a change to it)."""

    def scene(self, rng: np.random.Generator, cfg: SceneConfig) -> Scene:
        """A prompt scene as the generator's data draws them: `cfg`'s counts and backgrounds, the
        generator's sizes and no stripes (a cell has one colour, so its prompts name none)."""
        from reasonrl.vision.gen.images import ImageConfig, draw_scene

        return draw_scene(rng, ImageConfig(side=self.side, min_objects=cfg.min_objects, max_objects=cfg.max_objects,
                                           sizes=self.sizes, gradient_fraction=cfg.gradient_fraction,
                                           striped_fraction=0.0))

    def image(self, render_image: np.ndarray) -> np.ndarray:
        small = self.codebook.decode(self.codebook.encode(np.ascontiguousarray(render_image[1::2, 1::2])))
        return self._up(small)

    def mask(self, render_mask: np.ndarray) -> np.ndarray:
        return self._up(render_mask[1::2, 1::2])

    def box(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """A render box (xyxy, end exclusive) as the viewed image's: the kept pixels it holds, scaled."""
        x0, y0, x1, y1 = box
        return x0 // 2 * self.scale, y0 // 2 * self.scale, x1 // 2 * self.scale, y1 // 2 * self.scale

    def _up(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.repeat(self.scale, axis=0).repeat(self.scale, axis=1))


def judge_example(rng: np.random.Generator, cfg: JudgeDataConfig, view: GeneratorView | None = None) -> JudgeExample:
    """One judged image; with `view`, `cfg.scene` must be 2 x view.side pixels wide and high."""
    shown: Callable[[np.ndarray], np.ndarray] = view.image if view is not None else (lambda a: a)
    prompt = sample_scene(rng, cfg.scene) if view is None else view.scene(rng, cfg.scene)
    k = int(rng.integers(0, min(cfg.misaligned_max, len(prompt.objects) - 1) + 1))
    scene, miss, notes, boxes = perturb(prompt, sorted(rng.choice(len(prompt.objects), k, replace=False).tolist()), rng)
    if view is not None:
        miss, boxes = view.mask(miss), [view.box(b) for b in boxes]
    rendering = render(scene)
    image, clean = rendering.image.copy(), shown(rendering.image)
    viewed = clean
    for _ in range(int(rng.integers(0, cfg.artifacts_max + 1))):
        changed, note = paint_artifact(image, rendering.owner, cfg.patch, rng, view.scale / 2 if view else 1)
        if view is not None and changed.any():  # what the patch changed in the viewed image
            before, viewed = viewed, shown(image)
            changed = (viewed != before).any(-1)
        if changed.any():
            notes.append(note)
            boxes.append(box_of(changed))
    image = shown(image)
    art = (image != clean).any(-1)  # overlapping patches: what differs from the clean render in the end
    # a later patch can undo an earlier one's change (through a codebook, mostly): no note for what is gone
    kept = [i for i, (note, (x0, y0, x1, y1)) in enumerate(zip(notes, boxes))
            if "artifact" not in note or art[y0:y1, x0:x1].any()]
    notes, boxes = [notes[i] for i in kept], [boxes[i] for i in kept]
    owner = rendering.owner if view is None else view.mask(rendering.owner)
    return JudgeExample(prompt, caption(prompt), image, miss.astype(np.float32), art.astype(np.float32),
                        scores(image, owner, k / len(prompt.objects), art.mean(), cfg), notes, boxes)


def perturb(prompt: Scene, chosen: list[int], rng: np.random.Generator):
    """(image scene, misalignment mask (H, W) bool, notes, boxes) for the chosen prompt objects."""
    before = render(prompt).owner
    scene, miss, notes, boxes, dropped = prompt, np.zeros(before.shape, dtype=bool), [], [], []
    for i in chosen:
        obj, kind = prompt.objects[i], PERTURBATIONS[int(rng.integers(len(PERTURBATIONS)))]
        if kind == "recolour":
            colour = str(rng.choice([c for c in COLOURS if c not in (obj.colour, obj.stripe_colour)]))
            scene = scene.replace_object(i, colour=colour)
            notes.append(f"The {object_phrase(obj)} is {colour}.")
        elif kind == "reshape":
            shape = str(rng.choice([s for s in SHAPES if s != obj.shape]))
            scene = scene.replace_object(i, shape=shape)
            notes.append(f"The {object_phrase(obj)} is drawn as a {shape}.")
        else:
            dropped.append(i)
            notes.append(f"The {object_phrase(obj)} is missing.")
    after = render(drop(scene, dropped)).owner
    kept = [i for i in range(len(prompt.objects)) if i not in dropped]
    for i in chosen:
        if i in dropped:
            x0, y0, x1, y1 = prompt.box(i)
            region = np.zeros(before.shape, dtype=bool)
            region[y0:y1, x0:x1] = True
        else:
            region = (before == i) | (after == kept.index(i))
        miss |= region
        boxes.append(box_of(region))
    return drop(scene, dropped), miss, notes, boxes


def drop(scene: Scene, indices: list[int]) -> Scene:
    for i in sorted(indices, reverse=True):
        scene = scene.remove_object(i)
    return scene


def paint_artifact(image: np.ndarray, owner: np.ndarray, side: int, rng: np.random.Generator, note_scale: float = 1):
    """Paint one patch in place, centred on a random object-edge pixel (anywhere if none); the
    (H, W) bool of the pixels it changed, and a note (its position times `note_scale`: in the pixels
    of the image the judge sees)."""
    h, w = owner.shape
    edge = np.argwhere(owner != np.roll(owner, 1, axis=1))
    cy, cx = edge[int(rng.integers(len(edge)))] if len(edge) else (int(rng.integers(h)), int(rng.integers(w)))
    y0, x0 = int(np.clip(cy - side // 2, 0, h - side)), int(np.clip(cx - side // 2, 0, w - side))
    window = (slice(y0, y0 + side), slice(x0, x0 + side))
    before = image[window].copy()
    kind = ARTIFACTS[int(rng.integers(len(ARTIFACTS)))]
    if kind == "noise":
        image[window] = rng.integers(0, 256, before.shape, dtype=np.uint8)
    elif kind == "shuffle":
        flat = before.reshape(-1, 3)
        image[window] = flat[rng.permutation(len(flat))].reshape(before.shape)
    else:  # 3x3 box blur of the patch (edge pixels replicated)
        padded = np.pad(before.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
        image[window] = np.rint(sum(padded[dy:dy + side, dx:dx + side] for dy in range(3) for dx in range(3)) / 9)
    changed = np.zeros(owner.shape, dtype=bool)
    changed[window] = (image[window] != before).any(-1)
    x, y = (int((v + side // 2) * note_scale) for v in (x0, y0))
    return changed, f"There is a {kind} artifact near ({x}, {y})."


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def scores(image: np.ndarray, owner: np.ndarray, misaligned: float, artifact_share: float,
           cfg: JudgeDataConfig) -> dict[str, float]:
    alignment = 1.0 - misaligned
    plausibility = max(0.0, 1.0 - cfg.plausibility_k * float(artifact_share))
    aesthetics = (contrast(image) + centring(owner)) / 2
    a, p, e = cfg.weights
    return {"alignment": alignment, "aesthetics": aesthetics, "plausibility": plausibility,
            "overall": a * alignment + p * plausibility + e * aesthetics}


def contrast(image: np.ndarray) -> float:
    grey = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return min(1.0, float(grey.std()) / 128)


def centring(owner: np.ndarray) -> float:
    ys, xs = np.nonzero(owner >= 0)
    if not len(xs):
        return 0.0
    h, w = owner.shape
    return 1.0 - float(np.hypot(xs.mean() + 0.5 - w / 2, ys.mean() + 0.5 - h / 2) / np.hypot(w / 2, h / 2))
