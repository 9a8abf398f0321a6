"""Prompts for text-to-image: each object named left to right with its size, colour, shape and place.

    "a large red circle at the top left and a medium blue square at the right"

The world's caption (world/caption.py) names no places; a GenEval-style position score needs
them, so each object also gets the cell of a 3 x 3 grid its box centre falls in. The same
`region` function reads a detected box, so a generated image is scored in the prompt's terms.
"""

from __future__ import annotations

from reasonrl.vision.world import Scene
from reasonrl.vision.world.caption import left_to_right
from reasonrl.vision.world.refer import indefinite

ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")


def region(box, width: int, height: int) -> str:
    """The 3 x 3 cell of the box centre: 'top left', 'top', ..., 'centre', ..., 'bottom right'."""
    x0, y0, x1, y1 = box
    col = min(2, max(0, int(3 * (x0 + x1) / 2 / width)))
    row = min(2, max(0, int(3 * (y0 + y1) / 2 / height)))
    if row == 1:
        return COLUMNS[col]
    return ROWS[row] if col == 1 else f"{ROWS[row]} {COLUMNS[col]}"


def object_words(scene: Scene, i: int) -> str:
    """'large red circle' (stripes, when present, as the world says them)."""
    obj = scene.objects[i]
    words = f"{obj.size} {obj.colour} {obj.shape}"
    return words + (f" with {obj.stripe_colour} stripes" if obj.stripe_colour else "")


def object_prompt(scene: Scene, i: int) -> str:
    """'a large red circle at the top left'."""
    place = region(scene.box(i), scene.width, scene.height)
    return f"{indefinite(object_words(scene, i))} at the {place}"


def prompt(scene: Scene) -> str:
    parts = [object_prompt(scene, i) for i in left_to_right(scene)]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
