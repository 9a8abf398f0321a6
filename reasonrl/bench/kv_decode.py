"""`reasonrl bench kv-decode`: the attention of one decode step over long contexts, for each KV
format against dense in the same run (issue 6: decode latency at 32k context within 1.1x of the
dense kernel).

Two attention layers of Llama-3-8B's shape (32 query heads, 8 KV heads of 128) hold `batch`
sequences of `context` tokens on shuffled blocks, filled the way the engine fills them (prefill
chunks through `PagedAttention`: write, then attend, so every format stores exactly what it
stores in serving: codes, pruned channels, staged partial blocks). Then decode steps run, one
new token per sequence each (positions context, context + 1, ...: blocks fill and get stored
as in serving); in each, layer 0 runs untimed (it carries the step's once-per-step work, e.g.
the quantized formats' write plan) and layer 1 is timed: `KVFormat.write` + `KVFormat.attend`,
what `PagedAttention` runs per layer. On CUDA this is the Triton decode
kernel of each format (dense: `kernels/paged_attention.py`; TaDA/KIVI: `kernels/kv_quant.py`;
SPARK: `kernels/kv_spark.py`); on CPU it is every format's PyTorch path (a temporary of the gathered
blocks; dense's C++ decode kernel is turned off, so that dense is timed as the others are), which
says nothing about the kernels: run it on a GPU for the target.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from reasonrl.bench.common import device_name, sync
from reasonrl.config import positive_ints
from reasonrl.engine.attention import AttentionMetadata, PagedAttention
from reasonrl.engine.kv import get_format
from reasonrl.models.tiny import tiny_config

FORMATS = [("dense", {}), ("tada", {"bits": 4}), ("tada", {"bits": 2}), ("kivi", {"k_bits": 2, "v_bits": 2}),
           ("spark", {"key_ratio": 0.5}), ("spark", {"key_ratio": 0.8}), ("spark", {"key_ratio": 0.5, "bits": 4})]


@dataclass
class DecodeBenchConfig:
    context: int = 32768
    """Tokens in each sequence's cache."""
    batch: int = 8
    """Sequences decoded together."""
    num_heads: int = 32
    """Query heads of the layer (Llama-3-8B's shape by default)."""
    num_kv_heads: int = 8
    """KV heads of the layer."""
    head_dim: int = 128
    """Head dimension."""
    block_size: int = 16
    """Tokens per KV block."""
    chunk: int = 1024
    """Prefill chunk per sequence while filling the cache (the prefill attention's scores are
    heads x chunk x context floats)."""
    iters: int = 20
    """Timed decode steps (median reported)."""
    warmup: int = 3
    """Untimed decode steps first."""
    formats: list[tuple[str, dict]] = field(default_factory=lambda: list(FORMATS), metadata={"cli": False})
    seed: int = 0
    """Seeds the random cache contents."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available): the Triton kernels run on CUDA only."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Default: bfloat16 on CUDA, float32 on CPU."""

    def __post_init__(self):
        positive_ints(self, ("context", "batch", "num_heads", "num_kv_heads", "head_dim", "block_size", "chunk", "iters"),
                      "bench kv-decode: ")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"bench kv-decode: num_heads={self.num_heads} must be a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")


def log(msg: str) -> None:
    print(f"[bench kv-decode] {msg}", file=sys.stderr, flush=True)


LAYERS = 2  # layer 0 untimed, layer 1 timed


def filled_cache(name: str, options: dict, cfg: DecodeBenchConfig, device: torch.device, dtype: torch.dtype):
    """A two-layer cache of `name` holding cfg.batch sequences of cfg.context random tokens, written
    in prefill chunks as the engine writes them, with room for the decode steps -> (kv, block tables
    (B, blocks) int32)."""
    mcfg = tiny_config(hidden_size=cfg.num_heads * cfg.head_dim, num_heads=cfg.num_heads,
                       num_kv_heads=cfg.num_kv_heads, num_layers=LAYERS)  # head_dim = hidden / heads
    bs, per_seq = cfg.block_size, -(-(cfg.context + cfg.warmup + cfg.iters) // cfg.block_size)
    num_blocks = cfg.batch * per_seq
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    tables = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(cfg.seed))
    tables = tables.view(cfg.batch, per_seq).to(torch.int32).to(device)
    kv = get_format(name)(mcfg, num_blocks, bs, device, dtype, cfg.batch, **options)
    kv.cpu_kernel = False  # on CPU every format runs its PyTorch path, dense too (none other has a C++ kernel)
    kv.allocate()
    for start in range(0, cfg.context, cfg.chunk):
        n = min(cfg.chunk, cfg.context - start)
        attn = PagedAttention(kv, step_meta(tables, start, n, cfg))
        for layer in range(LAYERS):
            q, k, v = (torch.randn(cfg.batch * n, h, cfg.head_dim, generator=g, device=device, dtype=dtype)
                       for h in (cfg.num_heads, cfg.num_kv_heads, cfg.num_kv_heads))
            attn(layer, q, k, v)
    return kv, tables


