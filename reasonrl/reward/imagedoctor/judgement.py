"""ImageDoctor's look-think-predict text: rendering it (for SFT targets) and parsing it (untrusted).

The layout follows ImageDoctor's inference prompt (arXiv 2510.01010, `inference.py`):

    <think>I need to focus on the bounding box area. Proposed regions (xyxy): 1.[x1,y1,x2,y2];2.[...]
    ...reasoning...</think>
    <answer>Semantic Alignment score: 0.75;
    Misalignment Locations: <|misalignment|>;
    Aesthetic score: 0.6;
    Plausibility score: 0.9;
    Artifact Locations: <|artifact|>;
    Overall Impression score: 0.7;</answer>

`parse_judgement` never raises and never hangs (the text is cut to `MAX_CHARS`, the patterns are
linear): a score that is missing, outside [0, 1], not a plain decimal, or given twice with
different values is None, and a reward computed from it is 0. The task-token names are ours
(ImageDoctor's checkpoint names them only by id in config.json).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

ASPECTS = {"alignment": "Semantic Alignment", "aesthetics": "Aesthetic", "plausibility": "Plausibility",
           "overall": "Overall Impression"}
TASK_TOKENS = ("<|misalignment|>", "<|artifact|>")
MAX_CHARS = 20_000  # a longer text is judged on its beginning
MAX_BOXES = 32

_NUMBER = r"(-?[0-9]{1,6}(?:\.[0-9]{1,8})?)"
_SCORE = re.compile(r"(" + "|".join(ASPECTS.values()) + r") score:[ \t]*([0-9]{1,3}(?:\.[0-9]{1,8})?)(?![0-9.eE])")
_BOX = re.compile(r"\[\s*" + r"\s*,\s*".join([_NUMBER] * 4) + r"\s*\]")


@dataclass
class Judgement:
    scores: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(ASPECTS))
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # xyxy, from the think block
    locations: dict[str, bool] = field(default_factory=lambda: {"misalignment": False, "artifact": False})
    well_formed: bool = False  # think then answer, four scores, both location fields with their task token


def render_judgement(scores: dict[str, float], boxes: list[tuple[int, int, int, int]], reasoning: str,
                     task_tokens: tuple[str, str] = TASK_TOKENS) -> str:
    """The text a judge should write: boxes and reasoning in <think>, scores and task tokens in <answer>."""
    regions = ";".join(f"{i}.[{x1},{y1},{x2},{y2}]" for i, (x1, y1, x2, y2) in enumerate(boxes, 1))
    s = _two_places(scores)
    return (f"<think>I need to focus on the bounding box area. Proposed regions (xyxy): {regions}\n{reasoning}</think>\n"
            f"<answer>Semantic Alignment score: {s['alignment']};\nMisalignment Locations: {task_tokens[0]};\n"
            f"Aesthetic score: {s['aesthetics']};\nPlausibility score: {s['plausibility']};\n"
            f"Artifact Locations: {task_tokens[1]};\nOverall Impression score: {s['overall']};</answer>")


def render_scores(scores: dict[str, float]) -> str:
    """The cold start's target (ImageDoctor's first SFT stage, "noreason"): the four scores alone, no
    thinking and no locations. It parses to its scores; it is not `well_formed`."""
    s = _two_places(scores)
    return (f"<answer>Semantic Alignment score: {s['alignment']};\nAesthetic score: {s['aesthetics']};\n"
            f"Plausibility score: {s['plausibility']};\nOverall Impression score: {s['overall']};</answer>")


def _two_places(scores: dict[str, float]) -> dict[str, str]:
    return {k: f"{scores[k]:.2f}" for k in ASPECTS}


def parse_judgement(text, task_tokens: tuple[str, str] = TASK_TOKENS) -> Judgement:
    """A `Judgement` of any value: whatever cannot be read is None, False or empty."""
    out = Judgement()
    if not isinstance(text, str):
        return out
    text = text[:MAX_CHARS]
    think = _span(text, "think", 0)
    if think is not None:
        out.boxes = _boxes(text[think[0]:think[1]])
    span = answer_span(text)
    if span is None:
        return out
    answer = text[span[0]:span[1]]
    out.scores = _scores(answer)
    for task, token in zip(("misalignment", "artifact"), task_tokens):
        line = re.search(f"{task.capitalize()} Locations:([^\n]*)", answer)
        out.locations[task] = line is not None and token in line.group(1)
    out.well_formed = think is not None and all(v is not None for v in out.scores.values()) and all(out.locations.values())
    return out


def answer_span(text: str) -> tuple[int, int] | None:
    """Where the content of the first <answer> block after the thinking (if any) lies in `text`."""
    think = _span(text, "think", 0)
    return _span(text, "answer", think[1] + len("</think>") if think else 0)


def _span(text: str, tag: str, start: int) -> tuple[int, int] | None:
    """Where the content of the first <tag>...</tag> at or after `start` lies, or None."""
    lo = text.find(f"<{tag}>", start)
    hi = text.find(f"</{tag}>", lo) if lo >= 0 else -1
    return None if hi < 0 else (lo + len(tag) + 2, hi)


def _scores(answer: str) -> dict[str, float | None]:
    names = {v: k for k, v in ASPECTS.items()}
    seen: dict[str, set[float]] = {k: set() for k in ASPECTS}
    for m in _SCORE.finditer(answer):
        seen[names[m.group(1)]].add(float(m.group(2)))
    return {k: next(iter(v)) if len(v) == 1 and 0.0 <= next(iter(v)) <= 1.0 else None for k, v in seen.items()}


def _boxes(think: str) -> list[tuple[float, float, float, float]]:
    out = []
    for m in _BOX.finditer(think):
        x1, y1, x2, y2 = (float(g) for g in m.groups())
        if all(math.isfinite(v) for v in (x1, y1, x2, y2)) and x2 > x1 and y2 > y1:
            out.append((x1, y1, x2, y2))
        if len(out) == MAX_BOXES:
            break
    return out


def score_reward(judgement: Judgement, truth: dict[str, float]) -> float:
    """ImageDoctor's score reward, averaged over the aspects: 1 - 3 |predicted - true| each, floored
    at 0 (ours: an omitted score, worth 0, never beats a wrong one); a missing score gives 0."""
    per = [max(0.0, 1.0 - 3.0 * abs(judgement.scores[k] - truth[k])) if judgement.scores.get(k) is not None else 0.0
           for k in ASPECTS]
    return sum(per) / len(per)


def format_reward(judgement: Judgement) -> float:
    return 1.0 if judgement.well_formed else 0.0
