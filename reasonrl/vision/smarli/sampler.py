"""Next-set sampling (MaskGIT / Show-o): all image tokens start masked; each step predicts every
masked token, draws one per position, and keeps the most confident set; the rest stay masked.

    masked after step s of T: floor(N cos(pi/2 (s + 1) / T))   (0 after the last step)
    confidence: log p(drawn token) + choice_temperature (1 - (s + 1) / T) Gumbel noise

Layout GRPO needs the policy's log-probability of what it did, and a next-set step is no causal
pass: so each step's state (the token grid before it) and its action (the positions kept, with
their tokens) are recorded (`Rollout`), and `replay` scores them again under any policy (the
current one with gradient, the reference, the old one). The log-probability of a kept token is
log p(token | state of its step); the selection among positions is the sampler's rule, not a
learned choice, and carries no probability (the usual MaskGIT-RL simplification).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reasonrl.vision.gen.noise import Draws, categorical, uniform

from .layout import Batch
from .model import Smarli


@dataclass
class Rollout:
    tokens: torch.Tensor
    """(B, N) the finished image tokens."""
    states: list[torch.Tensor]
    """Per step, (B, N) the tokens before it ([MASK] where not yet decided)."""
    kept: list[torch.Tensor]
    """Per step, (B, N) bool: the positions decided at that step."""
    logp: torch.Tensor
    """(B, N) log-probability of each token at the step it was kept, under the sampling policy (the
    model's distribution at `temperature`, as the text RL path records it)."""
    temperature: float = 1.0
    """The sampling temperature, which `replay` scores at too."""


def masked_after(step: int, steps: int, n: int) -> int:
    return int(math.floor(n * math.cos(math.pi / 2 * (step + 1) / steps))) if step + 1 < steps else 0


@torch.no_grad()
def sample(model: Smarli, batch: Batch, steps: int = 8, temperature: float = 1.0, choice_temperature: float = 2.0,
           generator: Draws = None) -> Rollout:
    """`generator`: one for the batch, or one per row (gen/noise.py: then a row's draws do not depend on the batch)."""
    cfg = model.config
    b, n = batch.text_ids.shape[0], cfg.grid * cfg.grid
    tokens = torch.full((b, n), cfg.mask_id, dtype=torch.long)
    logp = torch.zeros(b, n)
    states, kept = [], []
    for s in range(steps):
        masked = tokens == cfg.mask_id
        logprobs = model(batch, tokens)  # (B, N, V)
        policy = tempered(logprobs, temperature)
        drawn = categorical(policy.exp(), generator)
        chosen = logprobs.gather(-1, drawn[..., None])[..., 0]  # the model's confidence orders the keeping
        gumbel = -torch.log(-torch.log(uniform((b, n), generator).clamp(1e-20, 1)))
        confidence = torch.where(masked, chosen + choice_temperature * (1 - (s + 1) / steps) * gumbel, float("inf"))
        keep_masked = masked_after(s, steps, n)
        # the keep_masked least confident masked positions stay masked; decided ones have confidence inf
        order = confidence.argsort(1)
        stay = torch.zeros_like(masked)
        stay.scatter_(1, order[:, :keep_masked], True)
        new = masked & ~stay
        states.append(tokens.clone())
        kept.append(new)
        tokens = torch.where(new, drawn, tokens)
        logp = torch.where(new, policy.gather(-1, drawn[..., None])[..., 0], logp)
    return Rollout(tokens, states, kept, logp, temperature)


def tempered(logprobs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities of the sampling policy: the model's at `temperature` (1: unchanged)."""
    return logprobs if temperature == 1 else (logprobs / max(temperature, 1e-6)).log_softmax(-1)


def replay(model: Smarli, batch: Batch, rollout: Rollout) -> torch.Tensor:
    """(B, N) log-probability of each kept token under `model` at the rollout's temperature, from the
    recorded states (with grad)."""
    out = torch.zeros(rollout.tokens.shape, dtype=torch.float32)
    for state, new in zip(rollout.states, rollout.kept):
        if not new.any():
            continue
        logprobs = tempered(model(batch, state), rollout.temperature)
        step_logp = logprobs.gather(-1, rollout.tokens[..., None])[..., 0]
        out = torch.where(new, step_logp, out)
    return out
