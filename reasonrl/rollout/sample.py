"""`Sample`: one response to one prompt, the unit that flows from rollout to the loss."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any


class Status(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    ABORTED = "aborted"  # stopped early; may be resumed from its tokens
    COMPLETED = "completed"  # stopped on EOS / a stop sequence
    TRUNCATED = "truncated"  # hit max_tokens or the context length

    @property
    def finished(self) -> bool:
        return self in (Status.COMPLETED, Status.TRUNCATED)


@dataclass
class Sample:
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # behaviour log-prob of each response token
    versions: list[int] = field(default_factory=list)  # policy version that sampled each response token
    status: Status = Status.PENDING
    response_text: str = ""
    reward: float | None = None  # what the advantages use: the environment's, plus any length shaping
    env_reward: float | None = None  # the environment's alone (accuracy metrics read it)
    group_id: int = 0  # samples of one prompt share a group (GRPO normalises within it)
    index: int = 0  # position inside its group
    seed: int | None = None  # sampling seed: a resumed sample continues its own random stream
    prompt: Any = None  # the environment's `Prompt` (holds what the reward needs)
    metadata: dict[str, Any] = field(default_factory=dict)
    multimodal: Any = None  # a VLM prompt's images and positions (MultimodalPrompt): rebuilt from `prompt`, not saved
    latents: Any = None  # LVR latent mode: the response's `Latents` (engine/latent.py), replayed by the trainer

    @property
    def num_response_tokens(self) -> int:
        return len(self.response_ids)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a checkpoint; the prompt and its images are the group's to save."""
        d = asdict(replace(self, prompt=None, multimodal=None))
        del d["prompt"], d["multimodal"]
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], prompt: Any = None) -> Sample:
        latents = d.get("latents")
        if isinstance(latents, dict):  # saved as plain values by `to_dict`
            from reasonrl.engine.latent import Latents

            latents = Latents(list(latents["positions"]), latents["vectors"])
        return cls(**{**d, "status": Status(d["status"]), "prompt": prompt, "latents": latents})
