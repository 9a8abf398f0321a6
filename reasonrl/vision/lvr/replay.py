"""LVR's GRPO side: score a rollout with its recorded latents replayed (arXiv 2509.24251).

A rollout from the engine's latent mode (engine/latent.py) reports its tokens, their log-probs and
its latents (`CompletionOutput.latents`; a rollout `Sample` keeps them as `Sample.latents`). For
the current and old policies to see the context the behaviour policy saw, the trainer's forward
feeds the same latents at the same positions (LVR's `score_with_lvr_replay`): `TrainBatch.forward`
does it for every GRPO micro-batch (rl/batch.py), and its mask (`policy_mask`) leaves the latent
placeholders and the `<|lvr_end|>` closing each span out of the policy loss (forced, never
sampled; LVR masks the span), the sampled `<|lvr_start|>` in (choosing to look is the policy's
decision). `replay_logprobs` is that same path for a list of engine outputs.
"""

from __future__ import annotations

import torch

from reasonrl.engine.latent import Latents
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt
from reasonrl.rl.batch import collate, response_logprobs
from reasonrl.rollout.sample import Sample


def replay_logprobs(model, prompts: list[MultimodalPrompt], responses: list[list[int]],
                    latents: list[Latents | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (log-probs (B, R), policy-loss mask (B, R) bool) of the responses (right-padded to R;
    padding masked), computed by the trainer's forward with the latents replayed."""
    samples = [Sample(prompt_ids=list(p.input_ids), response_ids=list(r), multimodal=p, latents=lat)
               for p, r, lat in zip(prompts, responses, latents, strict=True)]
    batch = collate(samples, [0.0] * len(samples), 0, model.device)
    return response_logprobs(model, batch), batch.mask
