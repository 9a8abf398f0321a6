"""`TrainerGroup`: the policy update of a step on M trainer ranks, behind `PolicyUpdate`'s interface.

    driver: samples + advantages -> object store -> every rank updates its share, gradients
    all-reduced (data_parallel.py) -> rank 0's new weights -> the driver's policy

The driver's policy stays the run's reference copy: the trainer checkpoints it and syncs it to the
engines exactly as in a single process. A resumed run pushes the restored weights and optimizer
state to every rank (`load_state_dict`).
"""

from __future__ import annotations

import time

import torch

from reasonrl.models.model import DecoderLM
from reasonrl.rl.config import RunConfig
from reasonrl.rollout.sample import Sample
from reasonrl.scale.cluster import Cluster
from reasonrl.scale.trainer_worker import TrainerWorker


class TrainerGroup:
    def __init__(self, cluster: Cluster, policy: DecoderLM, cfg: RunConfig, pad_id: int):
        self.ray, self.policy = cluster.ray, policy
        world, actor = cluster.cfg.trainers, self.ray.remote(TrainerWorker)
        fsdp = cluster.cfg.fsdp if cluster.cfg.fsdp is not None else cluster.use_gpus
        self.workers = [actor.options(**cluster.options("trainer", rank)).remote(
            cfg, rank, world, pad_id, cluster.device, cluster.cfg.trainer_threads, fsdp) for rank in range(world)]
        address = self.ray.get(self.workers[0].rendezvous.remote())
        self.ray.get([w.join.remote(address) for w in self.workers])
        self._push()

    def _push(self, update_state: dict | None = None) -> None:
        weights = self.ray.put({k: v.detach().cpu() for k, v in self.policy.state_dict().items()})
        self.ray.get([w.load.remote(weights, update_state) for w in self.workers])
        self.ray.get([w.weights.remote() for w in self.workers])  # rank 0 holds what a broadcast sends

    def __call__(self, samples: list[Sample], advantages: list[float], version: int) -> dict[str, float]:
        batch = self.ray.put((samples, advantages))
        stats = self.ray.get([w.train.remote(batch, version) for w in self.workers])[0]
        start = time.perf_counter()
        weights = self.ray.get([w.weights.remote() for w in self.workers])[0]  # a collective when sharded
        with torch.no_grad():
            for name, tensor in self.policy.state_dict().items():
                tensor.copy_(weights[name])
        return {**stats, "trainer_ranks": len(self.workers), "weights_to_driver_seconds": time.perf_counter() - start}

    def lr(self) -> float:
        return self.ray.get(self.workers[0].lr.remote())

    def skip(self) -> None:
        """A training step without an update, on every rank (PolicyUpdate.skip)."""
        self.ray.get([w.skip.remote() for w in self.workers])

    def state_dict(self) -> dict:
        return self.ray.get([w.state_dict.remote() for w in self.workers])[0]

    def load_state_dict(self, state: dict) -> None:
        """Resume: the driver's restored policy and `state` (optimizer, schedule) on every rank."""
        self._push(state)

    def close(self) -> None:
        self.ray.get([w.close.remote() for w in self.workers])
        for w in self.workers:
            self.ray.kill(w)
