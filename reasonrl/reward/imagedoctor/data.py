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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reasonrl.reward.imagedoctor.judgement import render_judgement
from reasonrl.vision.world import COLOURS, SHAPES, Scene, SceneConfig, caption, render, sample_scene
from reasonrl.vision.world.refer import object_phrase

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


def judge_example(rng: np.random.Generator, cfg: JudgeDataConfig) -> JudgeExample:
    prompt = sample_scene(rng, cfg.scene)
    k = int(rng.integers(0, min(cfg.misaligned_max, len(prompt.objects) - 1) + 1))
    scene, miss, notes, boxes = perturb(prompt, sorted(rng.choice(len(prompt.objects), k, replace=False).tolist()), rng)
    rendering = render(scene)
    image = rendering.image.copy()
    for _ in range(int(rng.integers(0, cfg.artifacts_max + 1))):
        changed, note = paint_artifact(image, rendering.owner, cfg.patch, rng)
        if changed.any():
            notes.append(note)
            boxes.append(box_of(changed))
    art = (image != rendering.image).any(-1)  # overlapping patches: what differs from the clean render in the end
    return JudgeExample(prompt, caption(prompt), image, miss.astype(np.float32), art.astype(np.float32),
                        scores(image, rendering.owner, k / len(prompt.objects), art.mean(), cfg), notes, boxes)


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


def paint_artifact(image: np.ndarray, owner: np.ndarray, side: int, rng: np.random.Generator):
    """Paint one patch in place, centred on a random object-edge pixel (anywhere if none); the
    (H, W) bool of the pixels it changed, and a note."""
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
    return changed, f"There is a {kind} artifact near ({x0 + side // 2}, {y0 + side // 2})."


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
