"""Samples to padded training tensors, micro-batches under a token budget, and per-token
log-probs of the response tokens under a model."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reasonrl.models.model import DecoderLM
from reasonrl.rollout.sample import Sample


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # (B, L) prompt + response, right-padded
    prompt_lens: torch.Tensor  # (B,)
    response_ids: torch.Tensor  # (B, T) right-padded
    mask: torch.Tensor  # (B, T) bool: real response tokens
    behaviour_logp: torch.Tensor  # (B, T) the engine's log-probs when it sampled
    versions: torch.Tensor  # (B, T) policy version that sampled each token
    advantages: torch.Tensor  # (B,), or (B, T) per token (process rewards)
    old_logp: torch.Tensor | None = None  # (B, T) log-probs before this update, when recomputed (PPO epochs)
    multimodal: list | None = None  # per row, a VLM prompt's images and positions (MultimodalPrompt) or None
    latents: list | None = None  # per row, LVR's recorded `Latents` (engine/latent.py) or None

    def forward(self, model: DecoderLM) -> torch.Tensor:
        """(B, L, H) hidden states of the rows, images and all; recorded latents are replayed as the
        input embeddings of their positions, so the policy sees the context the engine saw."""
        if self.latents:
            rows = [None if lat is None else (n + torch.tensor(lat.positions, dtype=torch.long), lat.vectors)
                    for lat, n in zip(self.latents, self.prompt_lens.tolist())]
            return model.forward_padded(self.input_ids, self.multimodal, row_embeds=rows)
        return model.forward_padded(self.input_ids, self.multimodal) if self.multimodal else \
            model.forward_padded(self.input_ids)

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())


def collate(samples: list[Sample], advantages: list[float] | list[list[float]], pad_id: int, device,
            old_logp: list[torch.Tensor] | None = None) -> TrainBatch:
    width = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    resp = max(max(len(s.response_ids) for s in samples), 1)

    def pad(rows, n, value, dtype):
        return torch.tensor([list(r) + [value] * (n - len(r)) for r in rows], dtype=dtype, device=device)

    return TrainBatch(
        input_ids=pad([s.prompt_ids + s.response_ids for s in samples], width, pad_id, torch.long),
        prompt_lens=torch.tensor([len(s.prompt_ids) for s in samples], device=device),
        response_ids=pad([s.response_ids for s in samples], resp, pad_id, torch.long),
        mask=pad([policy_mask(len(s.response_ids), s.latents) for s in samples], resp, False, torch.bool),
        behaviour_logp=pad([s.logprobs for s in samples], resp, 0.0, torch.float32),
        versions=pad([s.versions for s in samples], resp, -1, torch.long),
        advantages=_advantages(advantages, resp, device),
        old_logp=None if old_logp is None else pad([t.tolist() for t in old_logp], resp, 0.0, torch.float32),
        multimodal=[s.multimodal for s in samples] if any(s.multimodal is not None for s in samples) else None,
        latents=[s.latents for s in samples] if any(s.latents is not None and s.latents.positions for s in samples)
        else None,
    )


def policy_mask(n: int, latents=None) -> list[bool]:
    """Which of a response's n tokens the policy loss uses. LVR (arXiv 2509.24251) masks its latent
    spans: the latent placeholders and the `<|lvr_end|>` closing each span (the token right after a
    span's last latent: forced, or in "end_token" mode chosen from a latent's state) are left out;
    the sampled `<|lvr_start|>` stays in (choosing to look is the policy's decision)."""
    skip = set(latents.positions) if latents is not None else set()
    ends = {p + 1 for p in skip if p + 1 not in skip}
    return [j not in skip and j not in ends for j in range(n)]


def _advantages(advantages: list, width: int, device) -> torch.Tensor:
    """(B,) from one float per sample, (B, T) from per-token lists (padding gets 0)."""
    if advantages and isinstance(advantages[0], (list, tuple)):
        rows = [list(a)[:width] + [0.0] * (width - len(a)) for a in advantages]
        return torch.tensor(rows, dtype=torch.float32, device=device)
    return torch.tensor(advantages, dtype=torch.float32, device=device)


def micro_batches(samples: list[Sample], max_tokens: int) -> list[list[int]]:
    """Indices of samples grouped so that (rows x longest row) stays within max_tokens; a single
    sample longer than the budget gets a micro-batch of its own."""
    return token_batches([len(s.prompt_ids) + len(s.response_ids) for s in samples], max_tokens)


def token_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """`micro_batches` for any rows given by their lengths: longest first, (rows x longest) <= max_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    width = 0
    for i in order:
        n = lengths[i]
        if batches and (len(batches[-1]) + 1) * max(width, n) <= max_tokens:
            batches[-1].append(i)
            width = max(width, n)
        else:
            batches.append([i])
            width = n
    return batches


def response_logprobs(model: DecoderLM, batch: TrainBatch, temperature: float = 1.0, chunk: int = 1024,
                      entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(B, T) log pi(response token | prefix) at `temperature`, as the engine reports them; with
    `entropy`, also the (B, T) entropy of each position's distribution (detached)."""
    hidden = batch.forward(model)  # (B, L, H)
    b, t = batch.response_ids.shape
    # the hidden state at position p predicts token p + 1: response token j comes from prompt_len - 1 + j
    idx = (batch.prompt_lens[:, None] - 1 + torch.arange(t, device=hidden.device)[None, :]).clamp(max=hidden.shape[1] - 1)
    out, ent = [], []
    for lo in range(0, t, chunk):  # logits (B, chunk, V) at a time: the vocabulary is the big dimension
        h = hidden.gather(1, idx[:, lo:lo + chunk, None].expand(-1, -1, hidden.shape[-1]))
        logp = (model.compute_logits(h).float() / temperature).log_softmax(-1)
        out.append(logp.gather(-1, batch.response_ids[:, lo:lo + chunk, None])[..., 0])
        if entropy:
            with torch.no_grad():
                ent.append(-(logp.exp() * logp).sum(-1))
    logp = torch.cat(out, dim=1)
    return (logp, torch.cat(ent, dim=1)) if entropy else logp
