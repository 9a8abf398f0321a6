"""CUDA graphs of the decode forward, one per batch bucket (engine/compiled.py pads steps to them).

A graph replays the kernels recorded at capture on the same memory: each bucket owns static input
buffers (token ids, positions, cache slots, block tables of the cache's full width, context
lengths) that a step copies its padded inputs into before the replay, and the output tensor the
capture produced. All graphs share one memory pool, captured largest bucket first, so the pool
is about the size the largest needs; buckets whose capture would take the pool past
`memory_budget` bytes are left out (their steps run eager; a smaller one may still fit).

A graph records the addresses of the KV cache; when the cache is allocated again (`wake()` after
`sleep()`) every graph is dropped and captured again at its bucket's next step.
"""

from __future__ import annotations

from typing import Callable

import torch

Inputs = tuple[torch.Tensor, ...]  # ids, positions, slots (B,), tables (B, W), lens (B,)


class DecodeGraphs:
    def __init__(self, forward: Callable[..., torch.Tensor], device: torch.device, width: int, memory_budget: int,
                 cache_id: Callable[[], int]):
        """`forward(ids, positions, slots, tables, lens) -> hidden (B, d)`: what is captured;
        `cache_id()`: the address of the KV cache now (a new one invalidates the graphs)."""
        self.forward, self.device, self.width, self.memory_budget = forward, device, width, memory_budget
        self.cache_id = cache_id
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, Inputs, torch.Tensor]] = {}
        self.skipped: list[int] = []  # buckets over the memory budget
        self.pool = None
        self.pool_bytes = 0
        self.cache_ptr = None
        self.replays = 0
        self.recaptures = 0

    @property
    def captured(self) -> list[int]:
        return sorted(self.graphs)

    def capture_all(self, buckets: list[int], dummy: Callable[[int], Inputs]) -> None:
        """Captures every bucket that fits the memory budget, largest first."""
        for b in sorted(buckets, reverse=True):
            if not self.capture(b, dummy(b)):
                self.skipped.append(b)

    def capture(self, bucket: int, inputs: Inputs) -> bool:
        """Records the forward on static copies of `inputs` (which it also runs, uncaptured, to warm
        up); False, and nothing kept, if the pool would exceed the memory budget."""
        static = tuple(x.clone() for x in inputs)
        graph, out, grown = self.record(static)
        if self.pool_bytes + grown > self.memory_budget:
            del graph, out
            # the pool keeps what this capture took: start a fresh one, so the next capture counts its own
            self.pool = None
            if torch.cuda.is_initialized():
                torch.cuda.empty_cache()
            return False
        self.pool_bytes += grown
        self.graphs[bucket] = (graph, static, out)
        self.cache_ptr = self.cache_id()
        return True

    def record(self, static: Inputs) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, int]:
        """-> (graph, its output tensor, bytes the shared pool grew by)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # kernels compiled and tuned, allocator warmed, outside the capture
                self.forward(*static)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        before = torch.cuda.memory_reserved(self.device)
        graph = torch.cuda.CUDAGraph()
        self.pool = self.pool or torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.forward(*static)
        return graph, out, torch.cuda.memory_reserved(self.device) - before

    def replay(self, bucket: int, ids, positions, slots, tables, lens) -> torch.Tensor | None:
        """The captured forward on these (padded) inputs; None when the bucket has no graph."""
        if self.cache_ptr is not None and self.cache_id() != self.cache_ptr:  # the cache was allocated again
            self.graphs.clear()
            self.pool, self.pool_bytes, self.cache_ptr = None, 0, None  # a fresh pool for the new graphs
            self.recaptures += 1
        entry = self.graphs.get(bucket)
        if entry is None:
            if bucket in self.skipped:
                return None
            if not self.capture(bucket, self._full_width((ids, positions, slots, tables, lens))):
                self.skipped.append(bucket)
                return None
            entry = self.graphs[bucket]
        graph, static, out = entry
        for dst, src in zip(static, (ids, positions, slots)):
            dst.copy_(src)
        static[3][:, : tables.shape[1]].copy_(tables)
        static[4].copy_(lens)
        graph.replay()
        self.replays += 1
        return out

    def _full_width(self, inputs: Inputs) -> Inputs:
        ids, positions, slots, tables, lens = inputs
        full = torch.zeros(tables.shape[0], self.width, dtype=tables.dtype, device=tables.device)
        full[:, : tables.shape[1]] = tables
        return ids, positions, slots, full, lens

    def stats(self) -> dict:
        return {"cuda_graph_buckets": self.captured, "cuda_graph_pool_bytes": self.pool_bytes,
                "cuda_graph_replays": self.replays, "cuda_graph_recaptures": self.recaptures}
