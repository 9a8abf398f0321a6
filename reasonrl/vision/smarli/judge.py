"""Layout metrics of generated images from the oracle detector, and SMARLI's layout reward.

Per image, with the layout's boxes at the detector's scale (gen/images.judge_view: 2x):

- mIoU: per layout box, the best IoU of any detection (0 with none), averaged over boxes;
- precision: the share of detections that overlap some layout box with IoU >= 0.5 (0 with none);
- recall: the share of layout boxes some detection overlaps with IoU >= 0.5;
- colour / shape: the question a VQA judge answers per box. Colour: the most common palette
  colour of the pixels inside the box is the object's. Shape: of the detections whose centre lies
  in the box, the largest has the object's shape. attribute = their mean over boxes;
- leakage: over ordered pairs (A, B) of objects of different colours, the share where at least
  LEAK_PIXELS pixels of A's colour lie inside B's box and outside A's box.

reward = 0.5 attribute + 0.5 mIoU + 0.1 precision (SMARLI's R_layout, with the oracle detector for
Grounding DINO and the per-box colour and shape checks for the Qwen3-VL judge; texture is not
judged, the shapes here are solid).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reasonrl.vision.world import COLOURS, detect, iou_matrix, quantise

from reasonrl.vision.gen.images import judge_view

from .layout import Layout

LEAK_PIXELS = 4  # one pixel of a 32-pixel image is 4 at the detector's scale
KEYS = ("miou", "precision", "recall", "colour", "shape", "attribute", "leakage", "reward")


def pixel_box(box, side: int) -> tuple[int, int, int, int]:
    return tuple(int(round(v * side)) for v in box)


def judge(layout: Layout, image: np.ndarray) -> dict[str, float]:
    return _scores(layout, _checks(layout, image))


def flaw_map(layout: Layout, image: np.ndarray) -> np.ndarray:
    """(2S, 2S) float32 in {0, 1}, at the detector's scale: where the oracle finds the image wrong
    against its layout, the oracle's stand-in for a judge's misalignment heatmap. Flagged: the box of
    every object that fails a check of `judge` (its colour, its shape, or no detection overlapping it
    with IoU >= 0.5: attribute and mIoU), the pixels of every detection that overlaps no box with IoU
    >= 0.5 (a stray or broken object: precision), and the pixels of an object's colour inside another
    object's box of a different colour and outside its own (`leakage`'s pixels, however few). Not
    flagged: a box whose object passes every check with an IoU below 1 (it still costs mIoU)."""
    return _flaws(layout, _checks(layout, image))


def judge_with_flaws(layout: Layout, image: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """`judge` and `flaw_map` of one image from one detection pass."""
    c = _checks(layout, image)
    return _scores(layout, c), _flaws(layout, c)


def _scores(layout: Layout, c: _Checks) -> dict[str, float]:
    found, ious = c.found, c.ious
    out = {"miou": float(ious.max(0).mean()) if found else 0.0,
           "precision": float((ious.max(1) >= 0.5).mean()) if found else 0.0,
           "recall": float((ious.max(0) >= 0.5).mean()) if found else 0.0}
    out["colour"], out["shape"] = float(np.mean(c.colour_ok)), float(np.mean(c.shape_ok))
    out["attribute"] = (out["colour"] + out["shape"]) / 2
    out["leakage"] = leakage(layout, c.colours, c.boxes)
    out["reward"] = layout_reward(out)
    return out


def _flaws(layout: Layout, c: _Checks) -> np.ndarray:
    flawed = np.zeros(c.colours.shape, dtype=bool)
    hit = c.ious.max(0) >= 0.5 if c.found else np.zeros(len(c.boxes), dtype=bool)
    for ok_c, ok_s, ok_box, (x0, y0, x1, y1) in zip(c.colour_ok, c.shape_ok, hit, c.boxes):
        if not (ok_c and ok_s and ok_box):
            flawed[y0:y1, x0:x1] = True
    for d, matched in zip(c.found, c.ious.max(1) >= 0.5 if c.boxes else [False] * len(c.found)):
        if not matched:
            flawed |= d.mask
    for a, b in _colour_pairs(layout):
        flawed |= _leaked(c.colours, layout.objects[a].colour, c.boxes[a], c.boxes[b])
    return flawed.astype(np.float32)


@dataclass
class _Checks:
    colours: np.ndarray  # (2S, 2S) palette index per pixel of the detector's view, -1 off the palette
    found: list  # the detections
    boxes: list[tuple[int, int, int, int]]  # the layout's boxes in the view's pixels
    ious: np.ndarray  # (detections, boxes)
    colour_ok: list[bool]  # per box: its most common palette colour is the object's
    shape_ok: list[bool]  # per box: the largest detection centred in it has the object's shape


def _checks(layout: Layout, image: np.ndarray) -> _Checks:
    view = judge_view(image)
    side = view.shape[0]
    found = detect(view)
    boxes = [pixel_box(o.box, side) for o in layout.objects]
    ious = iou_matrix(found, boxes) if found else np.zeros((0, len(boxes)))
    colours = quantise(view)
    colour_ok, shape_ok = [], []
    for obj, (x0, y0, x1, y1) in zip(layout.objects, boxes):
        inside = colours[y0:y1, x0:x1]
        inside = inside[inside >= 0]
        colour_ok.append(len(inside) > 0 and COLOURS[np.bincount(inside, minlength=len(COLOURS)).argmax()] == obj.colour)
        within = [d for d in found if x0 <= (d.box[0] + d.box[2]) / 2 < x1 and y0 <= (d.box[1] + d.box[3]) / 2 < y1]
        shape_ok.append(bool(within) and max(within, key=lambda d: d.area).shape == obj.shape)
    return _Checks(colours, found, boxes, ious, colour_ok, shape_ok)


def layout_reward(m: dict[str, float]) -> float:
    return 0.5 * m["attribute"] + 0.5 * m["miou"] + 0.1 * m["precision"]


def leakage(layout: Layout, colours: np.ndarray, boxes: list) -> float:
    """NaN when no two objects differ in colour."""
    hits = [int(_leaked(colours, layout.objects[a].colour, boxes[a], boxes[b]).sum()) >= LEAK_PIXELS
            for a, b in _colour_pairs(layout)]
    return float(np.mean(hits)) if hits else float("nan")


def _colour_pairs(layout: Layout) -> list[tuple[int, int]]:
    """Ordered pairs (a, b) of the layout's objects of different colours."""
    objs = layout.objects
    return [(a, b) for a in range(len(objs)) for b in range(len(objs)) if a != b and objs[a].colour != objs[b].colour]


def _leaked(colours: np.ndarray, colour: str, own: tuple, other: tuple) -> np.ndarray:
    """(2S, 2S) bool: the pixels of `colour` inside box `other` and outside box `own`."""
    region = np.zeros(colours.shape, dtype=bool)
    x0, y0, x1, y1 = other
    region[y0:y1, x0:x1] = True
    ax0, ay0, ax1, ay1 = own
    region[ay0:ay1, ax0:ax1] = False
    return (colours == COLOURS.index(colour)) & region


def judge_all(layouts: list[Layout], images: np.ndarray) -> dict[str, float]:
    """Means over images (leakage over images that have a pair of colours)."""
    rows = [judge(lay, img) for lay, img in zip(layouts, images)]
    out = {}
    for key in KEYS:
        vals = [r[key] for r in rows if not np.isnan(r[key])]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    return out
