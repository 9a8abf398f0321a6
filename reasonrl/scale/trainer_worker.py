"""`TrainerWorker`: one rank of the trainer group, the body of a trainer actor.

It holds a replica of the policy and a `PolicyUpdate` whose `parallel` is this rank's
`DataParallel`: every rank takes the same optimizer step (data_parallel.py). The driver keeps the
run's copy of the policy for checkpoints and weight syncs, and reads rank 0's weights after each
update.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from reasonrl.rl.config import RunConfig
from reasonrl.rl.update import PolicyUpdate
from reasonrl.rollout.sample import Sample
from reasonrl.scale.cluster import free_port, node_ip
from reasonrl.scale.data_parallel import DataParallel


class TrainerWorker:
    def __init__(self, cfg: RunConfig, rank: int, world: int, pad_id: int, device: str, threads: int):
        from reasonrl.models import load_model

        torch.set_num_threads(threads)
        self.cfg, self.rank, self.world, self.pad_id = cfg, rank, world, pad_id
        self.device = device  # on GPUs, Ray shows each actor only its own GPU: cuda:0
        self.policy = load_model(cfg.model.path, device, cfg.model.dtype, max_len=cfg.engine.max_model_len)
        self.update: PolicyUpdate | None = None

    def rendezvous(self) -> str:
        """Rank 0: the address where the group meets (this node, a port free now)."""
        return f"tcp://{node_ip()}:{free_port()}"

    def join(self, address: str) -> None:
        backend = "nccl" if self.device == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=address, rank=self.rank, world_size=self.world)
        torch.manual_seed(self.cfg.train.seed)
        self.update = PolicyUpdate(self.policy, self.cfg, self.pad_id, DataParallel(self.rank, self.world))

    def load(self, weights: dict[str, torch.Tensor], update_state: dict | None = None) -> None:
        """The driver's policy weights (and, on resume, the optimizer and schedule state)."""
        with torch.no_grad():
            for name, tensor in self.policy.state_dict().items():
                tensor.copy_(weights[name])
        if update_state is not None:
            self.update.load_state_dict(update_state)

    def train(self, batch: tuple[list[Sample], list[float]], version: int) -> dict[str, float]:
        samples, advantages = batch
        return self.update(samples, advantages, version)

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.policy.state_dict().items()}

    def join_broadcast(self, address: str, world: int) -> None:
        """Join the weight-broadcast group to the engines as its sender, rank 0 (weight_sync.py)."""
        from reasonrl.scale.weight_sync import WeightBroadcast

        self.broadcast = WeightBroadcast(address, 0, world, self.device)

    def broadcast_weights(self) -> None:
        self.broadcast.send(self.policy.state_dict())

    def lr(self) -> float:
        return self.update.lr()

    def state_dict(self) -> dict:
        return self.update.state_dict()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
