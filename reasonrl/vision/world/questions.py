"""Question/answer pairs about a scene, in families, with exact answers.

Every item carries its family, its answer type (the vocabulary answer.py reads), whether the
image is needed to answer it (SpecVLM's text-only split: the `text` family is answerable from the
question alone), the scene objects it is about and its region of interest: the box an LVR model
should look at ([x0, y0, x1, y1), None when the whole image matters or nothing in it does).

A family asks only questions with one right answer and returns None when the scene has none to
ask (no object can be referred to uniquely, no unambiguous largest object, ...). Families:

- count: how many objects (of a colour, a shape, or both); the answer may be 0.
- colour / shape: the body colour or the shape of an object named without that attribute.
- position: where one object is relative to another (left, right, above, below), or a yes/no
  check of one relation. Asked only when one axis dominates: the box centres differ by at least
  a margin (a 16th of the image side: 7 pixels at 112) along it, and by the margin more than
  along the other axis.
- extreme: the colour or shape of the largest or smallest object: it must be alone in the
  largest (smallest) size class and also exceed (fall short of) every other object's pixel area
  by AREA_MARGIN, so the answer holds however size is judged.
- exists: is there a (size) colour shape; yes and no are equally likely.
- detail: the stripe colour of a small striped object, or whether a small object is striped.
- text: answerable without the image (facts about shapes, arithmetic over a described picture,
  which word names a colour or a shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .match import iou_matrix
from .palette import COLOURS
from .refer import describe, indefinite, matching, plural, refer
from .scene import Box, Scene, SceneObject
from .shapes import SHAPES, SIZES

AREA_MARGIN = 1.25  # the largest object has at least this many times the area of any other


@dataclass(frozen=True)
class QAItem:
    question: str
    answer: str
    """Canonical answer: a digit string, a colour, a shape, yes/no, left/right/above/below, solid/striped."""
    family: str
    answer_type: str
    """A key of answer.VOCABULARY: number, colour, shape, yes_no, direction or texture."""
    needs_image: bool
    roi: Box | None = None
    objects: tuple[int, ...] = ()
    """Indices of the scene objects the question is about."""


def count(scene: Scene, rng: np.random.Generator) -> QAItem:
    variant = int(rng.integers(4))  # all objects, a colour, a shape, both
    like = scene.objects[int(rng.integers(len(scene.objects)))] if scene.objects and rng.random() < 0.75 else None
    colour = like.colour if like else COLOURS[int(rng.integers(len(COLOURS)))]
    shape = like.shape if like else SHAPES[int(rng.integers(len(SHAPES)))]
    if any(o.stripe_colour == colour for o in scene.objects):
        variant &= 2  # "red objects" would be unclear next to red stripes: drop the colour
    noun = {0: "objects", 1: f"{colour} objects", 2: plural(shape), 3: f"{colour} {plural(shape)}"}[variant]
    hits = [i for i, o in enumerate(scene.objects)
            if (variant in (0, 2) or o.colour == colour) and (variant in (0, 1) or o.shape == shape)]
    return QAItem(f"How many {noun} are there?", str(len(hits)), "count", "number", True, None, tuple(hits))


def colour(scene: Scene, rng: np.random.Generator) -> QAItem | None:
    for i in rng.permutation(len(scene.objects)):
        ref = refer(scene, int(i), rng, exclude=("colour",))
        if ref:
            obj = scene.objects[i]
            question = f"What colour is {ref}{', apart from its stripes' if obj.stripe_colour else ''}?"
            return QAItem(question, obj.colour, "colour", "colour", True, scene.box(int(i)), (int(i),))
    return None


def shape(scene: Scene, rng: np.random.Generator) -> QAItem | None:
    for i in rng.permutation(len(scene.objects)):
        ref = refer(scene, int(i), rng, exclude=("shape",))
        if ref:
            return QAItem(f"What shape is {ref}?", scene.objects[i].shape, "shape", "shape", True,
                          scene.box(int(i)), (int(i),))
    return None


def position(scene: Scene, rng: np.random.Generator) -> QAItem | None:
    n, margin = len(scene.objects), scene.side / 16
    for k in rng.permutation(n * n):
        a, b = int(k // n), int(k % n)
        relation = _relation(scene, a, b, margin) if a != b else None
        if relation is None:
            continue
        ref_a, ref_b = refer(scene, a, rng), refer(scene, b, rng)
        if ref_a and ref_b:
            return _position_item(scene, a, b, ref_a, ref_b, relation, rng)
    return None


def _relation(scene: Scene, a: int, b: int, margin: float) -> str | None:
    (xa, ya), (xb, yb) = scene.centre(a), scene.centre(b)
    dx, dy = xa - xb, ya - yb
    if abs(dx) >= margin and abs(dx) >= abs(dy) + margin:
        return "left" if dx < 0 else "right"
    if abs(dy) >= margin and abs(dy) >= abs(dx) + margin:
        return "above" if dy < 0 else "below"
    return None


_OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
_PHRASE = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}


def _position_item(scene: Scene, a: int, b: int, ref_a: str, ref_b: str, relation: str, rng) -> QAItem:
    roi = _union(scene.box(a), scene.box(b))
    if rng.random() < 0.5:
        question = f"Where is {ref_a} relative to {ref_b}: left, right, above or below?"
        return QAItem(question, relation, "position", "direction", True, roi, (a, b))
    asked = relation if rng.random() < 0.5 else _OPPOSITE[relation]
    answer = "yes" if asked == relation else "no"
    return QAItem(f"Is {ref_a} {_PHRASE[asked]} {ref_b}?", answer, "position", "yes_no", True, roi, (a, b))


def extreme(scene: Scene, rng: np.random.Generator) -> QAItem | None:
    largest = rng.random() < 0.5
    i = _extreme_object(scene, largest)
    if i is None:
        return None
    obj, word = scene.objects[i], "largest" if largest else "smallest"
    if rng.random() < 0.5:
        question = f"What colour is the {word} object{', apart from its stripes' if obj.stripe_colour else ''}?"
        return QAItem(question, obj.colour, "extreme", "colour", True, scene.box(i), (i,))
    return QAItem(f"What shape is the {word} object?", obj.shape, "extreme", "shape", True, scene.box(i), (i,))


def _extreme_object(scene: Scene, largest: bool) -> int | None:
    """The object alone in the largest (smallest) size class, beating every other's area by AREA_MARGIN.
    Not asked when objects overlap (`--occlusion`): an occluded object's visible area can reverse the
    order of the whole ones, and the answer would depend on how size is judged."""
    n = len(scene.objects)
    if n < 2 or np.triu(iou_matrix(*2 * [[scene.box(j) for j in range(n)]]), 1).any():  # some two overlap
        return None
    size_class = [SIZES.index(o.size) for o in scene.objects]
    i = (max if largest else min)(range(n), key=lambda j: (size_class[j], scene.area(j)))
    for j in range(n):
        big, small = (i, j) if largest else (j, i)
        if j != i and (size_class[big] <= size_class[small] or scene.area(big) < AREA_MARGIN * scene.area(small)):
            return None
    return i


def exists(scene: Scene, rng: np.random.Generator) -> QAItem:
    attributes = ("size", "colour", "shape") if rng.random() < 0.3 else ("colour", "shape")
    if scene.objects and rng.random() < 0.5:
        like = scene.objects[int(rng.integers(len(scene.objects)))]
    else:
        like = _absent(scene, attributes, rng)
    hits = matching(scene, like, attributes)
    roi = _union(*(scene.box(j) for j in hits)) if hits else None
    return QAItem(f"Is there {indefinite(describe(like, attributes))} in the image?", "yes" if hits else "no", "exists",
                  "yes_no", True, roi, tuple(hits))


def _absent(scene: Scene, attributes, rng: np.random.Generator) -> SceneObject:
    """An object like none in the scene on `attributes`, stripe colours included ("no red circle" is
    unclear next to a circle with red stripes). Exists: 8 objects cover at most 16 of 40 colour-shape kinds."""
    while True:
        like = SceneObject(SHAPES[int(rng.integers(len(SHAPES)))], COLOURS[int(rng.integers(len(COLOURS)))],
                           SIZES[int(rng.integers(len(SIZES)))], 0, 0)
        if not matching(scene, like, attributes, loose=True):
            return like


def detail(scene: Scene, rng: np.random.Generator) -> QAItem | None:
    small = [int(i) for i in rng.permutation(len(scene.objects)) if scene.objects[i].size == "small"]
    kinds = (_stripe_colour, _texture) if rng.random() < 0.7 else (_texture, _stripe_colour)
    for kind in kinds:
        for i in small:
            item = kind(scene, i, rng)
            if item:
                return item
    return None


def _stripe_colour(scene: Scene, i: int, rng: np.random.Generator) -> QAItem | None:
    obj = scene.objects[i]
    ref = refer(scene, i, rng) if obj.stripe_colour else None
    if ref is None:
        return None
    return QAItem(f"What colour are the stripes on {ref}?", obj.stripe_colour, "detail", "colour", True,
                  scene.box(i), (i,))


def _texture(scene: Scene, i: int, rng: np.random.Generator) -> QAItem | None:
    ref = refer(scene, i, rng, exclude=("texture",))
    if ref is None:
        return None
    return QAItem(f"Is {ref} striped or solid?", scene.objects[i].texture, "detail", "texture", True,
                  scene.box(i), (i,))


_CORNERS = {"triangle": ("corners", 3), "square": ("corners", 4), "circle": ("corners", 0), "star": ("points", 5),
            "cross": ("arms", 4)}


def text(scene: Scene, rng: np.random.Generator) -> QAItem:
    variant = int(rng.integers(3))
    if variant == 0:
        name = SHAPES[int(rng.integers(len(SHAPES)))]
        part, value = _CORNERS[name]
        return QAItem(f"How many {part} does a {name} have?", str(value), "text", "number", False)
    if variant == 1:
        return _arithmetic(rng)
    kind = "colour" if rng.random() < 0.5 else "shape"
    words = [COLOURS[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))]]
    answer = words[0] if kind == "colour" else words[1]
    first, second = words if rng.random() < 0.5 else words[::-1]
    return QAItem(f"Which of these words names a {kind}: {first} or {second}?", answer, "text", kind, False)


def _arithmetic(rng: np.random.Generator) -> QAItem:
    a, b = (int(v) for v in rng.integers(1, 7, size=2))
    c1, c2 = (COLOURS[int(v)] for v in rng.choice(len(COLOURS), 2, replace=False))
    s1, s2 = (SHAPES[int(v)] for v in rng.choice(len(SHAPES), 2, replace=False))
    story = f"A picture shows {a} {c1} {s1 if a == 1 else plural(s1)} and {b} {c2} {s2 if b == 1 else plural(s2)}."
    if rng.random() < 0.5:
        return QAItem(f"{story} How many objects does it show?", str(a + b), "text", "number", False)
    return QAItem(f"{story} How many {plural(s2)} does it show?", str(b), "text", "number", False)


def _union(*boxes: Box) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


FAMILIES: dict[str, Callable[[Scene, np.random.Generator], QAItem | None]] = {
    "count": count, "colour": colour, "shape": shape, "position": position, "extreme": extreme,
    "exists": exists, "detail": detail, "text": text,
}


def ask(family: str, scene: Scene, rng: np.random.Generator) -> QAItem | None:
    """One question of `family` about `scene`, or None when the scene has none to ask."""
    if family not in FAMILIES:
        raise ValueError(f"unknown question family {family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[family](scene, rng)


def questions(scene: Scene, rng: np.random.Generator, families=tuple(FAMILIES)) -> list[QAItem]:
    """One question per family, for the families that have one about this scene."""
    return [item for item in (ask(f, scene, rng) for f in families) if item is not None]
