"""Where rollouts run, behind one interface: the in-process engine, an inference server over HTTP
(`remote.py`: reasonrl serve, SGLang, vLLM), and engine actors on a Ray cluster (reasonrl/scale/).

The APRIL manager speaks `submit` / `poll` / `abort_all`; the trainer speaks `prepare` and
`release` around each rollout phase, `sync` after each update, `stats` and `state_dict` for its
metrics and checkpoints. Neither knows which backend it has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace

from reasonrl.engine.config import EngineConfig
from reasonrl.engine.latent import Latents
from reasonrl.engine.llm_engine import LLMEngine, default_kv_budget
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.sequence import CompletionOutput
from reasonrl.models.loader import generation_model
from reasonrl.models.model import DecoderLM
from reasonrl.models.tokenizer import Tokenizer
from reasonrl.rollout.config import RolloutConfig

Finished = tuple[str, CompletionOutput]


class RolloutBackend(ABC):
    @abstractmethod
    def submit(self, key: str, prompt_ids: list[int], params: SamplingParams,
               output_ids: list[int], output_logprobs: list[float], output_latents: Latents | None = None) -> None:
        """Start a sample, or resume one from its partial tokens and their behaviour log-probs (and,
        in LVR latent mode, its latents: only the in-process engine runs latent mode)."""

    @abstractmethod
    def poll(self) -> list[Finished]:
        """Samples that finished since the last poll (may wait briefly for one)."""

    @abstractmethod
    def abort_all(self) -> list[Finished]:
        """Stop every request now; each comes back with what it had produced."""

    @property
    @abstractmethod
    def num_running(self) -> int:
        """Samples being generated right now."""

    @abstractmethod
    def sync(self, policy: DecoderLM, version: int) -> None:
        """Generate with `policy`'s current weights (policy version `version`) from now on."""

    def prepare(self) -> None:
        """Before a rollout phase (e.g. reallocate a KV cache released for training)."""

    def release(self) -> None:
        """After a rollout phase, with no request in flight (e.g. give the KV memory to training)."""

    def stats(self) -> dict[str, float]:
        """The engine's counters (cumulative), as `LLMEngine.stats()` names them."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def close(self) -> None:
        pass


class EngineBackend(RolloutBackend):
    """An `LLMEngine` in this process. Colocated with the trainer it shares the policy's weights (no
    copy at sync, only the prefix cache is reset), or holds them cast to another dtype (copied at
    sync), and frees its KV cache while training runs."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine

    def submit(self, key, prompt_ids, params, output_ids, output_logprobs, output_latents=None) -> None:
        resume = {"output_ids": output_ids, "output_logprobs": output_logprobs} if output_ids else {}
        if output_ids and output_latents is not None:
            resume["output_latents"] = output_latents
        self.engine.add_request(key, prompt_ids, params, **resume)

    def poll(self) -> list[Finished]:
        return [(o.request_id, o.outputs[0]) for o in self.engine.step() if o.finished]

    def abort_all(self) -> list[Finished]:
        return [(o.request_id, o.outputs[0]) for o in self.engine.abort_all()]

    @property
    def num_running(self) -> int:
        return int(self.engine.stats()["running"])

    def sync(self, policy: DecoderLM, version: int) -> None:
        if self.engine.model is policy:  # colocated: the engine already holds the new weights
            self.engine.reset_prefix_cache()
        else:
            self.engine.set_weights(policy.state_dict())

    def prepare(self) -> None:
        self.engine.wake()

    def release(self) -> None:
        self.engine.sleep()

    def stats(self) -> dict[str, float]:
        return self.engine.stats()

    def state_dict(self) -> dict:
        return self.engine.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:  # a checkpoint from Ray's engine pool or a remote server carries no engine state
            self.engine.load_state_dict(state)


def make_backend(cfg: RolloutConfig, engine_cfg: EngineConfig, policy: DecoderLM, tokenizer: Tokenizer,
                 sync_dir, model_path: str, train_state_bytes: int = 0) -> RolloutBackend:
    """The backend a run's `rollout` section asks for: remote endpoints (weights pushed through
    `sync_dir`; several: a `RemotePool`), else an engine in this process on the policy's weights, or
    on a copy of them in `rollout.dtype` (`generation_model`; `model_path` names the architecture).
    `train_state_bytes`: what the trainer beside it allocates later (its optimizer state), kept out of
    a GPU engine's default KV budget, which is what is free when the engine starts."""
    if cfg.remote_url:
        from reasonrl.rollout.remote import RemoteBackend, api_key_from_env

        servers = [RemoteBackend(url.strip(), sync_dir=sync_dir, tokenizer=tokenizer, engine=cfg.remote_engine,
                                 api_key=api_key_from_env(cfg.remote_api_key_env)) for url in cfg.remote_url.split(",")]
        if len(servers) == 1:
            return servers[0]
        from reasonrl.rollout.remote_pool import RemotePool

        return RemotePool(servers)
    model = generation_model(policy, model_path, cfg.dtype, engine_cfg.max_model_len)
    return EngineBackend(LLMEngine(model, tokenizer, beside_trainer(engine_cfg, model.device, train_state_bytes)))


def beside_trainer(engine_cfg: EngineConfig, device, train_state_bytes: int) -> EngineConfig:
    """`engine_cfg` for an engine that shares its GPU with a trainer: the default KV budget (what is
    free now, up to gpu_memory_utilization) less the `train_state_bytes` the trainer allocates after
    the engine starts. Without it the cache, released for each update and allocated again at the
    next rollout, no longer fits once the optimizer's state exists."""
    if not train_state_bytes or engine_cfg.kv_cache_memory is not None or device.type != "cuda":
        return engine_cfg
    budget = default_kv_budget(engine_cfg, device) - train_state_bytes
    if budget <= 0:
        raise ValueError(f"no room for the KV cache on {device}: the trainer beside the engine will allocate "
                         f"{train_state_bytes / 2**30:.1f} GiB (its optimizer state; on Ray its weights too) of what "
                         f"engine.gpu_memory_utilization ({engine_cfg.gpu_memory_utilization}) leaves; raise it, or "
                         "set engine.kv_cache_memory")
    return replace(engine_cfg, kv_cache_memory=budget)

