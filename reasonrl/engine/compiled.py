"""Decode steps without per-operation overhead: `torch.compile` and CUDA graphs over batch buckets.

Most rollout steps are all-decode steps of modest batches, where launching and dispatching each
operation, not arithmetic, sets the pace. `FastDecode` runs such a step's model forward either

- compiled (`EngineConfig.compile_decode`): `torch.compile` (inductor: C++ on CPU, Triton on GPU)
  of the whole forward, attention included, so elementwise work fuses across layers; or
- captured (`EngineConfig.cuda_graphs`, CUDA only): one CUDA graph per bucket, replayed with a
  single launch (vLLM and nano-vllm do the same); the graph may hold the compiled forward.

Shapes must be static for both, so a step of n sequences is padded to the smallest bucket >= n
(1, 2, 4, ... up to `max_decode_bucket`); a padding row repeats the last real row (same token,
position and cache slot), so its cache write is the real row's again and changes nothing. The
attention reads its metadata from tensors only (`StaticDecodeAttention`): slot of each new token,
block tables, context lengths. Prefill chunks, draft-tree verification, images, token eviction,
KV formats other than dense, and batches above the largest bucket run eager (`ModelRunner`).

Compiling and capturing happen when the engine starts (every cache slot is free then, so the
dummy steps may write anywhere); their seconds are in `stats()`. After `LLMEngine.wake()` the
cache is a new tensor: graphs are captured again at the next decode step, with that step's own
inputs (whose writes are the step's real writes).
"""

from __future__ import annotations

import logging
import time
import weakref

import torch

from reasonrl.engine.attention import AttentionMetadata

log = logging.getLogger(__name__)


def bucket_sizes(max_num_seqs: int, largest: int) -> list[int]:
    """Padded batch sizes: powers of two up to min(largest, max_num_seqs), and that cap itself."""
    cap = max(1, min(largest, max_num_seqs))
    sizes = [1 << i for i in range(cap.bit_length()) if 1 << i <= cap]
    return sizes if sizes[-1] == cap else sizes + [cap]


def pick_bucket(n: int, buckets: list[int]) -> int | None:
    """The smallest bucket holding n rows; None when n is above the largest (the step runs eager)."""
    return next((b for b in buckets if b >= n), None)


def pad_rows(x: torch.Tensor, size: int) -> torch.Tensor:
    """x (n, ...) -> (size, ...), the rows after n repeating row n - 1."""
    n = x.shape[0]
    return x if n == size else torch.cat([x, x[n - 1:].expand(size - n, *x.shape[1:])])


_FORMATS: weakref.WeakValueDictionary[int, object] = weakref.WeakValueDictionary()
"""KV formats by key: the custom op below reaches the format's own write and attention through it
(weak: an engine's cache is freed with the engine)."""


@torch.library.custom_op("reasonrl::decode_attend", mutates_args=("cache",))
def decode_attend(cache: torch.Tensor, kv_key: int, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  slots: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor, kernel: bool) -> torch.Tensor:
    """Writes the step's keys and values into `cache` (the format's storage) and attends: the
    format's CUDA kernel (`kernel`) or its `decode` (on CPU, the dense format's C++ kernel or the
    padded PyTorch path). One opaque op to the compiler:
    a cache write traced into the graph would be functionalised, i.e. the whole cache copied."""
    kv = _FORMATS[kv_key]
    kv.write(layer, slots, k, v)
    if kernel:
        return kv.decode_kernel(layer, q, tables, lens)
    return kv.decode(layer, q, tables, lens, lens.tolist()).contiguous()  # rows grouped by context length, as eager


@decode_attend.register_fake
def _decode_attend_shape(cache, kv_key, layer, q, k, v, slots, tables, lens, kernel):
    return torch.empty_like(q)


class StaticDecodeAttention:
    """`PagedAttention` of an all-decode step from tensors alone (no host-side lists), so it can be
    traced and captured: slot of each new token, block tables, context lengths."""

    def __init__(self, cache: torch.Tensor, kv_key: int, slots: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor,
                 kernel: bool):
        self.cache, self.kv_key, self.slots, self.tables, self.lens, self.kernel = cache, kv_key, slots, tables, lens, kernel

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return decode_attend(self.cache, self.kv_key, layer, q, k, v, self.slots, self.tables, self.lens, self.kernel)


def decode_forward(model, cache, kv_key: int, ids, positions, slots, tables, lens, kernel: bool) -> torch.Tensor:
    """One all-decode forward: (B,) ids, positions, slots; tables (B, W); lens (B,) -> hidden (B, d)."""
    return model(ids, positions, StaticDecodeAttention(cache, kv_key, slots, tables, lens, kernel))


