"""`Scheduler`: continuous batching with chunked prefill and preemption by recompute.

Each step gets a budget of `max_num_batched_tokens`. Running sequences go first, in admission
order: a decoding sequence needs one token, a sequence mid-prefill the next chunk. Waiting
sequences are admitted while budget, sequence slots and KV blocks last; a prompt longer than the
remaining budget is prefilled in chunks over several steps. When a running sequence needs a block
and none is free, the most recently admitted sequence is preempted: its blocks are released and
it waits at the front of the queue, to be re-prefilled (prompt and output so far) later.

Features that need a step to end at a given token (token eviction ends a prefill chunk at the
prompt's end) say so on the sequence (`chunk_boundary`, `reuse_before`); the scheduler knows none
of them.
"""

from __future__ import annotations

from collections import deque

from reasonrl.engine.block_manager import BlockManager
from reasonrl.engine.sequence import SeqStatus, Sequence


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[tuple[Sequence, int]]:
        """The sequences to run this step, each with its number of new tokens."""
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[Sequence, int]] = []
        i = preempted = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = self._chunk(seq, budget)
            while not self.blocks.can_append(seq, n) and seq in self.running:
                self._preempt(self.running.pop())
                preempted += 1
            if seq not in self.running:
                break
            self.blocks.append(seq, n)
            scheduled.append((seq, n))
            budget -= n
            i += 1
        if not preempted:  # admitting while memory is short would only preempt again
            budget = self._admit(scheduled, budget)
        return scheduled

    def _admit(self, scheduled: list[tuple[Sequence, int]], budget: int) -> int:
        watermark = max(1, len(self.blocks.blocks) // 100)  # headroom for running sequences to grow
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            self.blocks.admit(seq, seq.reuse_before)
            n = self._chunk(seq, budget)
            spare = self.blocks.num_free - self.blocks.blocks_needed(seq, n)
            if spare < 0 or (spare < watermark and self.running):
                self.blocks.release(seq)
                break
            self.waiting.popleft()
            if seq.prompt_cached is None:  # the admission that holds; a re-admission (preemption) finds its own blocks
                seq.prompt_cached = min(seq.num_cached, len(seq.prompt_ids))
            self.blocks.append(seq, n)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            scheduled.append((seq, n))
            budget -= n
        return budget

    @staticmethod
    def _chunk(seq: Sequence, budget: int) -> int:
        n = min(seq.num_pending, budget)
        if seq.chunk_boundary is not None and seq.num_computed < seq.chunk_boundary:
            n = min(n, seq.chunk_boundary - seq.num_computed)
        return n

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.release(seq)
        seq.status = SeqStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def remove(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq)
