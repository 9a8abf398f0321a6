"""`letter`: a smoke-test task any freshly initialised model can learn within a few RL steps.

The prompt asks for a response made of one letter; the reward is the share of the response's
characters that are that letter. It is dense (every sample scores somewhere in [0, 1]), so GRPO
has a signal from the first step. It checks the training loop, not reasoning.
"""

from __future__ import annotations

import random

from reasonrl.envs.base import Environment, Prompt


class LetterEnvironment(Environment):
    name = "letter"

    def __init__(self, letters: str = "ab"):
        self.letters = letters

    def prompts(self, n=None, seed=0, split="train"):
        rng = random.Random(f"{split}:{seed}")
        count = n or 256
        out = []
        for i in range(count):
            letter = rng.choice(self.letters)
            text = f"Write the letter {letter} many times."
            out.append(Prompt(id=f"{split}-{i}", messages=[{"role": "user", "content": text}], answer=letter))
        return out

    def score(self, prompt, response):
        text = response.strip()
        return text.count(prompt.answer) / len(text) if text else 0.0

    def metrics(self, prompts, responses, rewards):
        n = max(len(rewards), 1)
        return {"accuracy": sum(r >= 0.5 for r in rewards) / n, "reward_mean": sum(rewards) / n}
