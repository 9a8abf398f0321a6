"""`reasonrl bench scale`: rollout throughput with 1 and 2 engine actors on Ray, and the time of a
weight sync (object store and collective broadcast), measured in one run.

Workload: `requests` prompts (random token ids, fixed seed) sampled at temperature 1 for exactly
`max_tokens` tokens each (EOS ignored, so every arm does the same work), through `EnginePool`
(the rollout backend of `reasonrl train --ray`). Each engine actor runs one torch thread. The arms
alternate `repeats` times; the medians are reported, and their ratio is the scale-out speedup
(target: >= 1.6x with two engines). Actor start-up and a warm-up rollout are not timed. Weight
sync: `syncs` pushes of the policy to both engines, through Ray's object store, then by a gloo
(CPU) / NCCL (GPU) broadcast from a trainer rank.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

from reasonrl.demo.policy import SHIPPED


@dataclass
class ScaleBenchConfig:
    model: str = str(SHIPPED)
    """Checkpoint each engine actor loads (default: the embedded demo policy)."""
    requests: int = 32
    """Prompts per rollout."""
    prompt_tokens: int = 32
    """Tokens per prompt."""
    max_tokens: int = 128
    """Tokens generated per prompt (EOS ignored)."""
    max_num_seqs: int = 16
    """Sequences each engine batches at once."""
    repeats: int = 3
    """Rollouts per arm (alternating); medians reported."""
    syncs: int = 5
    """Weight syncs timed per path."""
    address: str | None = None
    """Ray cluster to join (none: start a local one with 3 CPUs: two engine actors and a trainer rank)."""

    def __post_init__(self):
        for name in ("requests", "prompt_tokens", "max_tokens", "max_num_seqs", "repeats", "syncs"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


def rollout(pool, prompts: list[list[int]], max_tokens: int) -> tuple[int, float]:
    """Generate every prompt to its end through the pool; (tokens generated, seconds)."""
    from reasonrl.engine.sampling_params import SamplingParams

    start = time.perf_counter()
    for i, ids in enumerate(prompts):
        params = SamplingParams(temperature=1.0, seed=i, max_tokens=max_tokens, ignore_eos=True, detokenize=False)
        pool.submit(f"r{i}", ids, params, [], [])
    done: dict = {}
    while len(done) < len(prompts):
        done.update(pool.poll())
    return sum(len(o.token_ids) for o in done.values()), time.perf_counter() - start


def bench_scale(cfg: ScaleBenchConfig) -> dict:
    from reasonrl.engine.config import EngineConfig
    from reasonrl.models import load_model
    from reasonrl.scale.cluster import Cluster, import_ray
    from reasonrl.scale.config import ClusterConfig
    from reasonrl.scale.engine_pool import EnginePool
    from reasonrl.scale.trainer_group import TrainerGroup
    from reasonrl.rl.config import load_config

    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=cfg.address, num_cpus=None if cfg.address else 3, include_dashboard=False)
    policy = load_model(cfg.model)
    rng = random.Random(0)
    vocab = policy.config.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(cfg.prompt_tokens)] for _ in range(cfg.requests)]
    engine_cfg = EngineConfig(kv_cache_memory=1 << 28, max_num_seqs=cfg.max_num_seqs)
    cluster = Cluster(ClusterConfig(ray=True, engines=2, trainers=1))
    try:
        runs: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(cfg.repeats):  # the arms alternate: a busy machine slows both alike
            for n in (1, 2):
                pool = EnginePool(cluster, cfg.model, engine_cfg, engines=n)
                rollout(pool, prompts[:2], 4)  # wait for the actors to load, warm up
                tokens, seconds = rollout(pool, prompts, cfg.max_tokens)
                runs[n].append(tokens / seconds)
                pool.close()
        pool = EnginePool(cluster, cfg.model, engine_cfg)
        rollout(pool, prompts[:2], 4)
        sync = {"object_store": _time_syncs(pool, policy, cfg.syncs)}
        group = TrainerGroup(cluster, policy, load_config(None, {"model.path": cfg.model}), 0)
        pool.source = group.workers[0]
        sync["broadcast"] = _time_syncs(pool, policy, cfg.syncs)
        group.close()
        pool.close()
    finally:
        cluster.close()
        if started:
            ray.shutdown()
    one, two = statistics.median(runs[1]), statistics.median(runs[2])
    nbytes = sum(t.numel() * t.element_size() for t in policy.state_dict().values())
    return {"workload": "scale", "device": _device(), "model": cfg.model, "parameters_bytes": nbytes,
            "requests": cfg.requests, "max_tokens": cfg.max_tokens, "engine_threads": 1,
            "tokens_per_s": {"1_engine": one, "2_engines": two}, "speedup_2_vs_1": two / one,
            "runs_tokens_per_s": {f"{n}_engine{'s' if n > 1 else ''}": r for n, r in runs.items()},
            "weight_sync_seconds": sync, "target_speedup": 1.6}


def _time_syncs(pool, policy, n: int) -> float:
    """Median seconds to make every engine of `pool` serve `policy`'s weights."""
    times = []
    for version in range(1, n + 1):
        start = time.perf_counter()
        pool.sync(policy, version)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _device() -> str:
    import os
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU {platform.processor() or platform.machine()}, {cores} cores, one thread per engine actor"
