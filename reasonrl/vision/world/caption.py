"""Captions: a scene in one sentence, objects named left to right with all their attributes.

"3 objects on a gradient background, from left to right: a small red circle, a large blue square
with yellow stripes and a medium green star." Objects are ordered by the centre of their box
(x, then y), so the order a caption gives is the order a detector reads off a generated image.
"""

from __future__ import annotations

from .refer import indefinite, object_phrase
from .scene import Scene


def left_to_right(scene: Scene) -> list[int]:
    """Object indices ordered by box centre: x, then y, then index."""
    return sorted(range(len(scene.objects)), key=lambda i: (scene.centre(i), i))


def caption(scene: Scene) -> str:
    phrases = [indefinite(object_phrase(scene.objects[i])) for i in left_to_right(scene)]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    n = len(phrases)
    where = f"on a {scene.background.kind} background"
    if n == 1:
        return f"One object {where}: {listed}."
    return f"{n} objects {where}, from left to right: {listed}."
