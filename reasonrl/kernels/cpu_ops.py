"""The engine's C++ kernels for CPU decode, one library (`csrc/*.cpp`):

- `paged_decode_cpu` (`csrc/paged_decode_cpu.cpp`): decode attention with keys and values read in
  place from the block table, where the PyTorch path gathers every sequence's context into a padded
  copy each layer and step and then runs SDPA over the copy. An exact softmax over fp32 scores with
  8-lane partial sums in each dot product, so results match SDPA's to float rounding, not bit for
  bit.
- `paged_masked_cpu` (same file): a few query rows per sequence, each with its row of a mask (a
  draft tree's verification), read in place the same way.
- `small_linear_cpu` (`csrc/small_linear_cpu.cpp`): a linear layer at a few rows (1-4 sequences
  decoding) with the outputs split over torch's threads, each streaming its share of the weight;
  outputs match `F.linear` to float rounding (a fixed order of summation, not MKL's).
- `draft_tree_cpu`, `draft_rows_cpu` (`csrc/decoder_cpu.cpp`): the EAGLE draft's tree growth
  and its catch-up over newly accepted rows (engine/spec/grow.py), each one call, where the PyTorch
  path dispatches dozens of operations per depth.
- `decoder_forward_cpu` (same file): the target model's forward over a step of decode rows,
  draft-tree rows and short prompt chunks (engine/cpu_forward.py), one call, reading and writing the
  paged cache in place. All of them attend through one loop, `attend_group` (`csrc/cpu_common.h`).

The first three are batch-invariant: a row's (a sequence's) result never depends on the other rows
of the batch or the padding.

Built with the system's C++ compiler the first time an engine needs it (twenty to thirty seconds; the
library is kept under PyTorch's extensions directory, `TORCH_EXTENSIONS_DIR`, one folder per torch
version and source text, so every checkout with the same sources shares it), then registered as
`torch.ops.reasonrl_cpu.*`. Where it cannot be built (no compiler) the engine warns once and keeps
the PyTorch paths; `REASONRL_CPU_KERNELS=0` skips the build. fp32 only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).parent / "csrc" / name
                for name in ("paged_decode_cpu.cpp", "small_linear_cpu.cpp", "decoder_cpu.cpp"))
FILES = SOURCES + (Path(__file__).parent / "csrc" / "cpu_common.h",)  # what is copied to build and hashed
LIBRARY = "reasonrl_cpu"
STALE_LOCK_S = 600
"""A build lock older than this is a killed build's, and is removed (a real build takes seconds)."""
_lock = threading.Lock()
_state: dict[str, object] = {}  # "ok": bool once tried, "error": why it is unavailable, "seconds": build time


def available() -> bool:
    """Build and load the library once per process; False (and a warning, once) where it cannot."""
    if "ok" in _state:
        return bool(_state["ok"])
    with _lock:
        if "ok" not in _state:
            _state.update(_build())
    return bool(_state["ok"])


def _build() -> dict[str, object]:
    if os.environ.get("REASONRL_CPU_KERNELS", "1") == "0":
        return {"ok": False, "error": "disabled by REASONRL_CPU_KERNELS=0"}
    start = time.perf_counter()
    try:
        build = _build_dir()
        library = build / f"{LIBRARY}.so"
        if library.exists() and not (build / "lock").exists():  # built for these sources and torch: just load it
            torch.ops.load_library(str(library))  # (ninja's own check rebuilt it when two processes' flags differed)
        else:
            _compile(build)
        ops = torch.ops.reasonrl_cpu
        # raises if the library did not register the ops
        ops.paged_decode, ops.paged_masked, ops.small_linear, ops.draft_tree, ops.draft_rows, ops.decoder_forward  # noqa: B018
        # their outputs' shapes for tracers (torch.compile, export) that meet them outside the engine's custom ops
        torch.library.register_fake("reasonrl_cpu::paged_decode")(lambda q, k_cache, v_cache, tables, lens, scale: torch.empty_like(q))
        torch.library.register_fake("reasonrl_cpu::paged_masked")(
            lambda q, k_cache, v_cache, tables, lens, mask, scale: torch.empty_like(q))
        torch.library.register_fake("reasonrl_cpu::small_linear")(lambda x, weight, bias: x.new_empty(x.shape[0], weight.shape[0]))
    except Exception as e:  # no compiler, headers or ninja: the PyTorch paths still work
        log.warning("CPU decode kernels unavailable, the engine uses its PyTorch paths: %s", e)
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"ok": True, "seconds": time.perf_counter() - start}


