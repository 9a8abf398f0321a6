"""Advantage estimators behind a registry, and DAPO's two batch-side rules, as pure functions.

An estimator maps one scalar reward per sample to one advantage per sample:

    estimator(rewards (N,), group_ids (N,), cfg) -> advantages (N,)

`group_ids` is `Sample.group_id` (samples of one prompt share it); groups need not be
contiguous nor of equal size. The losses take the (N,) result as is and broadcast it over
each sample's tokens.

Papers:
- GRPO: Shao et al. 2024, "DeepSeekMath" (arXiv 2402.03300), outcome supervision (sec. 4.1.2):
  A_i = (r_i - mean(r)) / std(r) over the G samples of a prompt.
- Dr. GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training" (arXiv 2503.20783): drop the
  division by std(r), which up-weights prompts that are nearly always or never solved
  (`std_normalize=False`).
- DAPO: Yu et al. 2025 (arXiv 2503.14476): dynamic sampling (keep prompts with
  0 < #correct < G) and overlong reward shaping (Eq. 13).

Where this code departs from them:
- std is the unbiased (n - 1) sample std, which is what verl (`torch.std`) and slime
  (`Tensor.std`) compute; the GRPO paper does not say which. eps = 1e-6 is added to it, as
  both do.
- A group whose rewards are all equal, and a group of one sample, gets exactly 0. Float
  rounding would otherwise leave (r - mean) ~ 1e-17 (seven float64 rewards of 0.1): not
  exactly 0 after the eps, and O(1) noise, or 0/0, with eps = 0.
- Dr. GRPO also removes the per-sample 1/|o_i| from the loss; that half lives in the loss's
  aggregation (DAPO's token mean has no per-sample length normalisation; Dr. GRPO's constant
  normaliser differs from it by one scale per batch).
- Dynamic sampling compares rewards for exact equality instead of correctness counts, so it
  also applies to non-binary rewards (verl's `filter_groups` uses std > 0, the same rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from reasonrl.config import finite_numbers

AdvantageFn = Callable[[Tensor, Tensor, "AdvantageConfig"], Tensor]
_ESTIMATORS: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    def add(fn: AdvantageFn) -> AdvantageFn:
        if name in _ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        _ESTIMATORS[name] = fn
        return fn

    return add


def get_advantage(name: str) -> AdvantageFn:
    if name not in _ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; known: {', '.join(sorted(_ESTIMATORS))}")
    return _ESTIMATORS[name]


@dataclass(slots=True)
class AdvantageConfig:
    name: str = "grpo"
    """Advantage estimator, a registry key."""
    std_normalize: bool = True
    """Divide by the group's reward std (GRPO); false: Dr. GRPO's advantage. Its other half (no
    division by each response's length) is the loss's aggregation: use loss.name dapo with it."""
    eps: float = 1e-6
    """Added to the std before dividing."""

    def __post_init__(self) -> None:
        if self.name not in _ESTIMATORS:
            raise ValueError(f"AdvantageConfig.name: unknown estimator {self.name!r}; known: {', '.join(sorted(_ESTIMATORS))}")
        if not isinstance(self.std_normalize, bool):
            raise ValueError(f"AdvantageConfig.std_normalize must be true or false; got {self.std_normalize!r}")
        finite_numbers(self, at_least={"eps": 0}, prefix="AdvantageConfig.")


class GroupStats(NamedTuple):
    """Per-sample view of its group's statistics, each (N,)."""

    mean: Tensor
    std: Tensor  # unbiased; 0 for a group of one
    flat: Tensor  # bool: every reward of the group is equal (a group of one included)


def group_stats(rewards: Tensor, group_ids: Tensor) -> GroupStats:
    """Mean, unbiased std and flatness of each sample's group, computed in float64."""
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"rewards and group_ids must both be (N,); got {tuple(rewards.shape)}, {tuple(group_ids.shape)}")
    r = rewards.double()
    _, g = torch.unique(group_ids, return_inverse=True)  # (N,) group index 0..K-1
    k = int(g.max()) + 1 if len(g) else 0
    zeros = r.new_zeros(k)
    count = zeros.index_add(0, g, torch.ones_like(r))  # (K,)
    mean = zeros.index_add(0, g, r) / count
    sq = zeros.index_add(0, g, (r - mean[g]) ** 2)
    std = (sq / (count - 1).clamp(min=1)).sqrt()  # sum (r - mean)^2 / (n - 1)
    high = zeros.scatter_reduce(0, g, r, "amax", include_self=False)
    low = zeros.scatter_reduce(0, g, r, "amin", include_self=False)
    return GroupStats(mean[g], std[g], (high == low)[g])


@register_advantage("grpo")
def grpo_advantages(rewards: Tensor, group_ids: Tensor, cfg: AdvantageConfig) -> Tensor:
    """A_i = (r_i - mean_g) / (std_g + eps); A_i = r_i - mean_g without std_normalize (Dr. GRPO)."""
    g = group_stats(rewards, group_ids)
    adv = rewards.double() - g.mean
    if cfg.std_normalize:
        adv = adv / (g.std + cfg.eps)
    dtype = rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype()
    return torch.where(g.flat, 0.0, adv).to(dtype)


def dynamic_sampling_mask(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """(N,) bool, True for the samples of groups whose rewards differ (DAPO dynamic sampling).

    A group is kept or dropped whole; a flat group has zero advantage and no gradient. The
    caller samples more prompts until it has enough kept groups.
    """
    return ~group_stats(rewards, group_ids).flat


def overlong_penalty(length: int, max_len: int, cache_len: int) -> float:
    """DAPO Eq. 13, the reward added to a response of `length` tokens:

        0                                    if length <= max_len - cache_len
        ((max_len - cache_len) - length) / cache_len   if max_len - cache_len < length <= max_len
        -1                                   if length > max_len

    The paper uses max_len = 20480 and cache_len = 4096 (16384 generated tokens before the ramp).
    """
    if max_len <= 0:
        raise ValueError(f"max_len must be > 0; got {max_len}")
    if not 0 <= cache_len <= max_len:
        raise ValueError(f"cache_len must be in [0, max_len={max_len}]; got {cache_len}")
    if length < 0:
        raise ValueError(f"length must be >= 0; got {length}")
    if length > max_len:
        return -1.0
    if length <= max_len - cache_len:
        return 0.0
    return ((max_len - cache_len) - length) / cache_len  # cache_len > 0 on this branch
