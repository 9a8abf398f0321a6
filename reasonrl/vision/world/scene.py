"""What a shapes-world image shows: a background and objects in drawing order.

A `Scene` is plain data (frozen dataclasses, JSON round trip through `to_dict`/`from_dict`), so
later work builds variants of it: ImageDoctor-style perturbations are `scene.replace_object(i,
colour="blue")` or `scene.remove_object(i)`, rendered again with exact masks. Everything else an
object has (extent, box, area) follows from its attributes and the image side.

Conventions: pixel coordinates are (x right, y down); boxes are [x0, y0, x1, y1) with x1 and y1
exclusive, so a box's width is x1 - x0.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from .palette import COLOURS, is_background_colour
from .shapes import MIN_SIDE, SHAPES, SIZES, TEXTURES, size_extent, template, template_box

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Background:
    start: tuple[int, int, int]
    """RGB at the start of the gradient (the whole background when plain)."""
    end: tuple[int, int, int]
    """RGB at the end of the gradient; equal to `start` for a plain background."""
    angle: int = 0
    """Direction the gradient runs from start to end, in degrees (0: left to right, 90: top to bottom)."""

    def __post_init__(self):
        for name in ("start", "end"):
            rgb = tuple(getattr(self, name))
            if len(rgb) != 3 or not all(isinstance(c, int) for c in rgb) or not is_background_colour(rgb):
                raise ValueError(f"Background.{name} must be a near-grey RGB triple (palette.py), got {rgb!r}")
            object.__setattr__(self, name, rgb)

    @property
    def kind(self) -> str:
        return "plain" if self.start == self.end else "gradient"


@dataclass(frozen=True)
class SceneObject:
    shape: str
    """One of shapes.SHAPES."""
    colour: str
    """Body colour, one of palette.COLOURS."""
    size: str
    """small, medium or large: the object fills a square of `shapes.size_extent(size, side)` pixels."""
    x: int
    """Column of the left edge of the object's square."""
    y: int
    """Row of the top edge of the object's square."""
    texture: str = "solid"
    """solid or striped."""
    stripe_colour: str | None = None
    """Colour of the stripes of a striped object (never its body colour); None when solid."""

    def __post_init__(self):
        for name, allowed in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES), ("texture", TEXTURES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"SceneObject.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not (isinstance(self.x, int) and isinstance(self.y, int)):
            raise ValueError(f"SceneObject.x and y must be integers (pixels), got {self.x!r} and {self.y!r}")
        striped = self.texture == "striped"
        if striped != (self.stripe_colour is not None) or self.stripe_colour == self.colour:
            raise ValueError(f"SceneObject.stripe_colour must be a colour other than the body colour exactly when "
                             f"striped, got texture {self.texture!r} and stripe_colour {self.stripe_colour!r}")
        if striped and self.stripe_colour not in COLOURS:
            raise ValueError(f"SceneObject.stripe_colour must be one of {', '.join(COLOURS)}, "
                             f"got {self.stripe_colour!r}")


@dataclass(frozen=True)
class Scene:
    width: int
    """Image width in pixels."""
    height: int
    """Image height in pixels; sizes scale with the shorter side."""
    background: Background
    objects: tuple[SceneObject, ...]
    """Drawing order: a later object covers an earlier one where they overlap."""

    def __post_init__(self):
        if not all(isinstance(v, int) and v >= MIN_SIDE for v in (self.width, self.height)):
            raise ValueError(f"Scene width and height must be integers >= {MIN_SIDE}, got {self.width}x{self.height}")
        object.__setattr__(self, "objects", tuple(self.objects))
        for i, obj in enumerate(self.objects):
            e = self.extent(obj)
            if obj.x < 0 or obj.y < 0 or obj.x + e > self.width or obj.y + e > self.height:
                raise ValueError(f"Scene.objects[{i}]: its {e}x{e} square at ({obj.x}, {obj.y}) leaves the "
                                 f"{self.width}x{self.height} image")

    @property
    def side(self) -> int:
        return min(self.width, self.height)

    def extent(self, obj: SceneObject) -> int:
        return size_extent(obj.size, self.side)

    def box(self, i: int) -> Box:
        """Tight box of object i's pixels (all of them, covered or not)."""
        obj = self.objects[i]
        x0, y0, x1, y1 = template_box(obj.shape, self.extent(obj))
        return obj.x + x0, obj.y + y0, obj.x + x1, obj.y + y1

    def area(self, i: int) -> int:
        """Pixels of object i, covered or not."""
        obj = self.objects[i]
        return int(template(obj.shape, self.extent(obj)).sum())

    def centre(self, i: int) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box(i)
        return (x0 + x1) / 2, (y0 + y1) / 2

    def replace_object(self, i: int, **changes) -> Scene:
        """This scene with object i's attributes changed (e.g. colour="blue", shape="star")."""
        objects = list(self.objects)
        objects[i] = replace(objects[i], **changes)
        return replace(self, objects=tuple(objects))

    def remove_object(self, i: int) -> Scene:
        return replace(self, objects=self.objects[:i] + self.objects[i + 1:])

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "background": asdict(self.background),
                "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        bg = data["background"]
        background = Background(tuple(bg["start"]), tuple(bg["end"]), bg.get("angle", 0))
        return cls(data["width"], data["height"], background, tuple(SceneObject(**o) for o in data["objects"]))

    def key(self) -> str:
        """Canonical text of the scene: equal keys render equal images."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
