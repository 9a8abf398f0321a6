"""`lvr`: the shapes world's detail questions with LVR's rewards (arXiv 2509.24251).

    lvr:                                   detail questions on 224-pixel scenes of 1-4 objects
    lvr:?max_objects=4&format_weight=0.5

The prompts are the `shapes` environment's (family `detail`: the stripe colour or the texture of a
small object, whose region the world knows exactly); the reward is LVR's GRPO reward, accuracy
(the world's answer checker) plus `format_weight` x format, the format being a latent span followed
by the boxed answer: `<|lvr_start|>` `<|lvr|>`... `<|lvr_end|>` `\\boxed{...}`, then nothing but
end-of-turn tokens. Responses reach it decoded with their special tokens
(`special_tokens_in_responses`), so the span can be seen. `accuracy` in the metrics counts right
answers only (a well-formed wrong answer earns the format reward and is not accurate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from reasonrl.config import positive_ints
from reasonrl.envs.base import Prompt
from reasonrl.envs.shapes import ShapesVQAConfig, ShapesVQAEnvironment
from reasonrl.vision.world import score_answer

FORMAT = re.compile(r"<\|lvr_start\|>(?:<\|lvr\|>)+<\|lvr_end\|>\s*\\boxed\{[^{}]*\}")
END_TOKEN = re.compile(r"<\|(?!lvr)[a-z_]+\|>")  # <|im_end|>, <|endoftext|> ... closing a turn
MAX_CHARS = 20_000  # longer than any well-formed response: format 0 without reading it


@dataclass
class LVRShapesConfig:
    image_size: int = 224
    """Width and height of the scenes (the embedded VLM's 224: 8 x 8 merged tokens of 28 pixels)."""
    min_objects: int = 1
    """Fewest objects in a scene."""
    max_objects: int = 4
    """Most objects in a scene."""
    size: int = 512
    """Prompts `prompts()` returns when no n is asked for."""
    format_weight: float = 1.0
    """Weight of the format reward next to accuracy (LVR adds the two)."""

    def __post_init__(self):
        # image_size and the object counts are checked by the world's configs when the environment is built
        positive_ints(self, ("size",), "lvr.")
        if not self.format_weight >= 0:  # (NaN too) a negative weight would reward a broken format
            raise ValueError(f"lvr.format_weight must be >= 0, got {self.format_weight!r}")


def format_reward(response: str) -> float:
    """1.0 for exactly a latent span, then a boxed answer, then only end-of-turn tokens; else 0.0."""
    if not isinstance(response, str) or len(response) > MAX_CHARS:
        return 0.0
    return 1.0 if FORMAT.fullmatch(_without_end_tokens(response).strip()) else 0.0


def _without_end_tokens(text: str) -> str:
    """`text` without the end-of-turn tokens (and white space) it ends with, in linear time (a regex
    anchored at the end backtracks quadratically over a run of spaces or tokens)."""
    end = len(text)
    while True:
        while end and text[end - 1].isspace():
            end -= 1
        start = text.rfind("<|", 0, end - 2) if end >= 4 and text.startswith("|>", end - 2) else -1
        if start < 0 or not END_TOKEN.fullmatch(text, start, end):
            return text[:end]
        end = start


class LVRShapesEnvironment(ShapesVQAEnvironment):
    name = "lvr"
    special_tokens_in_responses = True

    def __init__(self, cfg: LVRShapesConfig = LVRShapesConfig()):
        self.lvr = cfg
        super().__init__(ShapesVQAConfig(families=("detail",), image_size=cfg.image_size, min_objects=cfg.min_objects,
                                         max_objects=cfg.max_objects, size=cfg.size))

    def score(self, prompt: Prompt, response: str) -> float:
        return self.accuracy(prompt, response) + self.lvr.format_weight * format_reward(response)

    def accuracy(self, prompt: Prompt, response: str) -> float:
        return score_answer(response, prompt.answer, prompt.metadata["answer_type"])

    def metrics(self, prompts: Sequence[Prompt], responses: Sequence[str], rewards: Sequence[float]) -> dict[str, float]:
        n = max(len(responses), 1)
        right = [self.accuracy(p, r) > 0 for p, r in zip(prompts, responses)]
        return {"accuracy": sum(right) / n, "accuracy/detail": sum(right) / n, "reward_mean": sum(rewards) / n,
                "format": sum(format_reward(r) for r in responses) / n}


def from_spec(argument: str) -> LVRShapesEnvironment:
    """`lvr:?max_objects=4&format_weight=0.5`: options are LVRShapesConfig's fields."""
    from urllib.parse import parse_qsl

    import yaml

    from reasonrl.config import build

    values = {key: yaml.safe_load(value) for key, value in parse_qsl(argument.lstrip("?"), keep_blank_values=True)}
    return LVRShapesEnvironment(build(LVRShapesConfig, values, "lvr"))