def _compile(build: Path) -> None:
    from torch.utils.cpp_extension import load

    for src in FILES:  # compiled from here: the build command is the same for every checkout
        copy = build / src.name
        if not copy.exists() or copy.read_bytes() != src.read_bytes():
            copy.write_bytes(src.read_bytes())
    _wait_for_lock(build / "lock")
    log.info("building the CPU decode kernels in %s (once per torch version and source)", build)
    # -fopenmp: at::parallel_for runs on torch's own OpenMP threads (symbols resolved from torch's runtime)
    load(name=LIBRARY, sources=[str(build / src.name) for src in SOURCES], extra_cflags=["-O3", "-fopenmp"],
         is_python_module=False, build_directory=str(build), verbose=False)


def _wait_for_lock(lock: Path) -> None:
    """Wait while another process's build holds `lock`; a lock older than STALE_LOCK_S was left by a
    build that was killed (PyTorch would wait on it for ever) and is removed. Its age is looked at
    again every second: a start soon after a killed build waited for ever before."""
    told = False
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:  # none, or the other build just finished: go on (ninja skips what is done)
            return
        if age > STALE_LOCK_S:
            lock.unlink(missing_ok=True)
            return
        if not told:
            log.warning("waiting for %s: another process is building the CPU kernels, or a killed build left it "
                        "(removed once %d s old)", lock, STALE_LOCK_S)
            told = True
        time.sleep(1.0)


def _build_dir() -> Path:
    """PyTorch's extensions directory (`TORCH_EXTENSIONS_DIR`, else ~/.cache/torch_extensions), one
    folder per torch version and source text: checkouts with the same sources share one build
    (keyed by path, every checkout, or a test's copy of the package, would rebuild it in turn)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    digest = hashlib.sha256(b"".join(src.read_bytes() for src in FILES)).hexdigest()[:12]
    path = Path(root) / f"{LIBRARY}_torch{torch.__version__.replace('+', '_')}_{digest}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def status() -> dict[str, object]:
    """What the last build attempt gave (empty before any)."""
    return dict(_state)


def paged_decode_cpu(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tables: torch.Tensor,
                     lens: torch.Tensor, scale: float | None = None) -> torch.Tensor | None:
    """q (B, Hq, D); caches (blocks, block_size, Hkv, D); tables (B, max_blocks) and lens (B,) int32
    -> (B, Hq, D); None where the kernel does not apply (not fp32 on CPU, or not built). Raises,
    naming the sequence, on a context length or block id outside the table or the cache."""
    if q.device.type != "cpu" or k_cache.device.type != "cpu" or q.dtype != torch.float32 or \
            k_cache.dtype != torch.float32 or not available():
        return None
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.ops.reasonrl_cpu.paged_decode(q, k_cache, v_cache, tables.to(torch.int32), lens.to(torch.int32), scale)


def paged_masked_cpu(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tables: torch.Tensor,
                     lens: torch.Tensor, mask: torch.Tensor, scale: float | None = None) -> torch.Tensor | None:
    """q (B, Q, Hq, D): a few query rows per sequence (padded to Q), each attending the cached tokens
    its row of mask (B, Q, S >= the longest context) allows; caches, tables and lens as in
    `paged_decode_cpu` -> (B, Q, Hq, D), zeros for a row that attends nothing; None where the
    kernel does not apply."""
    if q.device.type != "cpu" or k_cache.device.type != "cpu" or q.dtype != torch.float32 or \
            k_cache.dtype != torch.float32 or not available():
        return None
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.ops.reasonrl_cpu.paged_masked(q, k_cache, v_cache, tables.to(torch.int32), lens.to(torch.int32), mask,
                                               scale)


def small_linear_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """`F.linear(x, weight, bias)` for x (rows, in) and weight (out, in) stored row- or column-major
    -> (rows, out); None where the kernel does not apply (not fp32 on CPU, another weight layout,
    or not built). Meant for a few rows: each is a pass over the whole weight."""
    if x.device.type != "cpu" or weight.device.type != "cpu" or x.dtype != torch.float32 or \
            weight.dtype != torch.float32 or x.dim() != 2 or not available():
        return None
    if not (weight.is_contiguous() or weight.stride() == (1, weight.shape[0])):
        return None
    return torch.ops.reasonrl_cpu.small_linear(x, weight, bias)


def _layer_weights(layer) -> list[torch.Tensor]:
    """A `DecoderLayer`'s 12 tensors in the order the C++ `Layer` reads them (empty: absent)."""
    attn, mlp = layer.self_attn, layer.mlp
    none = attn.qkv_proj.weight.new_empty(0)
    opt = lambda t: none if t is None else t.detach()  # noqa: E731
    norm = lambda m: none if m is None else m.weight.detach()  # noqa: E731
    return [layer.input_layernorm.weight.detach(), attn.qkv_proj.weight.detach(), opt(attn.qkv_proj.bias),
            norm(attn.q_norm), norm(attn.k_norm), attn.o_proj.weight.detach(), opt(attn.o_proj.bias),
            layer.post_attention_layernorm.weight.detach(), mlp.gate_up_proj.weight.detach(), opt(mlp.gate_up_proj.bias),
            mlp.down_proj.weight.detach(), opt(mlp.down_proj.bias)]


