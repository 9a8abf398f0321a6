"""`JudgeEnvironment`: ImageDoctor's GRPO stage as an environment of the ordinary trainer.

The policy is the judge's backbone; a rollout is a judgement of one held image. The reward is
ImageDoctor's R = R_S + R_H + R_G (arXiv 2510.01010) plus its format reward, averaged to [0, 1]:

- R_S, the score reward (`judgement.score_reward`: 1 - 3|error| per aspect, averaged);
- R_H, the heatmap reward of each map (1 - clip(c x MSE)), averaged over the two; the maps come
  from the judge's head run on the current policy's hidden states of the rollout's text, as
  ImageDoctor's trainer re-runs its head on the hidden states of the first task tokens; a map
  whose task token the text lacks scores 0 (its all-zero map would otherwise beat a real map on
  every flawless image: the first GRPO run learned to drop the tokens, see docs/benchmarks.md);
- R_G, the grounding rewards (completeness, compactness, uniqueness) of the think block's boxes
  against the union of the two true maps (a box may mark either kind of flaw), averaged, and 0
  unless the judgement is well-formed (else any garbage, giving no box, scored 1 on a flawless image);
- R_F, 1 for a well-formed judgement (`judgement.format_reward`).

Departures: the four terms are averaged rather than summed (the advantage normalises the scale
away); the heatmap head itself is not updated by GRPO (only the policy's tokens are, as in
ImageDoctor's GRPO, where the maps enter only through the reward); the text is re-tokenised from
the rollout's decoded text (the task tokens survive decoding: they are non-special added tokens).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from reasonrl.envs.base import Environment, Prompt
from reasonrl.reward.imagedoctor.build import JudgeItem
from reasonrl.reward.imagedoctor.export import judge_messages
from reasonrl.reward.imagedoctor.judgement import format_reward, parse_judgement, score_reward
from reasonrl.reward.imagedoctor.model import TASKS, ImageDoctor, at_size
from reasonrl.reward.imagedoctor.rewards import compactness, completeness, heatmap_reward, uniqueness


class JudgeEnvironment(Environment):
    name = "imagedoctor"

    def __init__(self, doctor: ImageDoctor, tokenizer, train: list[JudgeItem], held_out: list[JudgeItem]):
        self.doctor, self.tokenizer = doctor, tokenizer
        self.items = {"train": train, "eval": held_out}

    def prompts(self, n=None, seed=0, split="train") -> list[Prompt]:
        items = self.items["eval" if split != "train" else "train"]
        rng = np.random.default_rng(seed)
        chosen = rng.permutation(len(items))[: n or len(items)] if split == "train" else range(min(n or len(items), len(items)))
        return [Prompt(id=f"{split}-{i}", messages=judge_messages(items[i].caption, items[i].image), answer=items[i])
                for i in chosen]

    def score(self, prompt: Prompt, response: str) -> float:
        parts = self.parts(prompt.answer, response)
        return sum(parts.values()) / len(parts)

    def parts(self, item: JudgeItem, response: str) -> dict[str, float]:
        judgement = parse_judgement(response)
        maps, found = self.maps(item, response)
        heat = float(np.mean([heatmap_reward(maps[k], item.maps[k].numpy(), t) if found[k] else 0.0
                              for k, t in enumerate(TASKS)]))
        truth = item.maps.max(0).values.numpy()
        ground = 0.0  # "no box" earns 1 on a flawless image only as part of a judgement, never as garbage
        if judgement.well_formed:
            ground = float(np.mean([f(judgement.boxes, truth) for f in (completeness, compactness, uniqueness)]))
        return {"score": score_reward(judgement, item.scores), "heatmap": heat, "grounding": ground,
                "format": format_reward(judgement)}

    @torch.no_grad()
    def maps(self, item: JudgeItem, response: str) -> tuple[np.ndarray, list[bool]]:
        """The (2, H, W) maps of the rollout's text, and whether each task token was in it."""
        ids = list(item.prompt.input_ids) + self.tokenizer.encode(response, add_special_tokens=False)
        _, maps = self.doctor(torch.tensor([ids]), [item.prompt])
        return at_size(maps.maps[0].float(), item.maps.shape[-2:]).numpy(), maps.found[0].tolist()

    def metrics(self, prompts: Sequence[Prompt], responses: Sequence[str], rewards: Sequence[float]) -> dict[str, float]:
        out = super().metrics(prompts, responses, rewards)
        out["well_formed"] = float(np.mean([parse_judgement(r).well_formed for r in responses]))
        return out
