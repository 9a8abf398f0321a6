"""Policy losses of the GRPO family as pure functions behind one registry.

Every loss has one signature, so the trainer picks it by name (`get_loss(cfg.name)`):

    loss_fn(logp, old_logp, behaviour_logp, advantages, mask, cfg, *, ref_logp=None) -> (loss, stats)

- `logp` (B, T): log pi_theta of each response token, with grad. Padded positions may hold
  anything, NaN included: every read of a per-token input goes through `mask` first.
- `old_logp` (B, T): the policy the clip is centred on (pi_old; pi_prox in `decoupled` mode).
- `behaviour_logp` (B, T) or None: what the engine recorded when it sampled each token; only
  `tis` and `decoupled` read it.
- `advantages` (B, T), or (B,) which is broadcast over tokens. The sequence losses (GSPO) use
  each sample's mean over its training tokens, which is its advantage when it was broadcast.
- `mask` (B, T) bool or 0/1: tokens that train. A sample with no training token counts nowhere.
- `stats`: detached scalars: `clip_fraction`, `approx_kl` (k3 of pi_theta vs old_logp),
  `ratio_mean`, plus `kl_ref` when `ref_logp` is given and `is_weight_mean` under
  `tis`/`decoupled`. `denominator` is what the loss divided by (training tokens for DAPO,
  samples with a training token otherwise): across micro-batches, backpropagate
  `loss * denominator` and divide the gradient by the step's total, so splits do not change it.

Papers:
- GRPO: Shao et al. 2024, "DeepSeekMath" (arXiv 2402.03300): the GRPO objective with its
  k3 KL estimator.
- DAPO: Yu et al. 2025 (arXiv 2503.14476): clip-higher and the token-level policy loss.
- GSPO: Zheng et al. 2025, "Group Sequence Policy Optimization" (arXiv 2507.18071): the
  sequence objective and its GSPO-token variant.
- Dr. GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training" (arXiv 2503.20783); its
  advantage fix is in `advantages.py`.
- Decoupled PPO: Hilton et al., "Batch size-invariance for policy optimization" (arXiv
  2110.00641), as AReaL uses it (Fu et al. 2025, arXiv 2505.24298): clip pi_theta/pi_prox,
  weight by pi_prox/pi_behav.
- TIS: Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
  Training" (blog): weight min(pi_old/pi_behav, C).

Where this code departs from them:
- The k3 KL term is available to every loss (DAPO and GSPO drop it); it is aggregated like the
  policy term. `beta` defaults to 0.0 (slime, TRL), not DeepSeekMath's 0.04.
- The mean over samples (GRPO, GSPO) counts only samples with at least one training token;
  the papers divide by G. This keeps zero-length or fully masked samples from shrinking the
  others' gradient.
- GSPO and GSPO-token clamp the sequence log-ratio at `max_log_ratio` (10, as verl does)
  before exp; the clamped sample gets no gradient.
- Off-policy weights for GSPO and GSPO-token are per sample, the length-normalised geometric
  mean exp(mean_t log(pi_old/pi_behav)), then capped, matching GSPO's sequence ratio; slime
  multiplies per-token TIS weights into its GSPO loss instead.
- `tis` and `decoupled` give the same objective shape, -w * min(rho A, clip(rho) A) with
  rho = pi_theta/old_logp; they differ in large weights: `tis` truncates at `tis_cap`,
  `decoupled` zeroes tokens above `decoupled_cap` (AReaL's filter) or keeps all if unset.
- `mask` mode is applied where the batch is built (`mask_stale_tokens`); the loss then runs
  as `none`. It masks by per-token policy version: every token older than the current policy
  loses its loss, so a resumed sample keeps its fresh tokens' loss, and a sibling that finished
  under an older policy (its group recycled) loses all of it while its reward still enters the
  group's statistics (slime's flag zeroes a sample's mask each time it re-enters generation).
- `clip_fraction` counts the elements (tokens; samples for GSPO) whose gradient the clip
  removed: A > 0 above 1 + eps_high, A < 0 below 1 - eps_low.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from reasonrl.config import is_number

LossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]
OFF_POLICY_MODES = ("none", "mask", "tis", "decoupled")
_LOSSES: dict[str, LossFn] = {}
_SAMPLE_STATS: dict[str, tuple[str, ...]] = {}


def register_loss(name: str, sample_stats: tuple[str, ...] = ()) -> Callable[[LossFn], LossFn]:
    """`sample_stats`: the statistics this loss reports as means over samples; the others are
    means over training tokens (a step's micro-batches are merged by those counts, so that
    neither depends on how the batch was split)."""
    def add(fn: LossFn) -> LossFn:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        _LOSSES[name], _SAMPLE_STATS[name] = fn, sample_stats
        return fn

    return add


def sample_stats(name: str) -> tuple[str, ...]:
    get_loss(name)
    return _SAMPLE_STATS[name]


def get_loss(name: str) -> LossFn:
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(_LOSSES))}")
    return _LOSSES[name]


def loss_names() -> list[str]:
    return sorted(_LOSSES)


@dataclass(slots=True)
class LossConfig:
    name: str = "grpo"
    """Policy loss, a registry key: grpo, dapo, gspo, gspo_token."""
    eps_low: float | None = None
    """Clip at 1 - eps_low; None: the loss's paper value (0.2; GSPO 3e-4)."""
    eps_high: float | None = None
    """Clip at 1 + eps_high; None: the paper's (DAPO 0.28, GSPO 4e-4, GRPO = eps_low)."""
    beta: float = 0.0
    """Coefficient of the k3 KL to the reference policy (> 0 needs train.reference_model)."""
    off_policy: str = "none"
    """Recycled (APRIL) tokens: none, mask (no loss on tokens older than the policy), tis (weight
    min(pi_old/pi_behaviour, tis_cap)) or decoupled (AReaL's objective)."""
    tis_cap: float = 2.0
    """C of tis: weight = min(pi_old / pi_behaviour, C)."""
    decoupled_cap: float | None = None
    """decoupled: tokens with pi_prox / pi_behaviour above it get weight 0 (None: keep all)."""
    max_log_ratio: float = 10.0
    """GSPO: clamp of the sequence log-ratio before exp."""

    def __post_init__(self) -> None:
        if self.name not in _LOSSES:
            raise ValueError(f"LossConfig.name: unknown loss {self.name!r}; known: {', '.join(sorted(_LOSSES))}")
        if self.off_policy not in OFF_POLICY_MODES:
            raise ValueError(f"LossConfig.off_policy must be one of {', '.join(OFF_POLICY_MODES)}; got {self.off_policy!r}")
        _check("eps_low", self.eps_low, lambda v: 0 < v <= 1, "in (0, 1]", optional=True)
        _check("eps_high", self.eps_high, lambda v: v > 0, "> 0", optional=True)
        _check("beta", self.beta, lambda v: v >= 0, ">= 0")
        _check("tis_cap", self.tis_cap, lambda v: v > 0, "> 0")
        _check("decoupled_cap", self.decoupled_cap, lambda v: v > 1, "> 1", optional=True)
        _check("max_log_ratio", self.max_log_ratio, lambda v: v > 0, "> 0")

    def clip_range(self, eps_low: float, eps_high: float | None) -> tuple[float, float]:
        """(eps_low, eps_high): the configured values, else the caller's paper defaults
        (eps_high None: symmetric)."""
        low = self.eps_low if self.eps_low is not None else eps_low
        high = self.eps_high if self.eps_high is not None else eps_high
        return low, low if high is None else high


