"""`reasonrl bench kv-decode`: the attention of one decode step over long contexts, for each KV
format against dense in the same run (issue 6: decode latency at 32k context within 1.1x of the
dense kernel).

One attention layer of Llama-3-8B's shape (32 query heads, 8 KV heads of 128) holds `batch`
sequences of `context` tokens on shuffled blocks, filled the way the engine fills them (prefill
chunks through `PagedAttention`: write, then attend, so every format stores exactly what it
stores in serving: codes, pruned channels, staged partial blocks). A decode step is then timed:
write one new token per sequence and attend over the whole context (`KVFormat.write` +
`KVFormat.attend`, what `PagedAttention` runs per layer). On CUDA this is the Triton decode
kernel of each format (dense: `kernels/paged_attention.py`; TaDA/KIVI: `kernels/kv_quant.py`;
SPARK: `kernels/kv_spark.py`); on CPU it is the PyTorch path (a temporary of the gathered blocks),
which says nothing about the kernels: run it on a GPU for the target.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from reasonrl.bench.common import device_name, sync
from reasonrl.engine.attention import AttentionMetadata, PagedAttention
from reasonrl.engine.kv import get_format
from reasonrl.models.tiny import tiny_config

FORMATS = [("dense", {}), ("tada", {"bits": 4}), ("tada", {"bits": 2}), ("kivi", {"k_bits": 2, "v_bits": 2}),
           ("spark", {"key_ratio": 0.5}), ("spark", {"key_ratio": 0.8}), ("spark", {"key_ratio": 0.5, "bits": 4})]


@dataclass
class DecodeBenchConfig:
    context: int = 32768
    batch: int = 8
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    block_size: int = 16
    chunk: int = 2048
    """Prefill chunk per sequence while filling the cache."""
    iters: int = 20
    warmup: int = 3
    formats: list[tuple[str, dict]] = field(default_factory=lambda: list(FORMATS))
    seed: int = 0


def log(msg: str) -> None:
    print(f"[bench kv-decode] {msg}", file=sys.stderr, flush=True)


def filled_cache(name: str, options: dict, cfg: DecodeBenchConfig, device: torch.device, dtype: torch.dtype):
    """A one-layer cache of `name` holding cfg.batch sequences of cfg.context random tokens, written
    in prefill chunks as the engine writes them -> (kv, block tables (B, blocks) int32)."""
    mcfg = tiny_config(hidden_size=cfg.num_heads * cfg.head_dim, num_heads=cfg.num_heads,
                       num_kv_heads=cfg.num_kv_heads, num_layers=1)  # head_dim = hidden / heads
    bs, per_seq = cfg.block_size, -(-(cfg.context + 1) // cfg.block_size)
    num_blocks = cfg.batch * per_seq
    g = torch.Generator().manual_seed(cfg.seed)
    tables = torch.randperm(num_blocks, generator=g).view(cfg.batch, per_seq).to(torch.int32)
    kv = get_format(name)(mcfg, num_blocks, bs, device, dtype, cfg.batch, **options)
    kv.allocate()
    tables_dev = tables.to(device)
    for start in range(0, cfg.context, cfg.chunk):
        n = min(cfg.chunk, cfg.context - start)
        pos = torch.arange(start, start + n)
        slots = (tables[:, pos // bs].long() * bs + pos % bs).flatten().to(device)  # by sequence, then position
        meta = AttentionMetadata(slot_mapping=slots, query_start=[b * n for b in range(cfg.batch + 1)],
                                 context_lens=[start + n] * cfg.batch, block_tables=tables_dev,
                                 context_lens_t=torch.full((cfg.batch,), start + n, dtype=torch.int32, device=device))
        q, k, v = (torch.randn(cfg.batch * n, h, cfg.head_dim, generator=g).to(device, dtype)
                   for h in (cfg.num_heads, cfg.num_kv_heads, cfg.num_kv_heads))
        PagedAttention(kv, meta)(0, q, k, v)
    return kv, tables_dev


def decode_latency(kv, tables: torch.Tensor, cfg: DecodeBenchConfig, device, dtype) -> list[float]:
    """Seconds per decode step (write one token per sequence, attend over context + 1), per iteration."""
    bs, pos = cfg.block_size, cfg.context
    slots = (tables[:, pos // bs].long() * bs + pos % bs).to(device)
    meta = AttentionMetadata(slot_mapping=slots, query_start=list(range(cfg.batch + 1)),
                             context_lens=[pos + 1] * cfg.batch, block_tables=tables,
                             context_lens_t=torch.full((cfg.batch,), pos + 1, dtype=torch.int32, device=device))
    g = torch.Generator().manual_seed(cfg.seed + 1)
    q, k, v = (torch.randn(cfg.batch, h, cfg.head_dim, generator=g).to(device, dtype)
               for h in (cfg.num_heads, cfg.num_kv_heads, cfg.num_kv_heads))
    attn, times = PagedAttention(kv, meta), []
    for i in range(cfg.warmup + cfg.iters):
        sync(device)
        start = time.perf_counter()
        attn(0, q, k, v)
        sync(device)
        if i >= cfg.warmup:
            times.append(time.perf_counter() - start)
    return times


def steady_ratio(kv, options: dict) -> float:
    """Bytes of a token in a full block, stored at 16 bits, over a 16-bit dense cache's."""
    from reasonrl.engine.kv.base import dense16_bytes_per_token

    per_block = type(kv).bytes_per_block(kv.cfg, kv.block_size, torch.float16, **options)
    return per_block / (kv.block_size * dense16_bytes_per_token(kv.cfg))


def bench_kv_decode(cfg: DecodeBenchConfig | None = None, device=None, dtype=None) -> list[dict]:
    """Rows {format, params, latency_ms, ratio_to_dense, bytes_per_token_ratio (a full block's
    token at 16 bits over dense), ...}; the first format is the reference (dense)."""
    from reasonrl.models.loader import resolve_device

    cfg = cfg or DecodeBenchConfig()
    device = resolve_device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
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
