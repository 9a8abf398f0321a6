"""Prompt groups, and the buffer where APRIL keeps groups whose rollout was cut short.

A buffered group keeps every sample as it stood at the abort: finished siblings with their
rewards-to-be, unfinished ones with their partial tokens, behaviour log-probs, per-token policy
versions and seeds. The buffer is part of the training checkpoint (slime's is not, so a restart
loses it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

from reasonrl.envs.base import Prompt
from reasonrl.rollout.sample import Sample


@dataclass
class Group:
    group_id: int
    prompt: Prompt
    prompt_ids: list[int]
    samples: list[Sample]
    born_step: int  # the rollout step that first launched it
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return all(s.status.finished for s in self.samples)

    def unfinished(self) -> list[Sample]:
        return [s for s in self.samples if not s.status.finished]

    def to_dict(self) -> dict[str, Any]:
        """The group for the (pickled) checkpoint. The prompt's fields are kept as they are: its answer
        or metadata may be an environment's own objects (`asdict` turned nested dataclasses into
        dicts, and their rewards into 0 after a resume)."""
        prompt = {f.name: getattr(self.prompt, f.name) for f in fields(self.prompt)}
        return {"group_id": self.group_id, "prompt": prompt, "prompt_ids": self.prompt_ids,
                "samples": [s.to_dict() for s in self.samples],
                "born_step": self.born_step, "metadata": self.metadata}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Group:
        prompt = Prompt(**d["prompt"])
        return cls(d["group_id"], prompt, d["prompt_ids"], [Sample.from_dict(s, prompt) for s in d["samples"]],
                   d["born_step"], d.get("metadata", {}))


class PartialBuffer:
    """FIFO of partially rolled-out groups; the next rollout serves them before fresh prompts."""

    def __init__(self):
        self.groups: deque[Group] = deque()

    def __len__(self) -> int:
        return len(self.groups)

    def put(self, group: Group) -> None:
        self.groups.append(group)

    def take(self, n: int) -> list[Group]:
        return [self.groups.popleft() for _ in range(min(n, len(self.groups)))]

    def stats(self, step: int) -> dict[str, float]:
        ages = [step - g.born_step for g in self.groups]
        return {"buffer_groups": len(self.groups),
                "buffer_samples": sum(len(g.unfinished()) for g in self.groups),
                "buffer_age_max": max(ages, default=0), "buffer_age_mean": sum(ages) / len(ages) if ages else 0.0}

    def state_dict(self) -> list[dict[str, Any]]:
        return [g.to_dict() for g in self.groups]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        self.groups = deque(Group.from_dict(d) for d in state)
