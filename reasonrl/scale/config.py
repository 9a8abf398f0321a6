"""`ClusterConfig`: where a run's roles go on a Ray cluster (the `cluster:` section of a recipe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reasonrl.config import check


@dataclass(slots=True)
class ClusterConfig:
    ray: bool = False
    """Place rollout engines and the trainer on a Ray cluster (`reasonrl train RECIPE --ray`); off: one process."""
    address: str | None = None
    """Ray cluster to join (`auto`, or host:port of its head); none: the one this process joined, else a new local one."""
    engines: int = 2
    """Rollout engine actors, each a full LLMEngine (one GPU each on GPUs)."""
    trainers: int = 1
    """Processes of the trainer group (torch.distributed data parallel: gloo on CPU, NCCL on GPUs)."""
    placement: Literal["disaggregated", "colocated"] = "disaggregated"
    """disaggregated: engines and trainers on their own devices; colocated: engine i and trainer rank i
    share one device and the engines free their KV cache while the trainer runs."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Devices of the actors; auto: a GPU each when the cluster has GPUs, else CPU threads."""
    engine_threads: int = 1
    """CPU threads (torch intra-op) of each engine actor, and the CPUs Ray reserves for it."""
    trainer_threads: int = 1
    """CPU threads of each trainer rank, and the CPUs Ray reserves for it."""
    fsdp: bool | None = None
    """Shard the trainer ranks' parameters, gradients and optimizer state with FSDP2 (fully_shard per decoder
    layer); none: on with GPUs, off on CPU (every rank then holds a replica and gradients are all-reduced)."""
    weight_sync: Literal["object_store", "broadcast"] = "object_store"
    """How new weights reach the engines: one copy in Ray's shared-memory object store that every engine
    reads, or a torch.distributed broadcast from the driver to all engines (gloo on CPU, NCCL on GPUs)."""
    placement_timeout: float = 600.0
    """Seconds to wait for the cluster to grant every bundle before giving up with what it lacks."""
    restart_engines: bool = True
    """Replace an engine actor that dies (with the current weights); its samples resume elsewhere either way."""

    def __post_init__(self):
        check(self.engines >= 1, "cluster.engines", f"must be >= 1, got {self.engines}")
        check(self.trainers >= 1, "cluster.trainers", f"must be >= 1, got {self.trainers}")
        check(self.engine_threads >= 1, "cluster.engine_threads", f"must be >= 1, got {self.engine_threads}")
        check(self.trainer_threads >= 1, "cluster.trainer_threads", f"must be >= 1, got {self.trainer_threads}")
        check(self.placement_timeout > 0, "cluster.placement_timeout",  # Ray aborts the process on a negative wait
              f"must be > 0 seconds, got {self.placement_timeout}")
