"""`DataParallel`: one rank's part in a replicated data-parallel update (torch.distributed).

Every rank holds the whole policy and optimizer. Each mini-batch is dealt out round-robin
(`shard`); after the local backward passes the gradient sums and the loss denominators are
all-reduced in one flat buffer (`reduce_gradients`), so every rank divides by the global
denominator, clips the same global norm and takes the same optimizer step as one process given the
whole mini-batch: equal to float tolerance (sums in another order). Gloo on CPU, NCCL on GPUs.

With FSDP2 (`sharded`) each rank holds a shard of the parameters, gradients and optimizer state;
FSDP reduce-scatters the gradients itself (their mean: scaled back to the sum here; gloo has no
pre-multiplied sum), so only the denominators are all-reduced, and ranks with fewer micro-batches run idle backward passes to stay in step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class DataParallel:
    def __init__(self, rank: int, world: int, sharded: bool = False, device: str = "cpu"):
        """`sharded`: the policy is FSDP2-sharded (its gradients are reduce-scattered as sums by FSDP itself);
        `device`: where the collectives' small tensors live (cuda for NCCL)."""
        self.rank, self.world, self.sharded, self.device = rank, world, sharded, device

    def shard(self, part: list[int]) -> list[int]:
        """This rank's samples of a mini-batch (a rank may get none)."""
        return part[self.rank::self.world]

    def even(self, groups: list) -> list:
        """This rank's micro-batches, padded with None to the most any rank has: with sharded weights every
        backward pass is a collective, so every rank must run as many (the extra ones idle)."""
        if not self.sharded:
            return groups
        count = torch.tensor([len(groups)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return groups + [None] * (int(count) - len(groups))

    def reduce_gradients(self, params: list[torch.nn.Parameter], denominator: float) -> float:
        """Sum every parameter's gradient and the denominator over ranks (in place); the global denominator."""
        if self.sharded:  # FSDP2 already reduce-scattered the gradients: their mean over ranks, in each shard
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(self.world)
            total = torch.tensor([denominator], dtype=torch.float64, device=self.device)
            dist.all_reduce(total)
            return float(total)
        for p in params:
            if p.grad is None:  # a rank without samples, or a parameter its samples did not reach
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1).float() for p in params] +
                         [torch.tensor([denominator], dtype=torch.float32, device=params[0].device)])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()
        return float(flat[-1])

    def merge_totals(self, totals):
        """The update's weighted statistics summed over ranks (each rank saw only its samples)."""
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, (totals.sums, totals.weights))
        merged = type(totals)()
        for sums, weights in gathered:
            for key, value in sums.items():
                merged.sums[key] = merged.sums.get(key, 0.0) + value
                merged.weights[key] = merged.weights.get(key, 0.0) + weights[key]
        return merged
