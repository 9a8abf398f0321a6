"""`Trainer`: colocated RL post-training, one step at a time.

    rollout (APRIL) -> reward -> advantage -> loss -> update -> sync

Trainer and engine share one model: after an update the engine serves the new weights with no
copy (its prefix cache is reset, the cached keys being the old policy's), and the KV cache is
freed while training runs. With `train.remote_url`, rollouts run on a `reasonrl serve` endpoint
instead and weights are pushed to it through a checkpoint directory after each update.

One optimizer step per rollout: the update starts at the rollout's policy, so old log-probs
recomputed under the current policy equal this forward's values and are taken from it
(`logp.detach()`), saving a forward pass.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.envs.base import Environment
from reasonrl.models.loader import load_model, load_weights, save_model
from reasonrl.models.model import DecoderLM
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.rl.advantages import get_advantage, overlong_penalty
from reasonrl.rl.batch import collate, micro_batches, response_logprobs
from reasonrl.rl.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from reasonrl.rl.config import RunConfig
from reasonrl.rl.losses import get_loss, mask_stale_tokens
from reasonrl.rl.metrics import MetricsLogger, percentile
from reasonrl.rollout.april import AprilRollout, RolloutSpec
from reasonrl.rollout.backend import EngineBackend, RemoteBackend
from reasonrl.rollout.buffer import Group
from reasonrl.rollout.prompts import PromptSource


class Trainer:
    def __init__(self, cfg: RunConfig, env: Environment, policy: DecoderLM, tokenizer: Tokenizer, console: bool = True):
        self.cfg, self.env, self.policy, self.tokenizer = cfg, env, policy, tokenizer
        self.run_dir = Path(cfg.train.run_dir)
        torch.manual_seed(cfg.train.seed)
        self.remote = RemoteBackend(cfg.train.remote_url) if cfg.train.remote_url else None
        self.engine = LLMEngine(policy, tokenizer, cfg.engine) if self.remote is None else None
        r = cfg.rollout
        spec = RolloutSpec(r.prompts_per_step, r.samples_per_prompt, r.over_provision, r.max_tokens, r.temperature,
                           r.top_p, r.dynamic_sampling, r.max_groups_per_step)
        self.prompts = PromptSource(env, cfg.train.seed)
        self.rollout = AprilRollout(self.remote or EngineBackend(self.engine), spec, self.prompts, self.encode,
                                    self.score, cfg.train.seed)
        self.loss_fn, self.advantage_fn = get_loss(cfg.loss.name), get_advantage(cfg.advantage.name)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(policy.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.reference = self._reference() if cfg.train.reference_model else None
        self.autocast = getattr(torch, cfg.model.autocast) if cfg.model.autocast and policy.device.type == "cuda" else None
        self.step = self.version = 0
        self.logger = MetricsLogger(self.run_dir, cfg.train.steps, console)
        self._prompt_ids: dict[str, list[int]] = {}

    # ---- the loop -----------------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        self.resume()
        if self.step == 0:
            self.logger.log(0, {f"eval_{k}": v for k, v in self.evaluate().items()})
        while self.step < self.cfg.train.steps:
            self.step += 1
            metrics = self.train_step()
            if self.cfg.train.eval_every and self.step % self.cfg.train.eval_every == 0 and self.step < self.cfg.train.steps:
                metrics.update({f"eval_{k}": v for k, v in self.evaluate().items()})
            if self.step == self.cfg.train.steps:
                metrics.update({f"eval_{k}": v for k, v in self.evaluate().items()})
            self.logger.log(self.step, metrics)
            if self.step % self.cfg.train.save_every == 0 or self.step == self.cfg.train.steps:
                self.save()
        self.logger.close()
        return metrics

    def train_step(self) -> dict[str, float]:
        groups, rollout_stats = self.collect()
        sample_stats = self.sample_stats(groups)
        samples = [s for g in groups for s in g.samples]
        rewards = torch.tensor([s.reward for s in samples])
        advantages = self.advantage_fn(rewards, torch.tensor([s.group_id for s in samples]), self.cfg.advantage)
        update_stats = self.update(samples, advantages.tolist())
        self.sync_weights()
        return {**rollout_stats, **sample_stats, **update_stats, "lr": self.scheduler.get_last_lr()[0]}

    def collect(self) -> tuple[list[Group], dict[str, float]]:
        if self.engine is not None:
            self.engine.wake()
        spec = self.engine.speculator if self.engine is not None else None
        before = (spec.rounds, spec.emitted) if spec else None
        groups, stats = self.rollout.collect(self.step, self.version)
        if self.engine is not None:
            self.engine.sleep()  # the KV cache's memory goes to training until the next rollout
        extra = {}
        if spec:  # speculative decoding: tokens per target forward this step (falls as the policy leaves its draft)
            extra["spec_accepted_length"] = (spec.emitted - before[1]) / max(spec.rounds - before[0], 1)
        return groups, {**stats.as_dict(), **self.rollout.buffer.stats(self.step), **extra}

    def update(self, samples, advantages: list[float]) -> dict[str, float]:
        start = time.perf_counter()
        self.policy.train()
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        denominator = 0.0
        for idx in micro_batches(samples, self.cfg.optim.max_tokens_per_microbatch):
            batch = collate([samples[i] for i in idx], [advantages[i] for i in idx], self.tokenizer.pad_token_id,
                            self.policy.device)
            with torch.autocast(self.policy.device.type, self.autocast) if self.autocast else nullcontext():
                logp = response_logprobs(self.policy, batch, self.cfg.rollout.temperature)
                ref = self._reference_logp(batch)
            mask = batch.mask
            if self.cfg.loss.off_policy == "mask":
                mask = mask_stale_tokens(mask, batch.versions, self.version)
            loss, stats = self.loss_fn(logp, logp.detach(), batch.behaviour_logp, batch.advantages, mask, self.cfg.loss,
                                       ref_logp=ref)
            d = float(stats["denominator"])
            (loss * d).backward()
            denominator += d
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + float(v) * d
            fresh = batch.mask & (batch.versions == self.version)
            totals["logprob_mismatch"] = totals.get("logprob_mismatch", 0.0) + float(
                (logp.detach() - batch.behaviour_logp).abs()[fresh].sum())
            totals["fresh_tokens"] = totals.get("fresh_tokens", 0.0) + float(fresh.sum())
        for p in self.policy.parameters():
            if p.grad is not None and denominator > 0:
                p.grad /= denominator
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.policy.eval()
        seconds = time.perf_counter() - start
        out = {k: v / max(denominator, 1e-9) for k, v in totals.items() if k not in ("denominator", "logprob_mismatch", "fresh_tokens")}
        out["logprob_mismatch"] = totals.get("logprob_mismatch", 0.0) / max(totals.get("fresh_tokens", 0.0), 1)
        tokens = sum(len(s.response_ids) for s in samples)
        return {**out, "grad_norm": float(grad_norm), "train_seconds": seconds, "train_tokens_per_s": tokens / seconds}

    def sync_weights(self) -> None:
        """Make the engine serve the updated policy."""
        self.version += 1
        if self.remote is not None:
            path = save_model(self.policy, self.run_dir / "sync", self.tokenizer)
            self.remote.load_weights(str(path))
        else:
            self.engine.reset_prefix_cache()

    # ---- rewards and statistics ---------------------------------------------------------------
    def encode(self, prompt) -> list[int]:
        if prompt.id not in self._prompt_ids:
            self._prompt_ids[prompt.id] = self.tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True)
        return self._prompt_ids[prompt.id]

    def score(self, group: Group) -> None:
        r = self.cfg.rollout
        for s in group.samples:
            s.response_text = self.tokenizer.decode(s.response_ids)
        rewards = self.env.rewards([group.prompt] * len(group.samples), [s.response_text for s in group.samples])
        for s, reward in zip(group.samples, rewards):
            s.reward = reward
            if r.overlong_max:
                s.reward += overlong_penalty(len(s.response_ids), r.overlong_max, r.overlong_cache)

    def sample_stats(self, groups: list[Group]) -> dict[str, float]:
        samples = [s for g in groups for s in g.samples]
        rewards = [s.reward for s in samples]
        lengths = [len(s.response_ids) for s in samples]
        tokens = max(sum(lengths), 1)
        stale = sum(sum(v < self.version for v in s.versions) for s in samples)
        mean = sum(rewards) / len(rewards)
        env = self.env.metrics([s.prompt for s in samples], [s.response_text for s in samples], rewards)
        return {**env, "reward_mean": mean, "reward_std": math.sqrt(sum((x - mean) ** 2 for x in rewards) / len(rewards)),
                "length_p50": percentile(lengths, 50), "length_p90": percentile(lengths, 90), "length_max": max(lengths),
                "trained_groups": len(groups), "off_policy_token_fraction": stale / tokens,
                "max_version_span": max((max(s.versions) - min(s.versions) for s in samples if s.versions), default=0)}

    def evaluate(self) -> dict[str, float]:
        """Greedy pass@1 on the environment's held-out prompts (in-process engine only)."""
        prompts = self.env.prompts(n=self.cfg.env.eval_size, seed=self.cfg.train.seed, split="eval")
        if not prompts or self.engine is None:
            return {}
        self.engine.wake()
        params = SamplingParams(temperature=0, max_tokens=self.cfg.rollout.max_tokens)
        for i, p in enumerate(prompts):
            self.engine.add_request(f"eval-{i}", self.encode(p), params)
        outs = {rid: out.outputs[0] for rid, out in self.engine.drain().items()}
        self.engine.sleep()
        texts = [outs[f"eval-{i}"].text for i in range(len(prompts))]
        rewards = self.env.rewards(prompts, texts)
        lengths = [len(outs[f"eval-{i}"].token_ids) for i in range(len(prompts))]
        return {**self.env.metrics(prompts, texts, rewards), "length_p50": percentile(lengths, 50),
                "length_p99": percentile(lengths, 99)}

    # ---- state ----------------------------------------------------------------------------------
    def save(self) -> Path:
        state = {"step": self.step, "version": self.version, "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "prompts": self.prompts.state_dict(),
                 "rollout": self.rollout.state_dict(), "engine_seed_rng": self.engine._rng.getstate()}
        return save_checkpoint(self.run_dir, self.step, self.policy, self.tokenizer, state, self.cfg.train.keep_checkpoints)

    def resume(self) -> bool:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            return False
        load_weights(self.policy, path)
        state = load_trainer_state(path)
        self.step, self.version = state["step"], state["version"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.prompts.load_state_dict(state["prompts"])
        self.rollout.load_state_dict(state["rollout"])
        self.logger.truncate_after(self.step)
        print(f"resumed from {path} (step {self.step})")
        return True

    def _lr_factor(self, step: int) -> float:
        o = self.cfg.optim
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "cosine":
            progress = (step - o.warmup_steps) / max(1, self.cfg.train.steps - o.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    def _reference(self) -> DecoderLM:
        ref = load_model(self.cfg.model.path, self.policy.device, self.policy.dtype) if self.cfg.model.path else copy.deepcopy(self.policy)
        return ref.requires_grad_(False).eval()

    def _reference_logp(self, batch) -> torch.Tensor | None:
        if self.reference is None:
            return None
        with torch.no_grad():
            return response_logprobs(self.reference, batch, self.cfg.rollout.temperature)
