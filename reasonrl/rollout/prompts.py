"""`PromptSource`: an endless, reproducible stream of training prompts with a resumable cursor."""

from __future__ import annotations

import random

from reasonrl.envs.base import Environment, Prompt


class PromptSource:
    """Cycles through the environment's training prompts, reshuffled each epoch from `seed`."""

    def __init__(self, env: Environment, seed: int = 0, pool_size: int | None = None):
        self.pool = env.prompts(n=pool_size, seed=seed, split="train")
        if not self.pool:
            raise ValueError(f"environment {env.name!r} has no training prompts")
        self.seed = seed
        self.epoch, self.index = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(len(self.pool)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def __iter__(self):
        return self

    def __next__(self) -> Prompt:
        if self.index == len(self.pool):
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._shuffle()
        prompt = self.pool[self._order[self.index]]
        self.index += 1
        return prompt

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._shuffle()