def step_meta(tables: torch.Tensor, start: int, n: int, cfg: DecodeBenchConfig) -> AttentionMetadata:
    """Every sequence computes tokens start..start + n - 1 (n = 1: a decode step)."""
    bs, device = cfg.block_size, tables.device
    pos = torch.arange(start, start + n, device=device)
    slots = (tables[:, pos // bs].long() * bs + pos % bs).flatten()  # by sequence, then position
    return AttentionMetadata(slot_mapping=slots, query_start=[b * n for b in range(cfg.batch + 1)],
                             context_lens=[start + n] * cfg.batch, block_tables=tables,
                             context_lens_t=torch.full((cfg.batch,), start + n, dtype=torch.int32, device=device))


def decode_latency(kv, tables: torch.Tensor, cfg: DecodeBenchConfig, device, dtype) -> list[float]:
    """Seconds of layer 1 per decode step (write one token per sequence, attend over the context),
    for each timed step."""
    g = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    times = []
    for i in range(cfg.warmup + cfg.iters):
        attn = PagedAttention(kv, step_meta(tables, cfg.context + i, 1, cfg))
        inputs = [[torch.randn(cfg.batch, h, cfg.head_dim, generator=g, device=device, dtype=dtype)
                   for h in (cfg.num_heads, cfg.num_kv_heads, cfg.num_kv_heads)] for _ in range(LAYERS)]
        attn(0, *inputs[0])
        sync(device)
        start = time.perf_counter()
        attn(1, *inputs[1])
        sync(device)
        if i >= cfg.warmup:
            times.append(time.perf_counter() - start)
    return times


def steady_ratio(kv, options: dict) -> float:
    """Bytes of a token in a full block, stored at 16 bits, over a 16-bit dense cache's."""
    from reasonrl.engine.kv.base import dense16_bytes_per_token

    per_block = type(kv).bytes_per_block(kv.cfg, kv.block_size, torch.float16, **options)
    return per_block / (kv.block_size * dense16_bytes_per_token(kv.cfg))


def bench_kv_decode(cfg: DecodeBenchConfig = DecodeBenchConfig()) -> list[dict]:
    """Rows {format, params, latency_ms, ratio_to_dense, bytes_per_token_ratio (a full block's
    token at 16 bits over dense), ...}; the first format is the reference (dense)."""
    from reasonrl.models.loader import resolve_device

    device = resolve_device(cfg.device)
    dtype = getattr(torch, cfg.dtype) if cfg.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    rows = []
    for name, options in cfg.formats:
        start = time.perf_counter()
        kv, tables = filled_cache(name, options, cfg, device, dtype)
        times = decode_latency(kv, tables, cfg, device, dtype)
        ratio16 = steady_ratio(kv, options)
        kv.release()
        del kv
        if device.type == "cuda":
            torch.cuda.empty_cache()
        median = statistics.median(times)
        rows.append({"format": name, "params": options, "latency_ms": 1000 * median,
                     "latency_ms_min": 1000 * min(times), "bytes_per_token_ratio": ratio16})
        log(f"{name} {options}: {1000 * median:.3f} ms per decode step ({time.perf_counter() - start:.0f}s)")
    reference = rows[0]["latency_ms"]
    kernels = device.type == "cuda"
    for r in rows:
        r.update(ratio_to_dense=r["latency_ms"] / reference, context=cfg.context, batch=cfg.batch,
                 num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                 device=device_name(device), dtype=str(dtype).removeprefix("torch."), kernels=kernels)
        if kernels and r is not rows[0]:
            r["target"] = {"rule": "decode latency within 1.1x of dense", "met": r["ratio_to_dense"] <= 1.1}
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'format':<8}{'params':<34}{'ms/step':>10}{'vs dense':>10}{'bytes':>8}  target", "-" * 80]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        target = "" if "target" not in r else ("met" if r["target"]["met"] else "NOT met")
        lines.append(f"{r['format']:<8}{params:<34}{r['latency_ms']:>10.3f}{r['ratio_to_dense']:>10.2f}"
                     f"{r['bytes_per_token_ratio']:>8.3f}  {target}")
    if rows and not rows[0]["kernels"]:
        lines.append("(CPU: the formats' PyTorch paths, not the Triton kernels; the target is for a GPU)")
    return "\n".join(lines)
