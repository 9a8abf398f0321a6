"""`StagingSlots`: which slot of a full-precision staging pool holds each partly filled block.

The formats that store a block compressed only once it is full (TaDA and KIVI in staged.py, SPARK
in spark.py) keep the tokens of a partly filled block whole in a staging pool until then. Only a
sequence's last block is ever partly filled, so `max_num_seqs` slots suffice as long as a block's
slot goes back to the pool in the step that fills it (before the same sequence's next block takes
one): both formats read a filled block's rows out of its slot before anything can reuse it.

`table` (blocks,) int32, on the device, maps block -> slot (-1: none) for the attention paths and
the Triton kernels; `take` and `drop` collect the changes on the host and `flush` writes them in
one copy.
"""

from __future__ import annotations

import torch


class StagingSlots:
    def __init__(self, owner: str, num_slots: int, num_blocks: int, device: torch.device):
        self.owner, self.num_slots = owner, num_slots
        self.table = torch.full((num_blocks,), -1, dtype=torch.int32, device=device)
        self.of: dict[int, int] = {}  # block -> slot
        self.free = list(range(num_slots - 1, -1, -1))
        self._updates: dict[int, int] = {}  # block -> slot (-1: none), not yet in `table`

    @property
    def num_free(self) -> int:
        return len(self.free)

    def take(self, block: int) -> int:
        """The block's slot, taken from the pool if it has none."""
        slot = self.of.get(block)
        if slot is not None:
            return slot
        if not self.free:
            raise RuntimeError(
                f"kv_format {self.owner!r}: the staging pool ({self.num_slots} blocks, one partly filled block per "
                f"sequence) is exhausted; more blocks are partly filled than max_num_seqs allows")
        slot = self.free.pop()
        self.of[block] = slot
        self._updates[block] = slot
        return slot

    def drop(self, block: int) -> None:
        """The block's slot, if any, goes back to the pool."""
        slot = self.of.pop(block, None)
        if slot is not None:
            self.free.append(slot)
            self._updates[block] = -1

    def restore(self, of: dict[int, int], free: list[int]) -> None:
        """Go back to an earlier map (`of`, `free`: copies taken then), the table included."""
        for block in set(self.of) | set(of):
            if self.of.get(block) != of.get(block):
                self._updates[block] = of.get(block, -1)
        self.of, self.free = dict(of), list(free)
        self.flush()

    def flush(self) -> None:
        """One device write for the changes collected on the host."""
        if self._updates:
            blocks, slots = zip(*self._updates.items())
            dev = self.table.device
            self.table[torch.tensor(blocks, device=dev)] = torch.tensor(slots, dtype=torch.int32, device=dev)
            self._updates = {}
