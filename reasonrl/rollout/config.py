"""`RolloutConfig`: how prompts become scored groups of samples (the `rollout:` section of a recipe)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from reasonrl.config import check, check_template_kwargs


@dataclass(slots=True)
class RolloutConfig:
    prompts_per_step: int = 8
    """Prompt groups trained on per step (N)."""
    samples_per_prompt: int = 8
    """Responses per prompt (G): the group GRPO normalises within."""
    over_provision: float = 1.0
    """APRIL: launch ceil(N * ratio) groups, stop once N have finished, keep the rest's partial
    responses for the next step. 1.0 = plain synchronous rollout."""
    max_tokens: int = 256
    """Response tokens per sample, resumed tokens included."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (the trainer's log-probs use the same)."""
    top_p: float = 1.0
    """Nucleus sampling of the rollouts (keep 1.0 for RL: the log-probs are of the full distribution)."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """The dtype rollouts are generated in (the engine's weights and KV cache). None: as loading for
    inference does, float32 on CPU, the checkpoint's own dtype on a GPU; bfloat16/float16 trained
    weights (model.dtype) roll out in their own dtype. Where it is not the trained weights' (float32
    master weights by default), the in-process engine generates with a copy of the policy in it, cast
    from the trained weights after every update (one more copy of the weights in memory, half their
    size in bfloat16); Ray engine actors load the checkpoint in it. The trainer recomputes the
    log-probs it trains on, so the engine's precision enters only through loss.off_policy tis or
    decoupled, and is logged as `logprob_mismatch`."""
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Variables for the chat template in rollouts and evaluation ({enable_thinking: false}: Qwen3's
    non-thinking mode)."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and launch more until N groups remain."""
    max_groups_per_step: int = 0
    """With dynamic sampling, give up filling the step after launching this many groups (0: 8 N)."""
    overlong_max: int = 0
    """DAPO overlong shaping: penalise responses longer than overlong_max - overlong_cache (0: off)."""
    overlong_cache: int = 0
    """DAPO overlong shaping: the length of the soft-penalty band before overlong_max."""
    remote_url: str | None = None
    """Roll out on a server (http://host:port) instead of the in-process engine, or on several
    (comma-separated: each request goes to the one with the fewest outstanding tokens); weights are
    pushed to them after every update."""
    remote_engine: Literal["reasonrl", "sglang", "vllm"] = "reasonrl"
    """With remote_url: the server's kind, whose routes generate, abort and load weights (rollout/dialects.py
    lists them per engine and version; vLLM cannot take pushed weights, so it cannot serve RL rollouts)."""
    remote_api_key_env: str = "REASONRL_ADMIN_KEY"
    """With remote_url: the environment variable holding the server's admin key (pushing weights and
    aborting are administrative); unset, REASONRL_API_KEY is used; neither set: no key is sent."""

    def __post_init__(self):
        try:
            check_template_kwargs(self.chat_template_kwargs, "chat_template_kwargs")
        except ValueError as exc:
            check(False, "rollout.chat_template_kwargs", str(exc).removeprefix("chat_template_kwargs "))
        check(self.prompts_per_step >= 1, "rollout.prompts_per_step", f"must be >= 1, got {self.prompts_per_step}")
        check(self.samples_per_prompt >= 1, "rollout.samples_per_prompt", f"must be >= 1, got {self.samples_per_prompt}")
        check(self.over_provision >= 1.0, "rollout.over_provision",
              f"must be >= 1.0 (1.0 = synchronous), got {self.over_provision}")
        check(self.max_tokens >= 1, "rollout.max_tokens", f"must be >= 1, got {self.max_tokens}")
        check(self.temperature > 0, "rollout.temperature",
              f"must be > 0 for RL (log-probs of sampled tokens), got {self.temperature}")
        check(0 < self.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {self.top_p}")
        check(self.max_groups_per_step >= 0, "rollout.max_groups_per_step", f"must be >= 0, got {self.max_groups_per_step}")
        at_once = math.ceil(self.prompts_per_step * self.over_provision)
        check(not self.dynamic_sampling or not self.max_groups_per_step or self.max_groups_per_step >= at_once,
              "rollout.max_groups_per_step", f"must be at least the groups a step launches at once, "
              f"ceil(prompts_per_step x over_provision) = {at_once}, got {self.max_groups_per_step}")
        check(self.overlong_max == 0 or 0 < self.overlong_cache <= self.overlong_max, "rollout.overlong_cache",
              "must be in (0, overlong_max] when overlong_max is set")
        urls = [] if self.remote_url is None else [u.strip() for u in self.remote_url.split(",")]
        check(all(u.startswith(("http://", "https://")) for u in urls), "rollout.remote_url",
              f"must be http:// or https:// URLs (comma-separated), got {self.remote_url!r}")

    @property
    def group_budget(self) -> int:
        """Groups one step may launch at most under dynamic sampling."""
        return self.max_groups_per_step or 8 * self.prompts_per_step
