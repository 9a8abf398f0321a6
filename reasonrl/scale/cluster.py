"""Joining or starting a Ray cluster, and placing a run's roles on it.

One placement group holds every role's bundle, so a run either gets all its resources or waits:

    disaggregated   [engine 0] ... [engine N-1] [trainer 0] ... [trainer M-1]
    colocated       [engine 0 + trainer 0] [engine 1 + trainer 1] ...   (max(N, M) bundles)

A colocated bundle is one device (a GPU, or `engine_threads + trainer_threads` CPUs) that the
engine and the trainer rank split in half; the engine frees its KV cache while the trainer runs
(`EnginePool.release`). Actors are created with `options(**cluster.slot(role, i))`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from reasonrl.scale.config import ClusterConfig

INSTALL = "pip install 'reasonrl[ray]'"


def import_ray():
    """The `ray` module, or an error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"cluster.ray (reasonrl train --ray) needs Ray, an optional dependency: {INSTALL}") from None
    return ray


def free_port() -> int:
    """A TCP port free on this host now (for a torch.distributed rendezvous; never a fixed number)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    return import_ray().util.get_node_ip_address()


@dataclass
class Slot:
    """Resources one actor asks for (Ray's units: CPUs, GPUs) on one bundle."""
    bundle: int
    cpus: float
    gpus: float


class Cluster:
    """A Ray connection and the placement group of one run (close() gives both back)."""

    def __init__(self, cfg: ClusterConfig):
        self.ray = ray = import_ray()
        self.cfg = cfg
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(address=cfg.address, include_dashboard=False, log_to_driver=True, **self._local_resources())
        self.use_gpus = cfg.device == "cuda" or (cfg.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
        bundles = self._bundles()
        self.group = ray.util.placement_group(bundles, strategy="PACK")
        try:
            ray.get(self.group.ready(), timeout=cfg.placement_timeout)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(self.group)
            raise RuntimeError(f"the Ray cluster cannot place this run's {len(bundles)} bundles {bundles} within "
                               f"{cfg.placement_timeout:.0f} s (it has {ray.available_resources()}): lower "
                               "cluster.engines / cluster.trainers or add nodes") from None

    def _local_resources(self) -> dict:
        """A cluster started here: as many logical CPUs as the run reserves, at least one per core (a
        reservation, not a thread count: two engines with one thread each fit a 2-core machine)."""
        if self.cfg.address is not None:
            return {}
        c = self.cfg
        if c.placement == "colocated":  # each bundle holds an engine's threads and a trainer's (_bundles)
            need = max(c.engines, c.trainers) * (c.engine_threads + c.trainer_threads)
        else:
            need = c.engines * c.engine_threads + c.trainers * c.trainer_threads
        return {"num_cpus": max(os.cpu_count() or 1, need)}

    def _bundles(self) -> list[dict[str, float]]:
        c, gpu = self.cfg, 1.0 if self.use_gpus else 0.0
        if c.placement == "colocated":
            one = {"CPU": float(c.engine_threads + c.trainer_threads), **({"GPU": gpu} if gpu else {})}
            return [dict(one) for _ in range(max(c.engines, c.trainers))]
        engine = {"CPU": float(c.engine_threads), **({"GPU": gpu} if gpu else {})}
        trainer = {"CPU": float(c.trainer_threads), **({"GPU": gpu} if gpu else {})}
        return [dict(engine) for _ in range(c.engines)] + [dict(trainer) for _ in range(c.trainers)]

    def slot(self, role: str, index: int) -> Slot:
        """Where actor `index` of `role` ("engine" or "trainer") goes."""
        c, gpu = self.cfg, 1.0 if self.use_gpus else 0.0
        threads = c.engine_threads if role == "engine" else c.trainer_threads
        if c.placement == "colocated":
            return Slot(index, float(threads), gpu / 2)
        return Slot(index if role == "engine" else c.engines + index, float(threads), gpu)

    def options(self, role: str, index: int) -> dict:
        """Ray actor options placing actor `index` of `role` on its bundle."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        s = self.slot(role, index)
        strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=s.bundle)
        return {"num_cpus": s.cpus, "num_gpus": s.gpus, "scheduling_strategy": strategy}

    @property
    def device(self) -> str:
        return "cuda" if self.use_gpus else "cpu"

    def close(self) -> None:
        self.ray.util.remove_placement_group(self.group)
        if self.started:
            self.ray.shutdown()
