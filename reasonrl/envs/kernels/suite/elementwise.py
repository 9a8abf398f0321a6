"""Elementwise and fused elementwise tasks (levels 1-2), and two that need libdevice (GPU only)."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..task import KernelTask, randn, uniform

BLOCK = 1024
FLAT = ((1000,), (4097,), (31, 33))  # elements; the last is 2-D, all odd sizes
PERF_FLAT = ((1 << 24,), (4096, 4097))


# --- vector add ---------------------------------------------------------------------------------


@triton.jit
def _add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x + y, mask=mask)


def vector_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    _add_kernel[(triton.cdiv(n, 1024),)](x, y, out, n, BLOCK=1024)
    return out


# --- axpby: a * x + b * y with scalar coefficients ---------------------------------------------


@triton.jit
def _axpby_kernel(x_ptr, y_ptr, out_ptr, a, b, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    y = tl.load(y_ptr + offsets, mask=mask).to(tl.float32)
    tl.store(out_ptr + offsets, (a * x + b * y).to(out_ptr.dtype.element_ty), mask=mask)


def axpby(x: torch.Tensor, y: torch.Tensor, a: float, b: float) -> torch.Tensor:
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    _axpby_kernel[(triton.cdiv(n, 1024),)](x, y, out, a, b, n, BLOCK=1024)
    return out


# --- leaky relu ---------------------------------------------------------------------------------


@triton.jit
def _leaky_relu_kernel(x_ptr, out_ptr, slope, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, tl.where(x >= 0, x, x * slope), mask=mask)


def leaky_relu(x: torch.Tensor, slope: float) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    _leaky_relu_kernel[(triton.cdiv(n, 1024),)](x, out, slope, n, BLOCK=1024)
    return out


# --- GELU, tanh approximation --------------------------------------------------------------------


@triton.jit
def _gelu_tanh_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)  # sqrt(2 / pi) * (x + 0.044715 x^3)
    tanh = 2.0 * tl.sigmoid(2.0 * inner) - 1.0  # tanh(z) = 2 sigmoid(2z) - 1, no libdevice needed
    tl.store(out_ptr + offsets, (0.5 * x * (1.0 + tanh)).to(out_ptr.dtype.element_ty), mask=mask)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    _gelu_tanh_kernel[(triton.cdiv(n, 1024),)](x, out, n, BLOCK=1024)
    return out


# --- SwiGLU's silu(gate) * up ---------------------------------------------------------------------


@triton.jit
def _silu_mul_kernel(gate_ptr, up_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    g = tl.load(gate_ptr + offsets, mask=mask).to(tl.float32)
    u = tl.load(up_ptr + offsets, mask=mask).to(tl.float32)
    tl.store(out_ptr + offsets, (g * tl.sigmoid(g) * u).to(out_ptr.dtype.element_ty), mask=mask)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    _silu_mul_kernel[(triton.cdiv(n, 1024),)](gate, up, out, n, BLOCK=1024)
    return out


# --- bias + exact GELU over rows ------------------------------------------------------------------


@triton.jit
def _bias_gelu_kernel(x_ptr, bias_ptr, out_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    c = tl.arange(0, BLOCK)
    mask = c < cols
    x = tl.load(x_ptr + row * cols + c, mask=mask).to(tl.float32)
    x += tl.load(bias_ptr + c, mask=mask).to(tl.float32)
    y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    tl.store(out_ptr + row * cols + c, y.to(out_ptr.dtype.element_ty), mask=mask)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    rows, cols = x.shape
    out = torch.empty_like(x)
    _bias_gelu_kernel[(rows,)](x, bias.contiguous(), out, cols, BLOCK=triton.next_power_of_2(cols))
    return out


# --- masked fill ----------------------------------------------------------------------------------


@triton.jit
def _where_kernel(x_ptr, mask_ptr, out_ptr, value, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n
    x = tl.load(x_ptr + offsets, mask=inside)
    keep = tl.load(mask_ptr + offsets, mask=inside, other=0) != 0
    tl.store(out_ptr + offsets, tl.where(keep, x.to(tl.float32), value).to(x.dtype), mask=inside)


def masked_fill(x: torch.Tensor, keep: torch.Tensor, value: float) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    _where_kernel[(triton.cdiv(n, 1024),)](x, keep.contiguous().view(torch.uint8), out, value, n, BLOCK=1024)
    return out


# --- libdevice functions (the interpreter has no libdevice: GPU only) -----------------------------


@triton.jit
def _lgamma_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=1.0).to(tl.float32)
    tl.store(out_ptr + offsets, libdevice.lgamma(x).to(out_ptr.dtype.element_ty), mask=mask)


def lgamma(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    _lgamma_kernel[(triton.cdiv(n, 1024),)](x, out, n, BLOCK=1024)
    return out


@triton.jit
def _i0_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, libdevice.cyl_bessel_i0(x).to(out_ptr.dtype.element_ty), mask=mask)


def bessel_i0(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    _i0_kernel[(triton.cdiv(n, 1024),)](x, out, n, BLOCK=1024)
    return out


# --- references and inputs ------------------------------------------------------------------------


def _fp32(fn):
    """A reference computed in fp32 and returned in the inputs' dtype."""
    def reference(*args):
        dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor))
        up = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        return fn(*up).to(dtype)

    return reference