def _check(field: str, value, ok: Callable[[float], bool], rule: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not (is_number(value) and ok(value)):
        rule = f"a number {rule}" + (" or None" if optional else "")
        raise ValueError(f"LossConfig.{field} must be {rule}; got {value!r}")


# ---------------------------------------------------------------- shared pieces


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(x * mask) / max(sum(mask), 1): 0, not NaN, where nothing is unmasked; masked NaNs ignored."""
    x = torch.where(mask, x, 0.0)
    if dim is None:
        return x.sum() / mask.sum().clamp(min=1)
    return x.sum(dim) / mask.sum(dim).clamp(min=1)


def sample_mean(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(B,) per-sample values -> mean over samples with a training token, and their number."""
    has_tokens = mask.any(-1)  # (B,)
    num = has_tokens.sum()
    return torch.where(has_tokens, x, 0.0).sum() / num.clamp(min=1), num


def seq_mean_token_mean(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """GRPO aggregation: 1/|S| sum_i 1/|o_i| sum_t x_it."""
    return sample_mean(masked_mean(x, mask, dim=-1), mask)


def token_mean(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """DAPO aggregation: sum_i sum_t x_it / sum_i |o_i|."""
    return masked_mean(x, mask), mask.sum()


def clipped_surrogate(
    ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float, weight: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """PPO loss per element, -w * min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A), and
    where the clip took the gradient away (clipped term strictly smaller)."""
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    return (loss if weight is None else loss * weight), clipped < unclipped


def behaviour_weight(
    old_logp: Tensor, behaviour_logp: Tensor | None, mask: Tensor, cfg: LossConfig, per_sample: bool = False
) -> Tensor | None:
    """Detached importance weight w = pi_old / pi_behav of `tis` / `decoupled`; None otherwise.

    tis:        w = min(w, tis_cap)
    decoupled:  w = w if w <= decoupled_cap else 0 (no cap: w)
    Shape (B, T), or (B,) with per_sample: exp(mean_t log w_t) before the cap (GSPO).
    """
    if cfg.off_policy in ("none", "mask"):
        return None
    if behaviour_logp is None:
        raise ValueError(f"off_policy={cfg.off_policy!r} needs behaviour_logp")
    log_w = torch.where(mask, old_logp - behaviour_logp, 0.0).detach()  # (B, T)
    if per_sample:
        log_w = masked_mean(log_w, mask, dim=-1)  # (B,)
    w = log_w.exp()
    if cfg.off_policy == "tis":
        return w.clamp(max=cfg.tis_cap)
    if cfg.decoupled_cap is not None:
        w = torch.where(w <= cfg.decoupled_cap, w, 0.0)
    return w


def mask_stale_tokens(mask: Tensor, versions: Tensor, current_version: int) -> Tensor:
    """`mask` with tokens sampled by a policy older than `current_version` set to False.

    `versions` (B, T) is `Sample.versions` padded like the batch; `current_version` is the policy
    version that sampled this step's fresh tokens (the weights the update starts from).
    """
    mask = mask.bool()
    if (versions[mask] > current_version).any():
        raise ValueError(f"a token has a policy version newer than current_version={current_version}")
    return mask & (versions >= current_version)


def _reference_kl(logp: Tensor, ref_logp: Tensor | None, mask: Tensor, cfg: LossConfig) -> Tensor | None:
    """k3 estimate of KL(pi_theta || pi_ref) per token: e^d - d - 1, d = log pi_ref - log pi_theta. (B, T)"""
    if ref_logp is None:
        if cfg.beta > 0:
            raise ValueError("LossConfig.beta > 0 needs ref_logp")
        return None
    d = torch.where(mask, ref_logp.detach() - logp, 0.0)
    return d.exp() - d - 1


def _token_advantages(advantages: Tensor, logp: Tensor) -> Tensor:
    if advantages.dim() == 1:
        advantages = advantages[:, None]  # (B, 1): one advantage per sample
    B, T = logp.shape
    if advantages.dim() != 2 or advantages.shape[0] != B or advantages.shape[1] not in (1, T):
        raise ValueError(f"advantages must be (B,) or (B, T) = {(B, T)}; got {tuple(advantages.shape)}")
    return advantages.detach().expand(B, T)


@torch.no_grad()
def _stats(logp, old_logp, mask, denominator, weight, kl, **extra) -> dict[str, Tensor]:
    d = torch.where(mask, logp - old_logp, 0.0)
    stats = {"approx_kl": masked_mean(d.exp() - 1 - d, mask), "denominator": denominator.to(logp.dtype), **extra}
    if kl is not None:
        stats["kl_ref"] = masked_mean(kl, mask)
    if weight is not None:  # per token (B, T), or per sample (B,)
        stats["is_weight_mean"] = masked_mean(weight, mask) if weight.dim() == 2 else sample_mean(weight, mask)[0]
    return {k: v.detach() for k, v in stats.items()}


def _token_loss(logp, old_logp, log_ratio, adv, weight, mask, clip, aggregate, cfg, ref_logp):
    """The token-level body shared by GRPO, DAPO and GSPO-token; `log_ratio` (B, T) is the
    loss's own log rho, `weight` (B, T), (B,) or None."""
    ratio = torch.where(mask, log_ratio, 0.0).exp()  # (B, T); 1 on padding
    w = weight[:, None] if weight is not None and weight.dim() == 1 else weight
    pg, clipped = clipped_surrogate(ratio, adv, *clip, w)  # (B, T)
    kl = _reference_kl(logp, ref_logp, mask, cfg)
    loss, denominator = aggregate(pg if kl is None else pg + cfg.beta * kl, mask)
    return loss, _stats(
        logp, old_logp, mask, denominator, weight, kl,
        clip_fraction=masked_mean(clipped.to(ratio.dtype), mask), ratio_mean=masked_mean(ratio, mask),
    )


def _seq_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """log s_i = 1/|o_i| sum_t (log pi_theta - log pi_old), (B,), before the clamp."""
    return masked_mean(logp - old_logp.detach(), mask, dim=-1)


# ---------------------------------------------------------------- the losses


@register_loss("grpo")
def grpo_loss(logp, old_logp, behaviour_logp, advantages, mask, cfg, *, ref_logp=None):
    """GRPO: 1/|S| sum_i 1/|o_i| sum_t [-w min(rho A, clip(rho, 1-eps, 1+eps) A) + beta k3],
    rho = pi_theta / pi_old per token, eps 0.2."""
    mask = mask.bool()
    old_logp = old_logp.detach()
    weight = behaviour_weight(old_logp, behaviour_logp, mask, cfg)  # (B, T) or None
    return _token_loss(
        logp, old_logp, logp - old_logp, _token_advantages(advantages, logp), weight, mask,
        cfg.clip_range(0.2, None), seq_mean_token_mean, cfg, ref_logp,
    )


@register_loss("dapo")
def dapo_loss(logp, old_logp, behaviour_logp, advantages, mask, cfg, *, ref_logp=None):
    """DAPO: sum_i sum_t -w min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) / sum_i |o_i|,
    eps_low 0.2, eps_high 0.28 (clip-higher). Dynamic sampling and overlong shaping are
    batch-side: `advantages.dynamic_sampling_mask`, `advantages.overlong_penalty`."""
    mask = mask.bool()
    old_logp = old_logp.detach()
    weight = behaviour_weight(old_logp, behaviour_logp, mask, cfg)  # (B, T) or None
    return _token_loss(
        logp, old_logp, logp - old_logp, _token_advantages(advantages, logp), weight, mask,
        cfg.clip_range(0.2, 0.28), token_mean, cfg, ref_logp,
    )


@register_loss("gspo", sample_stats=("clip_fraction", "ratio_mean", "is_weight_mean"))
def gspo_loss(logp, old_logp, behaviour_logp, advantages, mask, cfg, *, ref_logp=None):
    """GSPO: 1/|S| sum_i -w_i min(s_i A_i, clip(s_i, 1-3e-4, 1+4e-4) A_i) (+ beta k3 token mean),
    s_i = exp(1/|o_i| sum_t log rho_it), the length-normalised sequence ratio."""
    mask = mask.bool()
    old_logp = old_logp.detach()
    s = _seq_log_ratio(logp, old_logp, mask).clamp(max=cfg.max_log_ratio).exp()  # (B,)
    adv = masked_mean(_token_advantages(advantages, logp), mask, dim=-1)  # (B,)
    weight = behaviour_weight(old_logp, behaviour_logp, mask, cfg, per_sample=True)  # (B,) or None
    pg, clipped = clipped_surrogate(s, adv, *cfg.clip_range(3e-4, 4e-4), weight)  # (B,)
    kl = _reference_kl(logp, ref_logp, mask, cfg)
    if kl is not None:
        pg = pg + cfg.beta * masked_mean(kl, mask, dim=-1)
    loss, denominator = sample_mean(pg, mask)
    return loss, _stats(
        logp, old_logp, mask, denominator, weight, kl,
        clip_fraction=sample_mean(clipped.to(s.dtype), mask)[0], ratio_mean=sample_mean(s, mask)[0],
    )


@register_loss("gspo_token", sample_stats=("is_weight_mean",))
def gspo_token_loss(logp, old_logp, behaviour_logp, advantages, mask, cfg, *, ref_logp=None):
    """GSPO-token: s_it = sg[s_i] * pi_theta(o_t) / sg[pi_theta(o_t)], i.e. the value s_i with
    the gradient of token t alone, so per-token advantages work; clip 3e-4/4e-4, per-sample
    token mean then mean over samples. Equals GSPO when A is one value per sample."""
    mask = mask.bool()
    old_logp = old_logp.detach()
    log_s = _seq_log_ratio(logp, old_logp, mask).detach()  # (B,)
    log_ratio = (log_s[:, None] + logp - logp.detach()).clamp(max=cfg.max_log_ratio)  # (B, T)
    weight = behaviour_weight(old_logp, behaviour_logp, mask, cfg, per_sample=True)  # (B,) or None
    return _token_loss(
        logp, old_logp, log_ratio, _token_advantages(advantages, logp), weight, mask,
        cfg.clip_range(3e-4, 4e-4), seq_mean_token_mean, cfg, ref_logp,
    )
