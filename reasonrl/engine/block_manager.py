"""`BlockManager`: paged KV blocks with reference counts and a prefix cache keyed by block hash.

A block holds `block_size` consecutive tokens of one or more sequences. A full block's hash
chains the hash of the block before it with its own token ids (and the keys of content the ids do
not show, such as an image behind placeholder tokens: `Sequence.block_content`), so equal hashes
mean equal prefixes; the content is kept to rule out collisions. Freed blocks keep their hash and stay
reusable from the cache until the allocator hands them out again (least recently freed first).
"""

from __future__ import annotations

from collections import OrderedDict

from reasonrl.engine.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "content", "stale")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.content: tuple = ()  # what the prefix cache keyed it by (Sequence.block_content)
        self.stale = False  # held across a prefix-cache reset: its keys and values predate it, never cached


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, on_free=None):
        self.block_size = block_size
        self.on_free = on_free  # called with the ids of blocks whose last holder let go
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[int, int] = {}  # block hash -> block id

    @property
    def num_free(self) -> int:
        return len(self.free)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.cache_len + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free

    def admit(self, seq: Sequence, compute_from: int | None = None) -> None:
        """Give a waiting sequence the cached blocks of its longest cached prefix, ending at or
        before token `compute_from` if given (tokens from there on are computed); none for a sequence
        with `private_blocks`."""
        assert not seq.block_table
        seq.num_computed = seq.num_cached = seq.num_evicted = 0
        if self.enable_prefix_caching and not seq.private_blocks:
            self._take_cached_prefix(seq, compute_from)

    def _take_cached_prefix(self, seq: Sequence, compute_from: int | None) -> None:
        # At least the last token is always computed: its logits are needed to sample.
        last = seq.num_tokens - 1 if compute_from is None else min(seq.num_tokens - 1, compute_from)
        max_hits = last // self.block_size
        prev = None
        for i in range(max_hits):
            tokens = seq.block_content(i * self.block_size, (i + 1) * self.block_size)
            h = hash((prev, tokens))
            block_id = self.cached.get(h)
            if block_id is None or self.blocks[block_id].content != tokens:
                break
            self._take(block_id)
            seq.block_table.append(block_id)
            prev = h
        seq.num_computed = seq.num_cached = len(seq.block_table) * self.block_size

    def append(self, seq: Sequence, num_new_tokens: int) -> None:
        """Allocate blocks for `num_new_tokens` more tokens and register the blocks they complete.

        Registration happens now, before the forward that writes them: a sequence admitted later
        in the same step may reuse them, because each layer writes every new token's keys and values
        before any token attends."""
        for _ in range(self.blocks_needed(seq, num_new_tokens)):
            seq.block_table.append(self._fresh())
        if self.enable_prefix_caching:
            self._register(seq, seq.num_computed + num_new_tokens)

    def reserve(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Allocate blocks for `num_new_tokens` provisional tokens (a draft tree), unregistered;
        False, allocating nothing, if there are not enough free blocks."""
        if not self.can_append(seq, num_new_tokens):
            return False
        for _ in range(self.blocks_needed(seq, num_new_tokens)):
            seq.block_table.append(self._fresh())
        return True

    def settle(self, seq: Sequence, num_new_tokens: int) -> None:
        """After a draft tree: `num_new_tokens` of the provisional tokens stay. Frees the blocks past
        them and registers the blocks they complete."""
        keep = -(-(seq.num_computed + num_new_tokens) // self.block_size)
        surplus, seq.block_table = seq.block_table[keep:], seq.block_table[:keep]
        # they cached nothing: first in line for the next reservation, so that draft trees do not
        # push prompts out of the prefix cache
        self._let_go(reversed(surplus), front=True)
        if self.enable_prefix_caching:
            self._register(seq, seq.num_computed + num_new_tokens)

    def _fresh(self) -> int:
        """Take the least recently freed block, forgetting what it cached."""
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]
        block.hash, block.content, block.stale = None, (), False
        block.ref_count = 1
        return block_id

    def _register(self, seq: Sequence, num_tokens: int) -> None:
        if seq.num_evicted or seq.private_blocks:  # its blocks hold the kept entries, no longer the tokens' runs;
            return                                  # or they must stay its own
        bs = self.block_size
        for i in range(seq.num_computed // bs, num_tokens // bs):
            block = self.blocks[seq.block_table[i]]
            if block.hash is not None:
                continue
            prev = self.blocks[seq.block_table[i - 1]].hash if i else None
            if block.stale or (i and prev is None):  # the chain was cut (cache reset mid-sequence): nothing
                return                               # from here on is cacheable
            block.content = seq.block_content(i * bs, (i + 1) * bs)
            block.hash = hash((prev, block.content))
            self.cached.setdefault(block.hash, block.block_id)

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1

    def release(self, seq: Sequence) -> None:
        self._let_go(reversed(seq.block_table))  # tail blocks are freed first, so evicted first
        seq.block_table = []
        seq.num_computed = seq.num_evicted = 0

    def can_compact(self, seq: Sequence, num_entries: int) -> bool:
        """Whether `compact` finds its blocks: the free ones plus those only this sequence holds."""
        own = sum(self.blocks[b].ref_count == 1 for b in seq.block_table)
        return self.num_free + own >= -(-num_entries // self.block_size)

    def compact(self, seq: Sequence, num_entries: int) -> list[int]:
        """Token eviction: the sequence's blocks are let go (its full prompt blocks stay in the
        prefix cache, unchanged, until the allocator reuses them) and it gets fresh blocks for
        `num_entries` cache entries (`can_compact` first), returned as its new block table (the
        caller writes the kept entries into them)."""
        old, seq.block_table = seq.block_table, []
        self._let_go(reversed(old))
        seq.block_table = [self._fresh() for _ in range(-(-num_entries // self.block_size))]
        return seq.block_table

    def _let_go(self, block_ids, front: bool = False) -> None:
        """Drop one reference to each block; those nobody holds go to the free list, at its end
        (reused last, so their cached prefixes live longest) or, with `front`, at its front."""
        freed = []
        for block_id in block_ids:
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
                if front:
                    self.free.move_to_end(block_id, last=False)
                freed.append(block_id)
        if freed and self.on_free is not None:
            self.on_free(freed)

    def forget(self, block_ids) -> None:
        """Drop these blocks from the prefix cache (their keys and values cannot be trusted)."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.hash is not None and self.cached.get(block.hash) == block_id:
                del self.cached[block.hash]
            block.hash, block.content = None, ()

    def reset_prefix_cache(self) -> None:
        """Forget every cached hash, e.g. after the weights change and cached keys/values are stale. The
        blocks running sequences hold are never cached again (a partly filled one would be once it
        fills, with keys and values computed partly before the reset), until they are reused."""
        self.cached.clear()
        for block in self.blocks:
            block.hash, block.content = None, ()
            block.stale = block.ref_count > 0
