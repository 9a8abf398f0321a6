"""LVR's GRPO side: score a rollout with its recorded latents replayed (arXiv 2509.24251).

A rollout from the engine's latent mode (engine/latent.py) reports its tokens, their log-probs and
its latents (`CompletionOutput.latents`). For the current and old policies to see the context the
behaviour policy saw, the trainer's forward must feed the same latents at the same positions; LVR
calls this `score_with_lvr_replay`. `replay_logprobs` does it for a batch and returns each response
token's log-prob with the mask of the tokens the policy loss may use: the latent placeholders and
the `<|lvr_end|>` closing each span are left out (forced, never sampled; LVR masks the span), the
sampled `<|lvr_start|>` stays in (choosing to look is a decision the policy makes).
"""

from __future__ import annotations

import torch

from reasonrl.engine.latent import LatentConfig, Latents
from reasonrl.models.model import CausalAttention
from reasonrl.models.qwen2_5_vl.prompt import MultimodalPrompt


def replay_logprobs(model, prompts: list[MultimodalPrompt], responses: list[list[int]], latents: list[Latents | None],
                    latent: LatentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (log-probs (B, R), mask (B, R) bool) of the responses (right-padded to R; padding masked)."""
    b = len(prompts)
    t = max(len(p.input_ids) + len(r) for p, r in zip(prompts, responses, strict=True))
    r_max = max(len(r) for r in responses)
    ids = torch.zeros(b, t, dtype=torch.long, device=model.device)
    rows, embeds, with_images = [], [], [p for p in prompts if p.num_images]
    if with_images:
        embeds.append(model.encode_images(torch.cat([p.pixel_values for p in with_images]),
                                          torch.cat([p.image_grid_thw for p in with_images])))
    for i, (p, r, lat) in enumerate(zip(prompts, responses, latents, strict=True)):
        ids[i, :len(p.input_ids) + len(r)] = torch.tensor(p.input_ids + list(r))
        if p.num_images:
            rows.append(i * t + p.image_rows.to(model.device))
    for i, (p, lat) in enumerate(zip(prompts, latents)):
        if lat is not None and lat.positions:
            rows.append(i * t + len(p.input_ids) + torch.tensor(lat.positions, device=model.device))
            embeds.append(lat.vectors.to(model.device, model.dtype))
    positions = torch.stack([p.positions_for(0, t) for p in prompts], dim=1).to(model.device)  # (3, B, T)
    hidden = model(ids.reshape(-1), positions.reshape(3, -1), CausalAttention(b, t),
                   torch.cat(embeds) if embeds else None, torch.cat(rows) if rows else None).view(b, t, -1)
    logp = torch.zeros(b, r_max, device=model.device)
    mask = torch.zeros(b, r_max, dtype=torch.bool, device=model.device)
    for i, (p, r, lat) in enumerate(zip(prompts, responses, latents)):
        n, first = len(r), len(p.input_ids)
        logits = model.compute_logits(hidden[i, first - 1: first - 1 + n]).float().log_softmax(-1)
        logp[i, :n] = logits.gather(1, torch.tensor(r, device=model.device)[:, None])[:, 0]
        mask[i, :n] = torch.tensor(policy_mask(r, lat, latent), device=model.device)
    return logp, mask


def policy_mask(response: list[int], latents: Latents | None, latent: LatentConfig) -> list[bool]:
    """True for the tokens the policy loss uses: all but latent placeholders and the ends closing their spans."""
    skip = set(latents.positions) if latents is not None else set()
    ends = {p + 1 for p in skip if p + 1 < len(response) and response[p + 1] == latent.end_id}
    return [j not in skip and j not in ends for j in range(len(response))]
