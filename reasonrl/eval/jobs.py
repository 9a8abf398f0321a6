"""What the harness asks a model for (`Job`) and what comes back (`Completion` or `Failure`).

A job is one sample of one problem. Its seed is a pure function of the run's seed, the problem
id and the sample index, so a sample does not depend on which other problems are in the run,
on `limit`, on batching, or on whether the run was interrupted and resumed.
"""

from __future__ import annotations

from dataclasses import dataclass

from reasonrl.engine.sampling_params import stable_seed
from reasonrl.envs.base import Prompt


@dataclass(frozen=True)
class Job:
    prompt: Prompt
    sample: int  # index among the problem's n samples
    seed: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.prompt.id, self.sample)


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int | None  # response tokens; None when the endpoint does not report usage
    finish_reason: str | None
    prompt_tokens: int | None = None  # as the endpoint reports them (usage); None when it does not


@dataclass(frozen=True)
class Failure:
    """A job that got no response (after retries); it is not recorded, so a rerun asks again."""

    error: str
    rejected: bool = False  # the server refused this request for its content (400, 413, 422): asking again is futile


def problem_seed(seed: int, problem_id: str) -> int:
    """Base seed of a problem; sample j uses `problem_seed + j` (the engine's rule for n > 1)."""
    return stable_seed(seed, problem_id)


def jobs_for(prompt: Prompt, samples: range | list[int], seed: int) -> list[Job]:
    base = problem_seed(seed, prompt.id)
    return [Job(prompt, j, base + j) for j in samples]


def render_text(messages: list[dict]) -> str:
    """Chat messages as one plain-text prompt (completions endpoints, models without a template)."""
    if any(not isinstance(m["content"], str) for m in messages):
        raise ValueError("messages with images need a chat endpoint or template (not --no-chat)")
    return "\n\n".join(m["content"] for m in messages)


def openai_messages(messages: list[dict]) -> list[dict]:
    """Messages as the OpenAI chat API takes them: image parts (arrays, PIL images, paths) become
    `image_url` parts holding PNG `data:` URLs; text passes as it is."""
    return [{**m, "content": [_openai_part(p) for p in m["content"]]} if isinstance(m.get("content"), list) else m
            for m in messages]


def _openai_part(part: dict) -> dict:
    if part.get("type") != "image":
        return part
    import base64
    import io

    from PIL import Image

    image = part["image"]
    if isinstance(image, str):
        image = Image.open(image)
    elif not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}}
