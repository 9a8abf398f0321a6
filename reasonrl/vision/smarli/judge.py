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

import numpy as np

from reasonrl.vision.world import COLOURS, detect, iou_matrix, quantise

from reasonrl.vision.gen.images import judge_view

from .layout import Layout

LEAK_PIXELS = 4  # one pixel of a 32-pixel image is 4 at the detector's scale
KEYS = ("miou", "precision", "recall", "colour", "shape", "attribute", "leakage", "reward")


def pixel_box(box, side: int) -> tuple[int, int, int, int]:
    return tuple(int(round(v * side)) for v in box)


def judge(layout: Layout, image: np.ndarray) -> dict[str, float]:
    view = judge_view(image)
    side = view.shape[0]
    found = detect(view)
    boxes = [pixel_box(o.box, side) for o in layout.objects]
    ious = iou_matrix(found, boxes) if found else np.zeros((0, len(boxes)))
    colours = quantise(view)
    out = {"miou": float(ious.max(0).mean()) if found else 0.0,
           "precision": float((ious.max(1) >= 0.5).mean()) if found else 0.0,
           "recall": float((ious.max(0) >= 0.5).mean()) if found else 0.0}
    colour_ok, shape_ok = [], []
    for obj, (x0, y0, x1, y1) in zip(layout.objects, boxes):
        inside = colours[y0:y1, x0:x1]
        inside = inside[inside >= 0]
        colour_ok.append(len(inside) > 0 and COLOURS[np.bincount(inside, minlength=len(COLOURS)).argmax()] == obj.colour)
        within = [d for d in found if x0 <= (d.box[0] + d.box[2]) / 2 < x1 and y0 <= (d.box[1] + d.box[3]) / 2 < y1]
        shape_ok.append(bool(within) and max(within, key=lambda d: d.area).shape == obj.shape)
    out["colour"], out["shape"] = float(np.mean(colour_ok)), float(np.mean(shape_ok))
    out["attribute"] = (out["colour"] + out["shape"]) / 2
    out["leakage"] = leakage(layout, colours, boxes)
    out["reward"] = layout_reward(out)
    return out


def layout_reward(m: dict[str, float]) -> float:
    return 0.5 * m["attribute"] + 0.5 * m["miou"] + 0.1 * m["precision"]


def leakage(layout: Layout, colours: np.ndarray, boxes: list) -> float:
    """NaN when no two objects differ in colour."""
    hits = []
    for a, obj_a in enumerate(layout.objects):
        code = COLOURS.index(obj_a.colour)
        own = np.zeros(colours.shape, dtype=bool)
        ax0, ay0, ax1, ay1 = boxes[a]
        own[ay0:ay1, ax0:ax1] = True
        for b, obj_b in enumerate(layout.objects):
            if b == a or obj_b.colour == obj_a.colour:
                continue
            x0, y0, x1, y1 = boxes[b]
            region = np.zeros(colours.shape, dtype=bool)
            region[y0:y1, x0:x1] = True
            hits.append(int(((colours == code) & region & ~own).sum()) >= LEAK_PIXELS)
    return float(np.mean(hits)) if hits else float("nan")


def judge_all(layouts: list[Layout], images: np.ndarray) -> dict[str, float]:
    """Means over images (leakage over images that have a pair of colours)."""
    rows = [judge(lay, img) for lay, img in zip(layouts, images)]
    out = {}
    for key in KEYS:
        vals = [r[key] for r in rows if not np.isnan(r[key])]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    return out
