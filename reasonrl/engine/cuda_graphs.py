"""CUDA graphs: a memory pool within a budget (`GraphPool`), and the decode forward's graphs, one
per batch bucket (`DecodeGraphs`; engine/compiled.py pads steps to them). The draft's steps have
a pool of their own (engine/spec/grow.py, `DraftGraphs`).

A graph replays the kernels recorded at capture on the same memory: each bucket owns static input
buffers (token ids, positions, cache slots, block tables of the cache's full width, context
lengths) that a step copies its padded inputs into before the replay, and the output tensor the
capture produced. All graphs share one memory pool, captured largest bucket first, so the pool
is about the size the largest needs; buckets whose capture would take the pool past its budget
(`EngineConfig.cuda_graph_memory`) are left out (their steps run eager; a smaller one may still
fit). A capture that fails (out of memory, say) logs a warning and its bucket runs eager too.

A graph records the addresses of the KV cache; when the cache is allocated again (`wake()` after
`sleep()`) every graph is dropped and captured again at its bucket's next step.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

Inputs = tuple[torch.Tensor, ...]  # ids, positions, slots (B,), tables (B, W), lens (B,)


class GraphPool:
    """One memory pool shared by a set of graphs that never run at the same time, and the bytes it
    may take. Graphs sharing a pool may reuse each other's scratch memory, so a graph's outputs are
    valid until the next replay of any graph of the pool: read them first."""

    def __init__(self, device: torch.device, budget: int):
        self.device, self.budget = device, budget
        self.handle = None
        self.bytes = 0  # what the pool grew by in kept captures, and the static buffers charged to it

    def capture(self, fn: Callable[..., Any], static: tuple) -> tuple[Any, Any] | None:
        """(graph, output) of `fn(*static)` recorded in the pool (run twice uncaptured first, to
        warm up); None, and nothing kept, when the pool would exceed the budget or the capture
        fails (logged: the caller runs eager)."""
        try:
            graph, out, grown = self.record(fn, static)
        except Exception as e:  # noqa: BLE001 - out of memory, an operation a graph cannot hold: run eager
            log.warning("capturing a CUDA graph failed (%s: %s); that shape runs eager", type(e).__name__, e)
            self._drop_pool()
            return None
        if self.bytes + grown > self.budget:
            del graph, out
            self._drop_pool()
            return None
        self.bytes += grown
        return graph, out

    def _drop_pool(self) -> None:
        # the pool keeps what a refused capture took: a fresh one, so the next capture counts its own
        self.handle = None
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def charge(self, nbytes: int) -> bool:
        """Count `nbytes` of static buffers against the budget; False when they do not fit."""
        if self.bytes + nbytes > self.budget:
            return False
        self.bytes += nbytes
        return True

    def reset(self) -> None:
        """Forget every graph (their memory goes with them): a fresh pool for the next captures."""
        self.handle, self.bytes = None, 0

    def record(self, fn: Callable[..., Any], static: tuple) -> tuple[torch.cuda.CUDAGraph, Any, int]:
        """-> (graph, its output, bytes the pool grew by)."""
        with torch.cuda.device(self.device):  # the capture stream is made on the current device
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # kernels compiled and tuned, allocator warmed, outside the capture
                    fn(*static)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            # what entering the capture does anyway, done before measuring: the free cached blocks
            # (the warm-ups', the engine's freed activations) released now are not the pool's growth
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            before = torch.cuda.memory_reserved(self.device)
            graph = torch.cuda.CUDAGraph()
            self.handle = self.handle or torch.cuda.graph_pool_handle()
            # thread_local: only this thread's unsafe calls abort the capture, not another thread's CUDA work
            with torch.cuda.graph(graph, pool=self.handle, capture_error_mode="thread_local"):
                out = fn(*static)
            return graph, out, torch.cuda.memory_reserved(self.device) - before


class DecodeGraphs:
    def __init__(self, forward: Callable[..., torch.Tensor], width: int, pool: GraphPool, cache_id: Callable[[], int]):
        """`forward(ids, positions, slots, tables, lens) -> hidden (B, d)`: what is captured;
        `cache_id()`: the address of the KV cache now (a new one invalidates the graphs)."""
        self.forward, self.width, self.pool, self.cache_id = forward, width, pool, cache_id
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, Inputs, torch.Tensor]] = {}
        self.skipped: list[int] = []  # buckets over the memory budget
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
        """Records the forward on static copies of `inputs`; False, and nothing kept, if the pool
        would exceed the memory budget."""
        static = tuple(x.clone() for x in inputs)
        captured = self.pool.capture(self.forward, static)
        if captured is None:
            return False
        self.graphs[bucket] = (captured[0], static, captured[1])
        self.cache_ptr = self.cache_id()
        return True

    def replay(self, bucket: int, ids, positions, slots, tables, lens) -> torch.Tensor | None:
        """The captured forward on these (padded) inputs; None when the bucket has no graph."""
        if self.cache_ptr is not None and self.cache_id() != self.cache_ptr:  # the cache was allocated again
            self.graphs.clear()
            self.pool.reset()
            self.cache_ptr = None
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
        return {"cuda_graph_buckets": self.captured, "cuda_graph_pool_bytes": self.pool.bytes,
                "cuda_graph_replays": self.replays, "cuda_graph_recaptures": self.recaptures}
