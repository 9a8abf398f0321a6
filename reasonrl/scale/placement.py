"""`scale_out`: the Ray parts of a run, built from its `cluster:` section (the Trainer's only entry here)."""

from __future__ import annotations

from reasonrl.models.loader import rollout_dtype
from reasonrl.models.model import DecoderLM
from reasonrl.rl.config import RunConfig
from reasonrl.rl.update import adam_state_bytes
from reasonrl.rollout.backend import RolloutBackend
from reasonrl.scale.cluster import Cluster
from reasonrl.scale.engine_pool import EnginePool
from reasonrl.scale.trainer_group import TrainerGroup


class ScaleOut:
    """A run's cluster, its engine actors (the rollout backend) and its trainer group (the update)."""

    def __init__(self, cfg: RunConfig, policy: DecoderLM, pad_id: int, backend: RolloutBackend | None = None):
        self.cluster = Cluster(cfg.cluster)
        try:
            if cfg.cluster.weight_sync == "broadcast" and cfg.cluster.placement == "colocated" and self.cluster.use_gpus:
                raise ValueError("cluster.weight_sync: broadcast cannot run colocated on GPUs (NCCL cannot join two "
                                 "processes on one GPU); use object_store, or the disaggregated placement")
            self.backend = backend or EnginePool(self.cluster, cfg.model.path, cfg.engine,
                                                 rollout_dtype(cfg.rollout.dtype, cfg.model.dtype),
                                                 reserve_bytes=trainer_rank_bytes(policy, cfg, self.cluster.device))
            self.update = TrainerGroup(self.cluster, policy, cfg, pad_id)
            if cfg.cluster.weight_sync == "broadcast" and isinstance(self.backend, EnginePool):
                self.backend.source = self.update.workers[0]  # rank 0 sends, every engine receives
        except BaseException:
            self.cluster.close()
            raise

    def close(self) -> None:
        self.update.close()
        self.backend.close()
        self.cluster.close()


def trainer_rank_bytes(policy: DecoderLM, cfg: RunConfig, device: str) -> int:
    """Device bytes a trainer rank colocated with an engine on a GPU allocates after the engines start:
    its weights (the driver's `policy` is in the trained dtype) and AdamW's two moments per trainable
    weight, a rank's share of them under FSDP, though never less than the whole weights it loads before
    sharding them; plus a whole frozen reference copy with train.reference_model. Gradients are freed
    after each update. 0 where no trainer shares an engine's GPU."""
    if cfg.cluster.placement != "colocated" or device != "cuda":
        return 0
    weights = sum(p.numel() * p.element_size() for p in policy.parameters())
    steady = weights + adam_state_bytes(policy)
    if cfg.cluster.fsdp:
        steady = max(weights, steady // cfg.cluster.trainers)
    return steady + (weights if cfg.train.reference_model else 0)
