"""`RolloutManager`: the rollout stage of the loop, training prompts in, scored groups out.

It owns the prompt stream, prompt encoding (the chat template; images too for a vision-language
policy), APRIL scheduling over a backend, scoring (the environment's reward, DAPO's overlong
shaping) and held-out greedy evaluation. It needs no trainer: the demo measures rollout throughput
with one, and a trainer holds one.

    backend = EngineBackend(LLMEngine(policy, tokenizer, engine_cfg))
    rollout = RolloutManager(backend, env, ChatEncoder(tokenizer, policy), RolloutConfig(prompts_per_step=8))
    groups, stats = rollout.collect(step=1, version=0)
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.envs.base import Environment, Prompt
from reasonrl.models.chat import ChatEncoder, ModelInput
from reasonrl.rl.advantages import overlong_penalty
from reasonrl.rl.metrics import percentile
from reasonrl.rollout.april import MAX_FAILURES, AprilRollout
from reasonrl.rollout.backend import RolloutBackend
from reasonrl.rollout.buffer import Group
from reasonrl.rollout.config import RolloutConfig
from reasonrl.rollout.prompts import PromptSource

CACHED = 2048
log = logging.getLogger(__name__)


class RolloutManager:
    def __init__(self, backend: RolloutBackend, env: Environment, encoder: ChatEncoder, cfg: RolloutConfig,
                 seed: int = 0):
        self.backend, self.env, self.encoder, self.cfg = backend, env, encoder, cfg
        self.tokenizer = encoder.tokenizer
        self.prompts = PromptSource(env, seed)
        self.april = AprilRollout(backend, cfg, self.prompts, self.encode, self.score, seed)
        self._inputs: OrderedDict[str, ModelInput] = OrderedDict()  # the most recently used, at most CACHED

    def collect(self, step: int, version: int) -> tuple[list[Group], dict[str, float]]:
        """One rollout phase: at least `prompts_per_step` finished, scored groups, and its metrics."""
        before = self.backend.stats()
        self.backend.prepare()
        groups, stats = self.april.collect(step, version)
        self.backend.release()
        metrics = {**stats.as_dict(), **self.april.buffer.stats(step)}
        after = self.backend.stats()
        return groups, {**metrics, **_spec_metrics(before, after), **_pool_metrics(after)}

    def evaluate(self, prompts: list[Prompt], env: Environment | None = None) -> dict[str, float]:
        """Greedy pass@1 on held-out prompts, through the same backend as the rollouts, scored by `env`
        (default: the training environment)."""
        env = self.env if env is None else env
        if not prompts:
            return {}
        self.backend.prepare()
        params = SamplingParams(temperature=0, max_tokens=self.cfg.max_tokens, detokenize=False)
        try:
            for i, p in enumerate(prompts):
                self.backend.submit(f"eval:{i}", self.encode(p), params, [], [])
            outs: dict = {}
            failures: dict[str, int] = {}
            while len(outs) < len(prompts):
                for key, out in self.backend.poll():
                    # not the model's answer (a failed step, an abort by someone else): ask again (greedy: the same one)
                    if out.finish_reason in ("error", "abort"):
                        self._retry_eval(key, prompts[int(key.split(":")[1])], params, failures, out.finish_reason)
                    else:
                        outs[key] = out
        except BaseException:  # nothing of this evaluation stays in the engine (and release can put it to sleep)
            self.backend.abort_all()
            raise
        finally:
            self.backend.release()
        ids = [outs[f"eval:{i}"].token_ids for i in range(len(prompts))]
        texts = [self._decode(t, env) for t in ids]
        rewards = env.rewards(prompts, texts)
        lengths = [len(t) for t in ids]
        return {**env.metrics(prompts, texts, rewards), "length_p50": percentile(lengths, 50),
                "length_p99": percentile(lengths, 99)}

    def _retry_eval(self, key: str, prompt: Prompt, params: SamplingParams, failures: dict[str, int],
                    reason: str = "error") -> None:
        """An evaluation request the backend failed (an engine step that raised, a server's 5xx) or
        aborted (another client's /v1/abort on a shared server) is submitted again, up to MAX_FAILURES
        times, then the evaluation raises; its partial answer is never scored."""
        n = failures[key] = failures.get(key, 0) + 1
        if n > MAX_FAILURES:
            raise RuntimeError(f"evaluation request {key}: the backend ended it {n} times (finish_reason {reason!r}), "
                               "giving up")
        log.warning("evaluation request %s: the backend %s it (%d of %d tries); submitting it again",
                    key, "aborted" if reason == "abort" else "failed", n, MAX_FAILURES)
        self.backend.submit(key, self.encode(prompt), params, [], [])

    def encode(self, prompt: Prompt) -> ModelInput:
        """The prompt as the policy takes it (token ids, or ids with images), built once per prompt id."""
        if prompt.id not in self._inputs:
            self._inputs[prompt.id] = self.encoder(prompt.messages)
            if len(self._inputs) > CACHED:  # image prompts hold their pixels: keep memory bounded
                self._inputs.popitem(last=False)
        self._inputs.move_to_end(prompt.id)
        return self._inputs[prompt.id]

    def score(self, group: Group) -> None:
        """Rewards of a finished group (the environment never raises on model output)."""
        for s in group.samples:
            s.response_text = self._decode(s.response_ids)
        rewards = self.env.rewards([group.prompt] * len(group.samples), [s.response_text for s in group.samples])
        for s, reward in zip(group.samples, rewards):
            s.reward = s.env_reward = reward
            if self.cfg.overlong_max:
                s.reward += overlong_penalty(len(s.response_ids), self.cfg.overlong_max, self.cfg.overlong_cache)

    def _decode(self, ids: list[int], env: Environment | None = None) -> str:
        env = self.env if env is None else env
        return self.tokenizer.decode(ids, skip_special_tokens=not env.special_tokens_in_responses)

    def state_dict(self) -> dict:
        return {"prompts": self.prompts.state_dict(), "april": self.april.state_dict(),
                "backend": self.backend.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.prompts.load_state_dict(state["prompts"])
        self.april.load_state_dict(state["april"])
        self.backend.load_state_dict(state["backend"])


POOL_METRICS = ("engines", "engine_deaths", "engine_restarts", "recovered_samples", "recovered_tokens")


def _pool_metrics(stats: dict[str, float]) -> dict[str, float]:
    """Ray's engine pool (scale/engine_pool.py): live engines, and cumulative deaths, restarts and
    the samples and tokens resumed on another engine after a death."""
    return {k: stats[k] for k in POOL_METRICS if k in stats}


def _spec_metrics(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Speculative decoding: tokens emitted per target forward during the phase (it falls as the
    policy moves away from the weights its draft was distilled against)."""
    if "spec_rounds" not in after:
        return {}
    rounds = after["spec_rounds"] - before.get("spec_rounds", 0)
    emitted = after["spec_emitted_tokens"] - before.get("spec_emitted_tokens", 0)
    return {"spec_accepted_length": emitted / max(rounds, 1)}
