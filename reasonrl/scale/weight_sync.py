"""`WeightBroadcast`: new weights from trainer rank 0 to every engine in one collective broadcast.

The group is standalone (its own TCP store, not torch.distributed's default group, which the
trainer ranks already use for gradients): rank 0 is the trainer that sends, ranks 1..N the engines.
NCCL when the actors hold GPUs (GPU to GPU, no host copy), gloo on CPU. Tensors travel in flat
buckets of one dtype; a receiver knows the layout from its own copy of the architecture (same
names, shapes and order), so no metadata is sent. The object-store path (engine_pool.py) needs no
group and is what a replaced engine loads.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import torch
import torch.distributed as dist

BUCKET_BYTES = 256 << 20


def buckets(tensors: dict[str, torch.Tensor], limit: int = BUCKET_BYTES) -> Iterator[list[str]]:
    """Names in state-dict order, cut into runs of one dtype and at most `limit` bytes (or one tensor)."""
    run: list[str] = []
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if run and (t.dtype != tensors[run[0]].dtype or size + nbytes > limit):
            yield run
            run, size = [], 0
        run.append(name)
        size += nbytes
    if run:
        yield run


class WeightBroadcast:
    def __init__(self, address: str, rank: int, world: int, device: str, timeout_s: float = 120.0):
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        timeout = datetime.timedelta(seconds=timeout_s)
        self.store = dist.TCPStore(host, int(port), world, rank == 0, timeout=timeout)
        cls = dist.ProcessGroupNCCL if device == "cuda" else dist.ProcessGroupGloo
        self.group = cls(self.store, rank, world, timeout) if device != "cuda" else cls(self.store, rank, world)
        self.rank = rank

    def _broadcast(self, flat: torch.Tensor) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self.group.broadcast([flat], opts).wait()

    def send(self, tensors: dict[str, torch.Tensor]) -> None:
        """Rank 0: broadcast `tensors` (a state dict)."""
        with torch.no_grad():
            for names in buckets(tensors):
                self._broadcast(torch.cat([tensors[n].detach().reshape(-1) for n in names]))

    def receive(self, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Ranks 1..N: the broadcast state dict, laid out as `like` (the receiver's own)."""
        out: dict[str, torch.Tensor] = {}
        for names in buckets(like):
            flat = torch.empty(sum(like[n].numel() for n in names), dtype=like[names[0]].dtype,
                               device=like[names[0]].device)
            self._broadcast(flat)
            offset = 0
            for n in names:
                out[n] = flat[offset:offset + like[n].numel()].view_as(like[n])
                offset += like[n].numel()
        return out
