"""`PolicyUpdate`: the update of one training step, PPO style.

    old log-probs (when more than one optimizer step) -> for each epoch: shuffle, split into
    mini-batches -> for each mini-batch: micro-batches under a token budget, gradients accumulated
    -> one optimizer step -> after the step's last mini-batch, one LR-schedule step

With one epoch of one mini-batch (the default) the update starts at the rollout's policy, so the
old log-probs equal this forward's values and are taken from it (`logp.detach()`), saving a
forward pass; clip fraction and KL to the old policy are then 0 by construction. With more, the
old log-probs are recomputed once before the first optimizer step and the later mini-batches see
a policy that moved: that is when clipping and `approx_kl` mean something.

Micro-batch splits do not change the gradient: each micro-batch backpropagates `loss *
denominator` and the mini-batch's gradient is divided by the summed denominator (see losses.py).
Data parallelism (`parallel`, reasonrl/scale/data_parallel.py) is one more such split: each rank
backpropagates its share of every mini-batch, and the gradient sums and denominators are summed
over ranks before the division, so M ranks take the optimizer step one process would.

A gradient norm that is not finite (nan or inf in a loss or its gradients) skips that optimizer
step, so the weights stay finite; the step's `nonfinite_updates` counts such steps and the trainer
stops the run on it (`TrainingDiverged`).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from contextlib import nullcontext

import torch

from reasonrl.models.model import DecoderLM
from reasonrl.rl.batch import TrainBatch, collate, micro_batches, response_logprobs
from reasonrl.rl.config import OptimSection, RunConfig
from reasonrl.rl.losses import get_loss, mask_stale_tokens, sample_stats
from reasonrl.rollout.sample import Sample


class TrainingDiverged(RuntimeError):
    """A step's update was not finite (its optimizer step was skipped): the run cannot go on as configured."""

    def __init__(self, step: int, skipped: int, steps: int, checkpoint, causes: str = "optim.lr too high, or "
                 "rewards or log-probs out of range"):
        went_on = (f"the last checkpoint, {checkpoint}, holds finite weights); usual causes: {causes}. Change the "
                   "setting and rerun with --accept-changes to go on from that checkpoint" if checkpoint else
                   f"no checkpoint yet); usual causes: {causes}. Change the setting and start again")
        super().__init__(f"step {step}: {skipped} of {steps} optimizer steps had a gradient norm that is not finite "
                         f"(nan or inf in the loss or its gradients) and were skipped; the run stops here, unsaved "
                         f"({went_on}.")


def step_if_finite(optimizer, grad_norm: float) -> bool:
    """Take the optimizer step unless the gradient norm is nan or inf (a nan or inf loss or gradient):
    then the gradients are dropped and the weights stay finite. Whether the step was taken."""
    if math.isfinite(grad_norm):
        optimizer.step()
        return True
    optimizer.zero_grad(set_to_none=True)
    return False


def lr_factor(step: int, warmup_steps: int, schedule: str, total_steps: int) -> float:
    """Multiplier of the peak learning rate at schedule step `step` (0-based): linear warm-up, then
    constant or cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def adam_state_bytes(model: torch.nn.Module) -> int:
    """Bytes AdamW's state takes once made (at the first update): two moments per trainable weight."""
    return sum(2 * p.numel() * p.element_size() for p in trainable(model))


def freeze_vision(model: torch.nn.Module) -> None:
    """Keep a vision-language model's vision tower and merger fixed; a text model has none."""
    if hasattr(model, "visual"):
        model.visual.requires_grad_(False)


def make_optimizer(params, optim: OptimSection, total_steps: int):
    optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, optim.warmup_steps, optim.schedule, total_steps))
    return optimizer, scheduler


