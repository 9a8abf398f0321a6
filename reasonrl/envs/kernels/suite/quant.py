"""Quantization and dequantization (levels 2-3): per-row symmetric int8 and fp8 (e4m3), int4 packing.

Integer outputs compare exactly, so the instructions fix the arithmetic: IEEE division
(`tl.div_rn`; a GPU's default fp32 division is approximate) and rounding half away from zero.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..task import KernelTask, randn

ROWS = ((7, 33), (16, 1000), (5, 2049))
PERF_ROWS = ((8192, 4096),)
FP8_MAX = 448.0  # largest finite float8 e4m3fn


@triton.jit
def _row_absmax(x_ptr, row, cols, BLOCK: tl.constexpr):
    c = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * cols + c, mask=c < cols, other=0.0).to(tl.float32)
    return x, tl.max(tl.abs(x), 0)


@triton.jit
def _quant_int8_kernel(x_ptr, q_ptr, scale_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x, absmax = _row_absmax(x_ptr, row, cols, BLOCK)
    scale = tl.where(absmax > 0, tl.div_rn(absmax, 127.0), 1.0)
    v = tl.div_rn(x, scale)
    r = tl.where(v >= 0, tl.floor(v + 0.5), -tl.floor(-v + 0.5))  # half away from zero
    c = tl.arange(0, BLOCK)
    tl.store(q_ptr + row * cols + c, tl.minimum(tl.maximum(r, -127.0), 127.0).to(tl.int8), mask=c < cols)
    tl.store(scale_ptr + row, scale)


def quantize_int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    rows, cols = x.shape
    q = torch.empty(rows, cols, dtype=torch.int8, device=x.device)
    scale = torch.empty(rows, dtype=torch.float32, device=x.device)
    _quant_int8_kernel[(rows,)](x, q, scale, cols, BLOCK=triton.next_power_of_2(cols))
    return q, scale


@triton.jit
def _dequant_int8_kernel(q_ptr, scale_ptr, out_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    q = tl.load(q_ptr + row * cols + c, mask=c < cols, other=0).to(tl.float32)
    scale = tl.load(scale_ptr + row).to(tl.float32)
    tl.store(out_ptr + row * cols + c, (q * scale).to(out_ptr.dtype.element_ty), mask=c < cols)


def dequantize_int8_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    q = q.contiguous()
    rows, cols = q.shape
    out = torch.empty(rows, cols, dtype=scale.dtype, device=q.device)
    _dequant_int8_kernel[(rows,)](q, scale.contiguous(), out, cols, BLOCK=triton.next_power_of_2(cols))
    return out


@triton.jit
def _quant_fp8_kernel(x_ptr, q_ptr, scale_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x, absmax = _row_absmax(x_ptr, row, cols, BLOCK)
    scale = tl.where(absmax > 0, tl.div_rn(absmax, 448.0), 1.0)
    v = tl.minimum(tl.maximum(tl.div_rn(x, scale), -448.0), 448.0)
    c = tl.arange(0, BLOCK)
    tl.store(q_ptr + row * cols + c, v.to(tl.float8e4nv), mask=c < cols)
    tl.store(scale_ptr + row, scale)


def quantize_fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    rows, cols = x.shape
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(rows, dtype=torch.float32, device=x.device)
    _quant_fp8_kernel[(rows,)](x, q, scale, cols, BLOCK=triton.next_power_of_2(cols))
    return q, scale


@triton.jit
def _pack_int4_kernel(codes_ptr, out_ptr, half_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, BLOCK)
    ok = j < half_cols
    low = tl.load(codes_ptr + row * 2 * half_cols + 2 * j, mask=ok, other=0).to(tl.int32)
    high = tl.load(codes_ptr + row * 2 * half_cols + 2 * j + 1, mask=ok, other=0).to(tl.int32)
    tl.store(out_ptr + row * half_cols + j, ((low & 15) | ((high & 15) << 4)).to(tl.uint8), mask=ok)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    codes = codes.contiguous()
    rows, cols = codes.shape
    out = torch.empty(rows, cols // 2, dtype=torch.uint8, device=codes.device)
    _pack_int4_kernel[(rows,)](codes, out, cols // 2, BLOCK=triton.next_power_of_2(cols // 2))
    return out


def _round_away(v):
    return torch.where(v >= 0, torch.floor(v + 0.5), -torch.floor(-v + 0.5))


def _quant_int8_ref(x):
    x32 = x.float()
    absmax = x32.abs().amax(-1)
    scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
    return _round_away(x32 / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def _quant_fp8_ref(x):
    x32 = x.float()
    absmax = x32.abs().amax(-1)
    scale = torch.where(absmax > 0, absmax / FP8_MAX, torch.ones_like(absmax))
    return (x32 / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def _dequant_inputs(s, d, g):
    q = torch.randint(-127, 128, s, generator=g, dtype=torch.int8)
    return q, (torch.rand(s[0], generator=g) * 0.1 + 1e-3).to(d)


TASKS = [
    KernelTask(
        "quantize_int8_rows", "quant", 2,
        "Symmetric per-row int8 quantization of a 2-D tensor: scale[r] = absmax(x[r]) / 127 in fp32 (1.0 for an "
        "all-zero row), q = x / scale computed with IEEE fp32 division, rounded to nearest with ties away from "
        "zero and clamped to [-127, 127]. Return (q int8 (rows, cols), scale fp32 (rows,)).",
        "def quantize_int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]",
        _quant_int8_ref, lambda s, d, g: (randn(s, d, g, 2.0),), (_row_absmax, _quant_int8_kernel, quantize_int8_rows),
        ROWS, perf_shapes=PERF_ROWS),
    KernelTask(
        "dequantize_int8_rows", "quant", 1,
        "Dequantize per-row int8 codes: given q int8 (rows, cols) and scale (rows,) (fp32 or fp16), return "
        "q * scale[:, None] computed in fp32, in scale's dtype.",
        "def dequantize_int8_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor",
        lambda q, s: (q.float() * s.float()[:, None]).to(s.dtype), _dequant_inputs,
        (_dequant_int8_kernel, dequantize_int8_rows), ROWS, perf_shapes=PERF_ROWS),
    KernelTask(
        "quantize_fp8_rows", "quant", 2,
        "Per-row float8 (e4m3fn) quantization of a 2-D tensor: scale[r] = absmax(x[r]) / 448 in fp32 (1.0 for an "
        "all-zero row); return (clamp(x / scale, -448, 448) converted to torch.float8_e4m3fn with "
        "round-to-nearest-even, scale fp32 (rows,)). Use IEEE fp32 division.",
        "def quantize_fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]",
        _quant_fp8_ref, lambda s, d, g: (randn(s, d, g, 2.0),), (_row_absmax, _quant_fp8_kernel, quantize_fp8_rows),
        ROWS, perf_shapes=PERF_ROWS, cpu=False,
        cpu_note="Triton's interpreter rounds to float8e4nv differently from the hardware and PyTorch (measured: "
                 "-127 -> -64 and 100 -> 104 where round-to-nearest-even gives -128 and 96)"),
    KernelTask(
        "pack_int4", "quant", 2,
        "Pack 4-bit codes two per byte: codes is a uint8 tensor (rows, cols) of values 0..15 with cols even; "
        "return uint8 (rows, cols / 2) where byte j holds codes[:, 2j] in its low nibble and codes[:, 2j+1] in "
        "its high nibble.",
        "def pack_int4(codes: torch.Tensor) -> torch.Tensor",
        lambda c: (c[:, 0::2] & 15) | ((c[:, 1::2] & 15) << 4),
        lambda s, d, g: (torch.randint(0, 16, s, generator=g, dtype=torch.uint8),), (_pack_int4_kernel, pack_int4),
        ((7, 34), (16, 1000), (5, 2050)), dtypes=(torch.uint8,), perf_shapes=((8192, 4096),)),
]
