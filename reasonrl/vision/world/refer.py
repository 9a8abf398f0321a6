"""Words for objects: noun phrases for captions and layouts, and referring expressions for questions.

A referring expression ("the small red circle") names just enough attributes to pick out one
object among the scene's objects; questions about an object are only asked when one exists.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from .scene import Scene, SceneObject

ATTRIBUTES = ("size", "texture", "colour", "shape")  # in the order they are spoken


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("ss") else "s")


def indefinite(phrase: str) -> str:
    """'a red circle', 'an orange star'."""
    return ("an " if phrase.startswith(tuple("aeiou")) else "a ") + phrase


def object_phrase(obj: SceneObject) -> str:
    """All of an object's attributes: 'small red circle with blue stripes'."""
    phrase = f"{obj.size} {obj.colour} {obj.shape}"
    return phrase + (f" with {obj.stripe_colour} stripes" if obj.stripe_colour else "")


def describe(obj: SceneObject, attributes) -> str:
    """The named attributes in speaking order; 'object' stands in for the shape when it is not named."""
    words = [getattr(obj, a) for a in ATTRIBUTES if a in attributes and a != "shape"]
    return " ".join(words + [obj.shape if "shape" in attributes else "object"])


def refer(scene: Scene, i: int, rng: np.random.Generator, exclude=()) -> str | None:
    """'the ...': the fewest attributes (never those in `exclude`) that fit object i alone; None if none do.

    A colour word also fits objects striped in that colour ("the yellow object" is not said when
    another object has yellow stripes); texture is named only in scenes with both textures.
    Among equally short expressions, those naming the shape come first, and one is drawn from `rng`."""
    both_textures = len({o.texture for o in scene.objects}) == 2
    allowed = [a for a in ATTRIBUTES if a not in exclude and (a != "texture" or both_textures)]
    for k in range(1, len(allowed) + 1):
        unique = [c for c in combinations(allowed, k) if matching(scene, scene.objects[i], c, loose=True) == [i]]
        unique = [c for c in unique if "shape" in c] or unique
        if unique:
            return "the " + describe(scene.objects[i], unique[int(rng.integers(len(unique)))])
    return None


def matching(scene: Scene, like: SceneObject, attributes, loose: bool = False) -> list[int]:
    """Indices of the objects that agree with `like` on every named attribute.

    `loose`: an object agrees on colour when its body or its stripes have `like`'s colour."""
    def agrees(o: SceneObject, a: str) -> bool:
        return getattr(o, a) == getattr(like, a) or (loose and a == "colour" and o.stripe_colour == like.colour)

    return [j for j, o in enumerate(scene.objects) if all(agrees(o, a) for a in attributes)]
