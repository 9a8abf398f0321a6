"""`shapes`: visual question answering on the shapes world, with exact answers.

    shapes:                                    every question family, 112x112 images, 1-8 objects
    shapes:?families=count,colour&max_objects=4&image_size=112

Each prompt is one user message holding a rendered scene and a question about it (how many, what
colour, where, which is largest, is there, what is inside a small object, and questions answerable
without the image); the answer is exact, because the world knows every object. The reward is the
world's answer checker (`score_answer`): 1 for the right answer in any accepted form, in the last
`\\boxed{}` preferably, 0 for anything else, and it never raises on model output. Splits are
disjoint seeds of the same generator: split s with seed k draws from generator seed SPLIT_SEEDS[s] + k,
so k must stay below SEEDS_PER_SPLIT (another would draw another split's data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from reasonrl.envs.base import Environment, Prompt
from reasonrl.vision.world import FAMILIES, Problem, ShapesDataConfig, iter_problems, read_answer, score_answer

INSTRUCTION = "Put the answer in \\boxed{}."
SPLIT_SEEDS = {"train": 0, "eval": 1_000_003, "test": 2_000_003}
SEEDS_PER_SPLIT = 1_000_000  # the smallest gap between two splits' first seeds (eval to test)


@dataclass
class ShapesVQAConfig:
    families: tuple[str, ...] = field(default_factory=lambda: tuple(FAMILIES))
    """Question families, asked in turn: count colour shape position extreme exists detail text."""
    image_size: int = 112
    """Width and height of the images (multiples of 28 give whole merged Qwen2.5-VL tokens)."""
    min_objects: int = 1
    """Fewest objects in a scene."""
    max_objects: int = 8
    """Most objects in a scene."""
    size: int = 512
    """Prompts `prompts()` returns when no n is asked for."""


class ShapesVQAEnvironment(Environment):
    name = "shapes"

    def __init__(self, cfg: ShapesVQAConfig = ShapesVQAConfig()):
        self.cfg = cfg
        self._data(1, 0)  # checks the options now, naming the bad one

    def prompts(self, n=None, seed=0, split="train") -> list[Prompt]:
        return [vqa_prompt(p, split) for p in self.problems(n or self.cfg.size, seed, split)]

    def problems(self, n: int, seed: int = 0, split: str = "train") -> list[Problem]:
        """The world's problems behind `prompts` (scenes, renders, rows), e.g. to write SFT traces."""
        if split not in SPLIT_SEEDS:
            raise ValueError(f"shapes: unknown split {split!r}; known: {', '.join(SPLIT_SEEDS)}")
        check_split_seed(seed)
        return list(iter_problems(self._data(n, SPLIT_SEEDS[split] + seed, "train" if split == "train" else "held_out")))

    def _data(self, n: int, seed: int, text_side: str = "any") -> ShapesDataConfig:
        c = self.cfg
        return ShapesDataConfig(task="vqa", n=n, seed=seed, image_size=c.image_size, min_objects=c.min_objects,
                                max_objects=c.max_objects, families=c.families, text_side=text_side)

    def score(self, prompt: Prompt, response: str) -> float:
        return score_answer(response, prompt.answer, prompt.metadata["answer_type"])

    def extract(self, prompt: Prompt, response: str) -> str | None:
        try:
            return read_answer(response, prompt.metadata["answer_type"])  # the answer `score` compares
        except Exception:  # untrusted input: no answer, never an error
            return None

    def metrics(self, prompts: Sequence[Prompt], responses: Sequence[str], rewards: Sequence[float]) -> dict[str, float]:
        out = super().metrics(prompts, responses, rewards)
        for family in sorted({p.metadata["family"] for p in prompts}):
            mine = [r for p, r in zip(prompts, rewards) if p.metadata["family"] == family]
            out[f"accuracy/{family}"] = sum(r > 0 for r in mine) / len(mine)
        return out


def check_split_seed(seed: int) -> None:
    """ValueError unless 0 <= seed < SEEDS_PER_SPLIT: the splits' streams stay disjoint."""
    if not 0 <= seed < SEEDS_PER_SPLIT:
        raise ValueError(f"the seed (--seed) must be >= 0 and < {SEEDS_PER_SPLIT:,}, the gap between the splits' "
                         f"seeds (another would draw another split's data), got {seed!r}")


def vqa_prompt(problem: Problem, split: str = "train") -> Prompt:
    """One problem as a prompt: the image and the question, asking for a boxed answer."""
    row = problem.row
    content = [{"type": "image", "image": problem.rendering.image},
               {"type": "text", "text": f"{row['question']} {INSTRUCTION}"}]
    return Prompt(id=f"{split}-{row['id']}", messages=[{"role": "user", "content": content}], answer=row["answer"],
                  metadata={"family": row["family"], "answer_type": row["answer_type"],
                            "needs_image": row["needs_image"], "objects": len(row["objects"])})


def from_spec(argument: str) -> ShapesVQAEnvironment:
    """`shapes:?families=count,colour&image_size=112`: options are ShapesVQAConfig's fields."""
    from urllib.parse import parse_qsl

    import yaml

    from reasonrl.config import build

    values = {}
    for key, value in parse_qsl(argument.lstrip("?"), keep_blank_values=True):
        values[key] = value.split(",") if key == "families" else yaml.safe_load(value)
    return ShapesVQAEnvironment(build(ShapesVQAConfig, values, "shapes"))