class FastDecode:
    """The compiled and/or captured decode forward of one engine (see the module docstring)."""

    def __init__(self, model, kv, buckets: list[int], compile_decode: bool, cuda_graphs: bool, graph_memory: int,
                 max_blocks: int):
        """`max_blocks`: the widest block table a decode step may bring (a captured graph's width)."""
        self.model, self.kv, self.buckets, self.max_blocks = model, kv, buckets, max_blocks
        self.kv_key = id(kv)
        _FORMATS[self.kv_key] = kv
        self.kernel = model.device.type == "cuda"
        self.forward_fn = decode_forward
        self.compiled = compile_decode
        if compile_decode:
            # one compiled graph per bucket and engine (the format's key is a constant of the graph)
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            self.forward_fn = torch.compile(decode_forward, fullgraph=True, dynamic=False)
        self.graphs = None
        if cuda_graphs:
            from reasonrl.engine.cuda_graphs import DecodeGraphs, GraphPool

            self.graphs = DecodeGraphs(self._run, self.max_blocks, GraphPool(model.device, graph_memory),
                                       lambda: kv.cache.data_ptr())
        self.compile_seconds = self.capture_seconds = 0.0
        self.fast_steps = self.eager_steps = 0

    @classmethod
    def build(cls, model, kv, config, max_model_len: int) -> FastDecode | None:
        """None when neither option applies (compile off and no CUDA graphs) or the KV format is not
        dense (the compressed formats plan their writes on the host: eager)."""
        graphs = config.cuda_graphs and model.device.type == "cuda"
        if not (config.compile_decode or graphs):
            return None
        if kv.name != "dense":
            log.info("compiled/captured decode needs kv_format dense; %s decodes eager", kv.name)
            return None
        # a sequence's table covers its tokens and, with a draft, the rows of its tree
        max_blocks = -(-(max_model_len + config.draft_tokens) // config.block_size) + 1
        fast = cls(model, kv, bucket_sizes(config.max_num_seqs, config.max_decode_bucket), config.compile_decode,
                   graphs, config.cuda_graph_memory, max_blocks)
        try:
            fast.warm_up()
        except Exception as e:  # e.g. no C++ compiler for inductor: decoding still works, eager
            log.warning("compiled/captured decode failed to start (%s: %s); decoding eager", type(e).__name__, e)
            return None
        return fast

    @torch.no_grad()
    def _run(self, ids, positions, slots, tables, lens) -> torch.Tensor:
        if self.compiled:
            torch._dynamo.mark_dynamic(tables, 1)  # context grows: one compile per bucket, any width
        return self.forward_fn(self.model, self.kv.cache, self.kv_key, ids, positions, slots, tables, lens, self.kernel)

    @torch.no_grad()
    def warm_up(self) -> None:
        """Compile (and capture) every bucket now, with dummy steps writing slot 0 (all free)."""
        start = time.perf_counter()
        if self.compiled:
            for b in self.buckets:
                self._run(*self._dummy(b, 2))
            self.compile_seconds = time.perf_counter() - start
            log.info("compiled decode for buckets %s in %.1fs", self.buckets, self.compile_seconds)
        if self.graphs is not None:
            start = time.perf_counter()
            self.graphs.capture_all(self.buckets, lambda b: self._dummy(b, self.max_blocks))
            self.capture_seconds = time.perf_counter() - start
            log.info("captured decode CUDA graphs for buckets %s in %.1fs", self.graphs.captured, self.capture_seconds)

    @torch.no_grad()
    def run_dummy(self, bucket: int) -> None:
        """One forward of `bucket` dummy rows through the fast path (the bucket's graph if captured,
        else the compiled forward); it writes cache slot 0, so only between requests (benchmarks
        time the forward alone with it)."""
        inputs = self._dummy(bucket, 2)
        if self.graphs is None or self.graphs.replay(bucket, *inputs) is None:
            self._run(*inputs)

    def _dummy(self, b: int, width: int) -> tuple[torch.Tensor, ...]:
        dev = self.model.device
        zeros = torch.zeros(b, dtype=torch.long, device=dev)
        tables = torch.zeros(b, width, dtype=torch.int32, device=dev)
        return zeros, zeros.clone(), zeros.clone(), tables, torch.ones(b, dtype=torch.int32, device=dev)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                model_inputs: dict) -> torch.Tensor | None:
        """Hidden states (n, d) of an all-decode step, or None: the step is not one this runs."""
        n = meta.num_seqs
        fits = meta.decode_only and not model_inputs and meta.block_tables.shape[1] <= self.max_blocks
        bucket = pick_bucket(n, self.buckets) if fits else None
        if bucket is None:
            if meta.decode_only:
                self.eager_steps += 1
            return None
        ids, pos, slots, lens = (pad_rows(x, bucket) for x in (input_ids, positions, meta.slot_mapping,
                                                               meta.context_lens_t))
        tables = pad_rows(meta.block_tables, bucket)
        if tables.shape[1] == 1:  # a width of 1 would be compiled apart from the dynamic width (>= 2)
            tables = torch.cat([tables, torch.zeros_like(tables)], 1)
        self.fast_steps += 1
        if self.graphs is not None and (out := self.graphs.replay(bucket, ids, pos, slots, tables, lens)) is not None:
            return out[:n]
        return self._run(ids, pos, slots, tables, lens)[:n]

    def stats(self) -> dict:
        mode = "+".join(m for m, on in (("compiled", self.compiled), ("cuda_graphs", self.graphs is not None)) if on)
        out = {"decode_mode": mode, "decode_buckets": list(self.buckets), "decode_compile_seconds": self.compile_seconds,
               "decode_fast_steps": self.fast_steps, "decode_eager_steps": self.eager_steps}
        if self.graphs is not None:
            out.update(self.graphs.stats(), decode_capture_seconds=self.capture_seconds)
        return out