def _applies(weight: torch.Tensor, embed) -> bool:
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and type(embed) is torch.nn.Embedding \
        and available()


def decoder_weights(model) -> list[torch.Tensor] | None:
    """A `DecoderLM`'s tensors in the order `decoder_forward_cpu` reads them; None where the kernel
    does not apply (not fp32 on CPU, the library not built, an embedding other than `nn.Embedding`).
    An M-RoPE model (Qwen2.5-VL) qualifies: the kernel takes one position per row, and a text row's
    three M-RoPE positions are equal, which is plain rotary at that position."""
    if not _applies(model.norm.weight, model.embed_tokens):
        return None
    return [model.embed_tokens.weight.detach(), model.norm.weight.detach(), model.rotary.inv_freq.float(),
            *(t for layer in model.layers for t in _layer_weights(layer))]


def decoder_forward_cpu(weights: list[torch.Tensor], config, ids: torch.Tensor, positions: torch.Tensor,
                        cache: torch.Tensor, slots: torch.Tensor, tables: torch.Tensor, query_start: list[int],
                        context_lens: list[int], masks: list[torch.Tensor]) -> torch.Tensor:
    """The model's final hidden states (rows, h) for a step of rows: ids, positions and cache slots
    (rows,) int64, the dense cache (layers, 2, blocks, block size, H, D), per sequence its block
    table (int32), row offsets, context length after this step and mask among its rows ((n, n)
    bool, or an empty tensor: causal). Writes the rows' keys and values into the cache."""
    return torch.ops.reasonrl_cpu.decoder_forward(weights, config.num_layers, config.num_heads, config.num_kv_heads,
                                                  config.rms_norm_eps, ids, positions, cache, slots, tables,
                                                  query_start, context_lens, masks)


def draft_weights(draft) -> list[torch.Tensor] | None:
    """The tensors of a `DraftHead` (engine/spec/draft.py) in the order the draft kernels read them,
    an absent bias or norm as an empty tensor; None where the kernels do not apply (not fp32 on
    CPU, the library not built, or an embedding other than `nn.Embedding`)."""
    target = draft.target
    if not _applies(draft.fc.weight, target.embed_tokens):
        return None
    none = draft.fc.weight.new_empty(0)
    return [target.embed_tokens.weight.detach(), draft.embed_norm.weight.detach(), draft.feature_norm.weight.detach(),
            draft.fc.weight.detach(), none if draft.fc.bias is None else draft.fc.bias.detach(),
            *_layer_weights(draft.layer), target.lm_head.weight.detach(), target.rotary.inv_freq.float()]


def draft_tree_cpu(weights: list[torch.Tensor], config, root_out: torch.Tensor, roots_pos: torch.Tensor,
                   past_k: list[torch.Tensor], past_v: list[torch.Tensor], top_k: int, depth: int) -> tuple[torch.Tensor, ...]:
    """EAGLE-2 growth of B draft trees (engine/spec/grow.py `grow_tree`) in one call: `weights` from
    `draft_weights`, `config` the draft's ModelConfig, the roots' draft outputs (B, h) and positions
    (B,), each sequence's committed draft keys and values (rows, H, D) -> `TreeSearch.tensors()`."""
    return tuple(torch.ops.reasonrl_cpu.draft_tree(weights, config.num_heads, config.num_kv_heads, config.rms_norm_eps,
                                                   root_out, roots_pos, past_k, past_v, top_k, depth))


def draft_rows_cpu(weights: list[torch.Tensor], config, x: torch.Tensor, positions: torch.Tensor,
                   past_k: list[torch.Tensor], past_v: list[torch.Tensor], lengths: list[int]) -> tuple[torch.Tensor, ...]:
    """The draft layer over `lengths` new fused rows per sequence (x (sum, h), positions (sum,)),
    causal after each sequence's committed rows -> outputs (sum, h), new keys and values (sum, H, D)."""
    return tuple(torch.ops.reasonrl_cpu.draft_rows(weights, config.num_heads, config.num_kv_heads, config.rms_norm_eps,
                                                   x, positions, past_k, past_v, lengths))


def draft_catch_up_cpu(weights: list[torch.Tensor], config, ids: list[int], features: list[torch.Tensor],
                       first_pos: list[int], past_k: list[torch.Tensor], past_v: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """`draft_rows_cpu` for text tokens, their rows fused in C++ as `DraftHead.fuse` does: every
    sequence's new token ids in order, its target features of the positions before them (rows, h),
    and the position of its first new token -> outputs (sum, h), new keys and values (sum, H, D)."""
    return tuple(torch.ops.reasonrl_cpu.draft_catch_up(weights, config.num_heads, config.num_kv_heads,
                                                       config.rms_norm_eps, ids, features, first_pos, past_k, past_v))