def _gelu_tanh_ref(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


TASKS = [
    KernelTask(
        "vector_add", "elementwise", 1,
        "Add two tensors of the same shape elementwise and return the sum as a new tensor of the same shape "
        "and dtype. Inputs are contiguous and may have any number of elements, including sizes that are not a "
        "multiple of the block size.",
        "def vector_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor",
        lambda x, y: x + y, lambda s, d, g: (randn(s, d, g), randn(s, d, g)), (_add_kernel, vector_add), FLAT,
        perf_shapes=PERF_FLAT),
    KernelTask(
        "axpby", "elementwise", 1,
        "Compute a * x + b * y elementwise for tensors x, y and Python float scalars a, b, in fp32 arithmetic, "
        "returning a new tensor with x's shape and dtype.",
        "def axpby(x: torch.Tensor, y: torch.Tensor, a: float, b: float) -> torch.Tensor",
        _fp32(lambda x, y, a, b: a * x + b * y),
        lambda s, d, g: (randn(s, d, g), randn(s, d, g), 0.5 + float(torch.rand((), generator=g)), -1.25),
        (_axpby_kernel, axpby), FLAT, perf_shapes=PERF_FLAT),
    KernelTask(
        "leaky_relu", "elementwise", 1,
        "Leaky ReLU: return x where x >= 0 and slope * x elsewhere, as a new tensor of x's shape and dtype.",
        "def leaky_relu(x: torch.Tensor, slope: float) -> torch.Tensor",
        lambda x, slope: torch.where(x >= 0, x, x * slope), lambda s, d, g: (randn(s, d, g), 0.01),
        (_leaky_relu_kernel, leaky_relu), FLAT, perf_shapes=PERF_FLAT),
    KernelTask(
        "gelu_tanh", "elementwise", 2,
        "GELU with the tanh approximation, 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))), computed in "
        "fp32 and returned in x's dtype.",
        "def gelu_tanh(x: torch.Tensor) -> torch.Tensor",
        _fp32(_gelu_tanh_ref), lambda s, d, g: (randn(s, d, g, 2.0),), (_gelu_tanh_kernel, gelu_tanh), FLAT,
        perf_shapes=PERF_FLAT),
    KernelTask(
        "silu_mul", "elementwise", 2,
        "The SwiGLU activation: silu(gate) * up, where silu(z) = z * sigmoid(z), fused in one pass, computed in "
        "fp32 and returned in the inputs' dtype.",
        "def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor",
        _fp32(lambda g, u: torch.nn.functional.silu(g) * u), lambda s, d, g: (randn(s, d, g, 2.0), randn(s, d, g)),
        (_silu_mul_kernel, silu_mul), FLAT, perf_shapes=PERF_FLAT),
    KernelTask(
        "bias_gelu", "elementwise", 2,
        "For a 2-D tensor x (rows, cols) and a bias of shape (cols,), return gelu(x + bias) with the exact "
        "(erf) GELU, computed in fp32 and returned in x's dtype.",
        "def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor",
        _fp32(lambda x, b: torch.nn.functional.gelu(x + b)),
        lambda s, d, g: (randn(s, d, g), randn(s[1:], d, g)), (_bias_gelu_kernel, bias_gelu),
        ((7, 33), (16, 100), (3, 257)), perf_shapes=((8192, 4096),)),
    KernelTask(
        "masked_fill", "elementwise", 1,
        "Given x and a boolean tensor keep of the same shape, return a new tensor equal to x where keep is True "
        "and to the float `value` elsewhere (in x's dtype).",
        "def masked_fill(x: torch.Tensor, keep: torch.Tensor, value: float) -> torch.Tensor",
        lambda x, keep, value: torch.where(keep, x, torch.tensor(value, dtype=x.dtype)),
        lambda s, d, g: (randn(s, d, g), torch.rand(s, generator=g) < 0.5, -3.5), (_where_kernel, masked_fill),
        FLAT, perf_shapes=PERF_FLAT),
    KernelTask(
        "lgamma", "elementwise", 2,
        "The log-gamma function of every element of a positive tensor, computed in fp32 and returned in x's dtype.",
        "def lgamma(x: torch.Tensor) -> torch.Tensor",
        _fp32(torch.lgamma), lambda s, d, g: (uniform(s, 0.1, 20.0, g, d),), (_lgamma_kernel, lgamma), FLAT,
        perf_shapes=PERF_FLAT, cpu=False,
        cpu_note="uses libdevice.lgamma; Triton's interpreter has no libdevice"),
    KernelTask(
        "bessel_i0", "elementwise", 2,
        "The modified Bessel function of the first kind of order zero, I0(x), elementwise, computed in fp32 and "
        "returned in x's dtype.",
        "def bessel_i0(x: torch.Tensor) -> torch.Tensor",
        _fp32(torch.special.i0), lambda s, d, g: (uniform(s, -6.0, 6.0, g, d),), (_i0_kernel, bessel_i0), FLAT,
        perf_shapes=PERF_FLAT, cpu=False,
        cpu_note="uses libdevice.cyl_bessel_i0; Triton's interpreter has no libdevice"),
]