def resume_optimizer(optimizer, scheduler, load_optimizer, scheduler_state: dict | None) -> None:
    """Adam's moments and the schedule's step from a checkpoint (`load_optimizer()` loads the
    former), the hyper-parameters from the current config: a run resumed with --accept-changes
    trains with the lr, betas and weight decay it accepted, at its new schedule's value for the
    restored step (loading the saved state alone brought the saved ones back, silently)."""
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    base_lrs = list(scheduler.base_lrs) if scheduler is not None else None
    load_optimizer()
    for group, h in zip(optimizer.param_groups, hyper):
        group.update(h)
    if scheduler is None or scheduler_state is None:
        return
    scheduler.load_state_dict(scheduler_state)
    scheduler.base_lrs = base_lrs
    for group, base, factor in zip(optimizer.param_groups, base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr() reports


class _Totals:
    """Sums of weighted statistics over micro-batches, turned into means at the end."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, key: str, value: float, weight: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value * weight
        self.weights[key] = self.weights.get(key, 0.0) + weight

    def means(self) -> dict[str, float]:
        return {k: v / self.weights[k] for k, v in self.sums.items() if self.weights[k] > 0}


def autocast(device: torch.device, dtype: str | None):
    """Compute in `dtype` (bfloat16, float16) over float32 weights on CUDA; elsewhere, or with None, as is."""
    return torch.autocast(device.type, getattr(torch, dtype)) if dtype and device.type == "cuda" else nullcontext()


class PolicyUpdate:
    def __init__(self, policy: DecoderLM, cfg: RunConfig, pad_id: int, parallel=None):
        """`parallel`: this process's rank of a data-parallel trainer group (scale/data_parallel.py)."""
        self.policy, self.cfg, self.pad_id, self.parallel = policy, cfg, pad_id, parallel
        self.loss_fn, self.sample_stats = get_loss(cfg.loss.name), sample_stats(cfg.loss.name)
        if cfg.model.freeze_vision:
            freeze_vision(policy)
        self.optimizer, self.scheduler = make_optimizer(trainable(policy), cfg.optim, cfg.train.steps)
        self.reference = self._reference() if cfg.train.reference_model else None
        self.shuffle = torch.Generator().manual_seed(cfg.train.seed)

    def __call__(self, samples: list[Sample], advantages: list[float], version: int) -> dict[str, float]:
        o, start = self.cfg.optim, time.perf_counter()
        self.policy.train()
        old = self._old_logprobs(samples) if o.updates_per_step > 1 else None
        totals, grad_norms = _Totals(), []
        for epoch in range(o.ppo_epochs):
            order = torch.randperm(len(samples), generator=self.shuffle).tolist() if o.minibatches_per_epoch > 1 \
                else list(range(len(samples)))
            for part in _split(order, o.minibatches_per_epoch):
                grad_norms.append(self._step(part, samples, advantages, old, version, totals, first_pass=epoch == 0))
        self.optimizer.zero_grad(set_to_none=True)  # a weights-sized buffer the rollout's KV cache can have meanwhile
        self.scheduler.step()
        self.policy.eval()
        if self.parallel is not None:
            totals = self.parallel.merge_totals(totals)
        seconds = time.perf_counter() - start
        tokens = sum(len(s.response_ids) for s in samples)
        return {**totals.means(), "grad_norm": sum(grad_norms) / len(grad_norms), "optimizer_steps": len(grad_norms),
                "nonfinite_updates": sum(not math.isfinite(g) for g in grad_norms),
                "train_seconds": seconds, "train_tokens_per_s": tokens * o.ppo_epochs / seconds}

    def _step(self, part: list[int], samples, advantages, old, version: int, totals: _Totals, first_pass: bool) -> float:
        """One optimizer step on the samples `part`; returns the gradient norm before clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        mine = self.parallel.shard(part) if self.parallel is not None else part
        groups: list = [[mine[i] for i in idx] for idx in micro_batches([samples[i] for i in mine],
                                                                        self.cfg.optim.max_tokens_per_microbatch)]
        if self.parallel is not None:  # sharded weights: every rank runs as many backward passes (None: an idle one)
            groups = self.parallel.even(groups)
        denominator = 0.0
        for rows in groups:
            idle = rows is None
            rows = [part[0]] if idle else rows
            batch = collate([samples[i] for i in rows], [advantages[i] for i in rows], self.pad_id, self.policy.device,
                            None if old is None else [old[i] for i in rows])
            denominator += self._backward(batch, version, totals, first_pass, idle)
        if self.parallel is not None:
            denominator = self.parallel.reduce_gradients(trainable(self.policy), denominator)
        for p in trainable(self.policy):
            if p.grad is not None and denominator > 0:
                p.grad /= denominator
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable(self.policy), self.cfg.optim.grad_clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)  # a DTensor if sharded
        step_if_finite(self.optimizer, grad_norm)  # (the same on every rank: the norm is of the reduced gradients)
        return grad_norm

    def _backward(self, batch: TrainBatch, version: int, totals: _Totals, first_pass: bool, idle: bool = False) -> float:
        """Backpropagate `loss * denominator` of one micro-batch; its denominator. `idle`: a pass that
        only keeps a sharded rank in step with the others (its gradient is zero, nothing counted)."""
        with self._autocast():
            logp, entropy = response_logprobs(self.policy, batch, self.cfg.rollout.temperature, entropy=True)
            ref = self._reference_logp(batch)
        mask = batch.mask
        if self.cfg.loss.off_policy == "mask":
            mask = mask_stale_tokens(mask, batch.versions, version)
        old_logp = batch.old_logp if batch.old_logp is not None else logp.detach()
        loss, stats = self.loss_fn(logp, old_logp, batch.behaviour_logp, batch.advantages, mask, self.cfg.loss,
                                   ref_logp=ref)
        d = float(stats.pop("denominator"))
        if idle:
            (loss * 0.0).backward()
            return 0.0
        (loss * d).backward()
        counts = {"tokens": float(mask.sum()), "samples": float(mask.any(-1).sum())}
        for key, value in stats.items():  # means over tokens or samples, merged by those counts
            totals.add(key, float(value), counts["samples" if key in self.sample_stats else "tokens"])
        totals.add("policy_loss", float(loss.detach()), d)
        tokens = float(batch.mask.sum())
        totals.add("entropy", float(entropy[batch.mask].sum()) / max(tokens, 1), tokens)
        if first_pass:  # engine vs trainer log-probs of the same weights, on tokens sampled by this policy version
            fresh = batch.mask & (batch.versions == version)
            gap = (old_logp - batch.behaviour_logp).abs()[fresh]
            totals.add("logprob_mismatch", float(gap.sum()) / max(gap.numel(), 1), float(gap.numel()))
        return d

    @torch.no_grad()
    def _old_logprobs(self, samples: list[Sample]) -> list[torch.Tensor]:
        """Each sample's (T,) response log-probs under the policy before the update."""
        out: list[torch.Tensor | None] = [None] * len(samples)
        for idx in micro_batches(samples, self.cfg.optim.max_tokens_per_microbatch):
            batch = collate([samples[i] for i in idx], [0.0] * len(idx), self.pad_id, self.policy.device)
            with self._autocast():
                logp = response_logprobs(self.policy, batch, self.cfg.rollout.temperature).float()
            for row, i in enumerate(idx):
                out[i] = logp[row, :len(samples[i].response_ids)].cpu()
        return out

    def _autocast(self):
        return autocast(self.policy.device, self.cfg.model.autocast)

    def _reference(self) -> DecoderLM:
        from reasonrl.models.loader import load_model

        path = self.cfg.model.path
        ref = load_model(path, self.policy.device, self.policy.dtype) if path else copy.deepcopy(self.policy)
        ref.rotary.inv_freq = self.policy.rotary.inv_freq.clone()  # dynamic NTK is fixed from the policy's max_len (rope.py)
        return ref.requires_grad_(False).eval()

    def _reference_logp(self, batch: TrainBatch) -> torch.Tensor | None:
        if self.reference is None:
            return None
        with torch.no_grad():
            return response_logprobs(self.reference, batch, self.cfg.rollout.temperature)

    @property
    def state_bytes(self) -> int:
        """Device bytes AdamW's state will take: what an engine colocated on a GPU leaves out of its KV
        cache, sized before the first update makes it."""
        return adam_state_bytes(self.policy)

    def lr(self) -> float:
        """The learning rate the next update uses."""
        return self.scheduler.get_last_lr()[0]

    def skip(self) -> None:
        """A training step without an update: the schedule still moves on (it counts training steps).
        torch warns of a schedule stepped before any optimizer step, which here is what is meant."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            self.scheduler.step()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "shuffle": self.shuffle.get_state()}

    def load_state_dict(self, state: dict) -> None:
        resume_optimizer(self.optimizer, self.scheduler, lambda: self.optimizer.load_state_dict(state["optimizer"]),
                         state["scheduler"])
        if "shuffle" in state:
            self.shuffle.set_state(state["shuffle"])


def _split(order: list[int], parts: int) -> list[list[int]]:
    """`order` in `parts` contiguous pieces of near-equal size (none empty)."""
    parts = min(parts, len(order))
    bounds = [round(i * len(order) / parts) for i in range(parts + 1)]
    return [order[a:b] for a, b in zip(bounds, bounds[1:])]
