"""`Trainer`: RL post-training, one step at a time.

    rollout (APRIL) -> reward -> advantage -> loss -> update -> sync

The trainer speaks to its rollout backend only through `RolloutManager` and the backend
interface (rollout/backend.py), whichever it is: the in-process engine sharing the policy's
weights (colocated: the KV cache is freed while training runs and an update needs no copy) or a
`reasonrl serve` endpoint (weights pushed after every update), or N engine actors on Ray with the
update on a trainer group of M ranks (`cluster.ray`, reasonrl/scale/). Evaluation, checkpoints and
resume work the same with all of them.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path

import torch

from reasonrl.config import to_dict
from reasonrl.envs.base import Environment
from reasonrl.models.chat import ChatEncoder
from reasonrl.models.model import DecoderLM
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.reward.prm.process import ProcessReward
from reasonrl.rl.advantages import get_advantage
from reasonrl.rl.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from reasonrl.rl.config import RunConfig
from reasonrl.rl.metrics import MetricsLogger, StepClock, percentile
from reasonrl.rl.trackers import make_trackers
from reasonrl.rl.update import PolicyUpdate, TrainingDiverged
from reasonrl.rollout.backend import RolloutBackend, make_backend
from reasonrl.rollout.buffer import Group
from reasonrl.rollout.manager import RolloutManager
from reasonrl.rollout.sample import Status


class Trainer:
    def __init__(self, cfg: RunConfig, env: Environment, policy: DecoderLM, tokenizer: Tokenizer,
                 backend: RolloutBackend | None = None, console: bool = True):
        self.cfg, self.env, self.policy, self.tokenizer = cfg, env, policy, tokenizer
        self.run_dir = Path(cfg.train.run_dir)
        torch.manual_seed(cfg.train.seed)
        self.scale = None
        if cfg.cluster.ray:  # engine actors and a trainer group on Ray (reasonrl/scale/), the same loop
            from reasonrl.scale.placement import ScaleOut

            self.scale = ScaleOut(cfg, policy, tokenizer.pad_token_id, backend)
            backend, self.update = self.scale.backend, self.scale.update
        else:
            self.update = PolicyUpdate(policy, cfg, tokenizer.pad_token_id)
        self.process = (ProcessReward(cfg.process, tokenizer, policy.device, env.special_tokens_in_responses)
                        if cfg.process.prm else None)  # (loaded before a GPU engine sizes its cache on what is free)
        self.backend = backend or make_backend(cfg.rollout, cfg.engine.for_checkpoint(cfg.model.path), policy, tokenizer,
                                                self.run_dir / "sync", cfg.model.path, self.update.state_bytes)
        self.rollout = RolloutManager(self.backend, env,
                                      ChatEncoder(tokenizer, policy, cfg.rollout.chat_template_kwargs), cfg.rollout,
                                      cfg.train.seed)
        self.eval_env = env
        if cfg.env.eval_name is not None:
            from reasonrl.envs.registry import load_environment

            self.eval_env = load_environment(cfg.env.eval_name)
        elif not env.held_out:
            warnings.warn(f"env {cfg.env.name!r} is one file with no held-out split: the eval_* metrics measure "
                          "training prompts; set env.eval_name to a held-out file's spec", stacklevel=2)
        self.advantage_fn = get_advantage(cfg.advantage.name)
        self.step = self.version = 0
        self.console = console
        trackers = make_trackers(cfg.train.trackers, self.run_dir, to_dict(cfg))
        self.logger = MetricsLogger(self.run_dir, cfg.train.steps, console, trackers)

    # ---- the loop -----------------------------------------------------------------------------
    def train(self, stop=lambda: False) -> dict[str, float]:
        """Run, or continue from the latest checkpoint, until `train.steps`; when `stop()` turns true,
        finish the step, checkpoint and return. Returns the last step's metrics."""
        t = self.cfg.train
        if not self.resume():
            self.logger.truncate_after(-1)  # a fresh start: what an earlier, unsaved attempt logged goes
            self.backend.sync(self.policy, self.version)  # a remote server may hold other weights
            self.logger.log(0, self.evaluate())
        metrics: dict[str, float] = {}
        clock = StepClock(t.steps)
        while self.step < t.steps and not stop():
            self.step += 1
            metrics = self.train_step()
            if self.step == t.steps or (t.eval_every and self.step % t.eval_every == 0):
                metrics.update(self.evaluate())
            metrics.update(clock.tick(self.step))
            self.logger.log(self.step, metrics)
            if metrics.get("nonfinite_updates"):
                self.logger.close()
                raise TrainingDiverged(self.step, metrics["nonfinite_updates"], metrics["optimizer_steps"],
                                       latest_checkpoint(self.run_dir))
            if self.step % t.save_every == 0 or self.step == t.steps or stop():
                self.save()
        self.logger.close()
        return metrics

    def train_step(self) -> dict[str, float]:
        groups, rollout_stats = self.rollout.collect(self.step, self.version)
        if not groups:  # dynamic sampling filtered every group the step's budget allowed: nothing to learn from
            launched = rollout_stats.get("launched_groups", 0)
            warnings.warn(f"step {self.step}: dynamic sampling filtered all {launched:.0f} groups the step could launch "
                          "(rollout.max_groups_per_step): every group's rewards were equal; no update this step",
                          stacklevel=2)
            lr = self.update.lr()
            self.update.skip()
            return {**rollout_stats, "trained_groups": 0, "skipped_update": 1.0, "lr": lr}
        sample_stats = self.sample_stats(groups)
        samples = [s for g in groups for s in g.samples]
        rewards = torch.tensor([s.reward for s in samples])
        advantages = self.advantage_fn(rewards, torch.tensor([s.group_id for s in samples]), self.cfg.advantage)
        lr = self.update.lr()  # the rate this step's update uses
        advantages = advantages.tolist()
        if self.process is not None:  # a PRM's step scores add per-token advantages
            advantages = self.process.advantages(samples, advantages)
        update_stats = self.update(samples, advantages, self.version)
        return {**rollout_stats, **sample_stats, **update_stats, "sync_seconds": self.sync_weights(), "lr": lr}

    def sync_weights(self) -> float:
        """Make the backend generate with the updated policy; the seconds it took."""
        start = time.perf_counter()
        self.version += 1
        self.backend.sync(self.policy, self.version)
        return time.perf_counter() - start

    def evaluate(self) -> dict[str, float]:
        """Greedy pass@1 on the environment's held-out prompts, as `eval_*` metrics."""
        prompts = self.eval_env.prompts(n=self.cfg.env.eval_size, seed=self.cfg.train.seed, split="eval")
        prompts = list({p.id: p for p in prompts}.values())  # a set smaller than eval_size: each prompt once
        return {f"eval_{k}": v for k, v in self.rollout.evaluate(prompts, self.eval_env).items()}

    def sample_stats(self, groups: list[Group]) -> dict[str, float]:
        samples = [s for g in groups for s in g.samples]
        rewards = [s.reward for s in samples]
        lengths = [len(s.response_ids) for s in samples]
        stale = sum(sum(v < self.version for v in s.versions) for s in samples)
        mean = sum(rewards) / len(rewards)
        raw = [s.reward if s.env_reward is None else s.env_reward for s in samples]  # task accuracy, not length shaping
        env = self.env.metrics([s.prompt for s in samples], [s.response_text for s in samples], raw)
        return {**env, "reward_mean": mean, "reward_std": math.sqrt(sum((x - mean) ** 2 for x in rewards) / len(rewards)),
                "length_p50": percentile(lengths, 50), "length_p90": percentile(lengths, 90), "length_max": max(lengths),
                "truncated_fraction": sum(s.status is Status.TRUNCATED for s in samples) / len(samples),
                "trained_groups": len(groups), "off_policy_token_fraction": stale / max(sum(lengths), 1),
                "max_version_span": max((max(s.versions) - min(s.versions) for s in samples if s.versions), default=0)}

    # ---- state ----------------------------------------------------------------------------------
    def save(self) -> Path:
        state = {"step": self.step, "version": self.version, "update": self.update.state_dict(),
                 "rollout": self.rollout.state_dict()}
        return save_checkpoint(self.run_dir, self.step, self.policy, self.tokenizer, state, self.cfg.train.keep_checkpoints)

    def resume(self) -> bool:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            return False
        state = load_checkpoint(path, self.policy)  # (a damaged one: the CLI's one-line error, naming it)
        self.step, self.version = state["step"], state["version"]
        self.update.load_state_dict(state["update"])
        self.rollout.load_state_dict(state["rollout"])
        self.backend.sync(self.policy, self.version)  # a remote engine, or one holding its own copy, gets the weights
        self.logger.truncate_after(self.step)
        if self.console:
            print(f"resumed from {path} (step {self.step} of {self.cfg.train.steps})", file=sys.stderr, flush=True)
        return True

    def close(self) -> None:
        if self.eval_env is not self.env and hasattr(self.eval_env, "close"):
            self.eval_env.close()
        if self.scale is not None:
            self.scale.close()
        else:
            self.backend.close()
