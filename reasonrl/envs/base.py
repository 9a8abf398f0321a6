"""The environment contract shared by training and evaluation.

An environment hands out `Prompt`s (chat messages plus whatever its reward needs) and scores a
response text. Model output is untrusted: `reward` returns 0.0 for anything malformed and never
raises; `safe_reward` enforces that for environments written by users.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

log = logging.getLogger(__name__)


@dataclass
class Prompt:
    id: str
    messages: list[dict[str, str]]  # chat messages, rendered by the policy's chat template
    answer: Any = None  # what `reward` compares against (solution set, reference answer, ...)
    metadata: dict[str, Any] = field(default_factory=dict)  # subset name, difficulty, ...


class Environment:
    """Base class. Subclasses set `name` and implement `prompts` and `score`."""

    name: str = "env"
    special_tokens_in_responses: bool = False
    """True: `score` gets responses decoded with their special tokens (e.g. LVR's latent span)."""
    held_out: bool = True
    """Whether `prompts(split="eval")` holds prompts that training does not see; False for an
    environment built from one file, whose every split is that file."""
    step_delimiter: str = "\n\n"
    """What separates a solution's steps (`reasonrl prm label`'s default step format): a blank line."""

    def prompts(self, n: int | None = None, seed: int = 0, split: str = "train") -> list[Prompt]:
        raise NotImplementedError

    def score(self, prompt: Prompt, response: str) -> float:
        """Reward of `response` for `prompt`, in [0, 1] unless the environment says otherwise."""
        raise NotImplementedError

    def reward(self, prompt: Prompt, response: str) -> float:
        return safe_reward(self.score, prompt, response)

    def rewards(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """`reward` over a batch; environments with a worker pool override it to use every worker."""
        return [self.reward(p, r) for p, r in zip(prompts, responses)]

    def extract(self, prompt: Prompt, response: str) -> str | None:
        """The answer `response` commits to, as `score` reads it; None when it has none.

        Optional: evaluation reports how often answers fail to parse. This default returns None
        meaning "unknown" (the harness checks whether a subclass overrides it). Never raises."""
        return None

    def metrics(self, prompts: Sequence[Prompt], responses: Sequence[str], rewards: Sequence[float]) -> dict[str, float]:
        n = max(len(rewards), 1)
        return {"accuracy": sum(r > 0 for r in rewards) / n, "reward_mean": sum(rewards) / n}


def safe_reward(score_fn, prompt: Prompt, response: Any) -> float:
    """Call `score_fn`; any exception, a non-string response or a non-finite score gives 0.0."""
    if not isinstance(response, str):
        return 0.0
    try:
        value = float(score_fn(prompt, response))
    except Exception as exc:  # model output is untrusted: a scoring bug must not stop training
        log.debug("reward failed for prompt %s: %r", getattr(prompt, "id", "?"), exc)
        return 0.0
    return value if value == value and abs(value) != float("inf") else 0.0
