import pytest

from reasonrl.vision.world import Background, Scene, SceneObject

GREY = Background((120, 120, 120), (120, 120, 120))


def build(*objects, background=GREY, size=112) -> Scene:
    """A hand-built scene from (shape, colour, size, x, y[, stripe colour]) tuples."""
    built = []
    for shape, colour, size_class, x, y, *stripes in objects:
        stripe = stripes[0] if stripes else None
        built.append(SceneObject(shape, colour, size_class, x, y, "striped" if stripe else "solid", stripe))
    return Scene(size, size, background, tuple(built))


@pytest.fixture
def make_scene():
    return build
