"""The shapes world: seeded synthetic scenes with exact ground truth, the data and judge of the vision work.

    rng = np.random.default_rng(0)
    scene = sample_scene(rng, SceneConfig())          # background + 1-8 objects
    rendering = render(scene)                         # .image (H, W, 3) uint8, .owner / .masks
    items = questions(scene, rng)                     # QAItem: question, answer, family, roi, ...
    found = detect(rendering.image)                   # DetectedObject: box, mask, colour, shape, ...
    pairs = match(found, [scene.box(i) for i in range(len(scene.objects))], min_iou=0.5)
    score_answer("\\boxed{three}", "3", "number")    # 1.0
    export_shapes(ShapesDataConfig(task="vqa", n=1000, seed=0, out="data/shapes"))
"""

from .answer import ANSWER_TYPES, read_answer, score_answer
from .bench import DetectorBenchConfig, bench_detector
from .caption import caption
from .detect import DetectedObject, detect
from .export import export_shapes, read_png, write_png
from .match import Match, box_of, iou_matrix, match
from .palette import COLOURS, PALETTE, quantise
from .problems import TASKS, Problem, ShapesDataConfig, iter_problems
from .questions import FAMILIES, QAItem, ask, questions
from .refer import object_phrase, refer
from .render import Rendering, full_mask, render
from .sampling import SceneConfig, sample_scene
from .scene import Background, Scene, SceneObject
from .shapes import SHAPES, SIZES, TEXTURES, size_extent

__all__ = [
    "ANSWER_TYPES", "COLOURS", "FAMILIES", "PALETTE", "SHAPES", "SIZES", "TASKS", "TEXTURES",
    "Background", "DetectedObject", "DetectorBenchConfig", "Match", "Problem", "QAItem", "Rendering", "Scene", "SceneConfig",
    "SceneObject", "ShapesDataConfig", "ask", "bench_detector", "box_of", "caption", "detect", "export_shapes", "full_mask",
    "iou_matrix", "iter_problems", "match", "object_phrase", "quantise", "questions", "read_answer", "read_png",
    "refer", "render", "sample_scene", "score_answer", "size_extent", "write_png",
]
