"""`TrainerWorker`: one rank of the trainer group, the body of a trainer actor.

It holds the policy (a replica, or with FSDP2 a shard of it) and a `PolicyUpdate` whose `parallel`
is this rank's `DataParallel`: together the ranks take the optimizer step one process would
(data_parallel.py). The driver keeps the run's copy of the policy for checkpoints and weight syncs
and reads the full weights after each update; with FSDP2 gathering them, and the full optimizer
state for a checkpoint, are collectives, so every rank is called and rank 0 answers. Optimizer
state travels in the single-process format (parameter indices), so a checkpoint resumes with or
without Ray, sharded or not.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from reasonrl.rl.config import RunConfig
from reasonrl.rl.update import PolicyUpdate, resume_optimizer
from reasonrl.rollout.sample import Sample
from reasonrl.scale.cluster import free_port, node_ip
from reasonrl.scale.data_parallel import DataParallel


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _shard(policy: torch.nn.Module) -> None:
    """FSDP2: each decoder layer, then the rest. Its reduce-scatter averages gradients over ranks
    (`DataParallel.reduce_gradients` turns the mean back into the sum)."""
    from torch.distributed.fsdp import fully_shard

    for layer in getattr(policy, "layers", []):
        fully_shard(layer)
    fully_shard(policy)


def _by_index(state: dict, names: list[str]) -> dict:
    """A full optimizer state keyed by parameter name -> keyed by index, as `optimizer.state_dict()` is."""
    index = {n: i for i, n in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def _by_name(state: dict, names: list[str]) -> dict:
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {names[int(i)]: v for i, v in state["state"].items()}, "param_groups": groups}


class TrainerWorker:
    def __init__(self, cfg: RunConfig, rank: int, world: int, pad_id: int, device: str, threads: int,
                 fsdp: bool = False):
        from reasonrl.models import load_model
        from reasonrl.models.loader import MASTER_DTYPE

        torch.set_num_threads(threads)
        self.cfg, self.rank, self.world, self.pad_id = cfg, rank, world, pad_id
        self.device, self.fsdp = device, fsdp  # on GPUs, Ray shows each actor only its own GPU: cuda:0
        self.policy = load_model(cfg.model.path, device, cfg.model.dtype or MASTER_DTYPE, max_len=cfg.engine.max_model_len)
        self.update: PolicyUpdate | None = None

    def rendezvous(self) -> str:
        """Rank 0: the address where the group meets (this node, a port free now)."""
        return f"tcp://{node_ip()}:{free_port()}"

    def join(self, address: str) -> None:
        backend = "nccl" if self.device == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=address, rank=self.rank, world_size=self.world)
        torch.manual_seed(self.cfg.train.seed)
        if self.fsdp:
            _shard(self.policy)
        parallel = DataParallel(self.rank, self.world, sharded=self.fsdp, device=self.device)
        self.update = PolicyUpdate(self.policy, self.cfg, self.pad_id, parallel)

    def load(self, weights: dict[str, torch.Tensor], update_state: dict | None = None) -> None:
        """The driver's policy weights (and, on resume, the optimizer and schedule state)."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.policy, weights, options=_options())
        if update_state is not None:
            self._load_update(update_state)

    def train(self, batch: tuple[list[Sample], list[float]], version: int) -> dict[str, float]:
        samples, advantages = batch
        return self.update(samples, advantages, version)

    def weights(self) -> dict[str, torch.Tensor]:
        """Rank 0: the full weights on CPU; the other ranks take part in gathering them and return {}."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(self.policy, options=_options())
        self.full = full if self.rank == 0 else {}  # what broadcast_weights sends
        return self.full

    def join_broadcast(self, address: str, world: int, dtypes: dict[str, torch.dtype]) -> None:
        """Join the weight-broadcast group to the engines as its sender, rank 0 (weight_sync.py).
        `dtypes`: the engines' dtype of every tensor (rollout.dtype, e.g. bfloat16 beside these float32
        master weights), which the broadcast's buckets are laid out in."""
        from reasonrl.scale.weight_sync import WeightBroadcast

        self.broadcast, self.engine_dtypes = WeightBroadcast(address, 0, world, self.device), dtypes

    def broadcast_weights(self) -> None:
        """Send the weights of the last update (gathered by `weights()`) to the engines, in their dtype."""
        self.broadcast.send({k: v.to(self.device, self.engine_dtypes[k]) for k, v in self.full.items()})

    def lr(self) -> float:
        return self.update.lr()

    def skip(self) -> None:
        self.update.skip()

    def state_dict(self) -> dict:
        """The update's state with the optimizer's in the single-process format (every rank calls it)."""
        state = self.update.state_dict()
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            full = get_optimizer_state_dict(self.policy, self.update.optimizer, options=_options())
            if self.rank != 0:  # took part in the gather; rank 0 answers
                return {}
            state["optimizer"] = _by_index(full, self._names())
        return state

    def _load_update(self, state: dict) -> None:
        if not self.fsdp:
            return self.update.load_state_dict(state)
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        resume_optimizer(self.update.optimizer, self.update.scheduler,
                         lambda: set_optimizer_state_dict(self.policy, self.update.optimizer,
                                                          _by_name(state["optimizer"], self._names()), options=_options()),
                         state["scheduler"])
        if "shuffle" in state:
            self.update.shuffle.set_state(state["shuffle"])

    def _names(self) -> list[str]:
        return [n for n, p in self.policy.named_parameters() if p.requires_grad]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
