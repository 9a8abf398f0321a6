"""LayerNorm and RMSNorm, forward and backward, and the fused residual-add RMSNorm (levels 3-4).

One program per row with the whole row in one block (BLOCK = next power of two >= cols);
the backward kernels add each row's weight and bias gradients into fp32 buffers atomically.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..task import KernelTask, randn

ROWS = ((7, 33), (16, 1000), (5, 2049))
PERF_ROWS = ((8192, 4096), (4096, 8192))
HALF_TOL = {torch.float16: (2e-2, 2e-2), torch.bfloat16: (3e-2, 3e-2)}


@triton.jit
def _layer_norm_kernel(x_ptr, w_ptr, b_ptr, y_ptr, cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    ok = c < cols
    x = tl.load(x_ptr + row * cols + c, mask=ok, other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / cols
    xc = tl.where(ok, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 0) / cols + eps)
    w = tl.load(w_ptr + c, mask=ok, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * cols + c, (xc * rstd * w + b).to(y_ptr.dtype.element_ty), mask=ok)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.contiguous()
    rows, cols = x.shape
    y = torch.empty_like(x)
    _layer_norm_kernel[(rows,)](x, weight, bias, y, cols, eps, BLOCK=triton.next_power_of_2(cols))
    return y


@triton.jit
def _layer_norm_bwd_kernel(dy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr, cols,
                           BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    ok = c < cols
    x = tl.load(x_ptr + row * cols + c, mask=ok, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + row * cols + c, mask=ok, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + c, mask=ok, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + row)
    rstd = tl.load(rstd_ptr + row)
    xhat = tl.where(ok, (x - mean) * rstd, 0.0)
    wdy = w * dy
    c1 = tl.sum(xhat * wdy, 0) / cols
    c2 = tl.sum(wdy, 0) / cols
    dx = (wdy - (xhat * c1 + c2)) * rstd
    tl.store(dx_ptr + row * cols + c, dx.to(dx_ptr.dtype.element_ty), mask=ok)
    tl.atomic_add(dw_ptr + c, dy * xhat, mask=ok)
    tl.atomic_add(db_ptr + c, dy, mask=ok)


def layer_norm_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                        rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dy, x = dy.contiguous(), x.contiguous()
    rows, cols = x.shape
    dx = torch.empty_like(x)
    dw = torch.zeros(cols, dtype=torch.float32, device=x.device)
    db = torch.zeros(cols, dtype=torch.float32, device=x.device)
    _layer_norm_bwd_kernel[(rows,)](dy, x, weight, mean, rstd, dx, dw, db, cols, BLOCK=triton.next_power_of_2(cols))
    return dx, dw.to(weight.dtype), db.to(weight.dtype)


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, y_ptr, sum_ptr, cols, eps, HAS_RESIDUAL: tl.constexpr,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    ok = c < cols
    x = tl.load(x_ptr + row * cols + c, mask=ok, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(res_ptr + row * cols + c, mask=ok, other=0.0).to(tl.float32)
        x = x.to(sum_ptr.dtype.element_ty).to(tl.float32)  # normalize the sum as stored
        tl.store(sum_ptr + row * cols + c, x.to(sum_ptr.dtype.element_ty), mask=ok)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / cols + eps)
    w = tl.load(w_ptr + c, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * cols + c, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=ok)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.contiguous()
    rows, cols = x.shape
    y = torch.empty_like(x)
    _rms_norm_kernel[(rows,)](x, x, weight, y, y, cols, eps, HAS_RESIDUAL=False, BLOCK=triton.next_power_of_2(cols))
    return y


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    x, residual = x.contiguous(), residual.contiguous()
    rows, cols = x.shape
    y, total = torch.empty_like(x), torch.empty_like(x)
    _rms_norm_kernel[(rows,)](x, residual, weight, y, total, cols, eps, HAS_RESIDUAL=True,
                              BLOCK=triton.next_power_of_2(cols))
    return y, total


@triton.jit
def _rms_norm_bwd_kernel(dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    ok = c < cols
    x = tl.load(x_ptr + row * cols + c, mask=ok, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + row * cols + c, mask=ok, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + c, mask=ok, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + row)
    wdy = w * dy
    # y = x * r * w with r = (mean(x^2) + eps)^-1/2:  dx = r * w dy - x r^3 * mean(w dy x)
    dx = rstd * wdy - x * rstd * rstd * rstd * (tl.sum(wdy * x, 0) / cols)
    tl.store(dx_ptr + row * cols + c, dx.to(dx_ptr.dtype.element_ty), mask=ok)
    tl.atomic_add(dw_ptr + c, dy * x * rstd, mask=ok)


def rms_norm_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                      rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dy, x = dy.contiguous(), x.contiguous()
    rows, cols = x.shape
    dx = torch.empty_like(x)
    dw = torch.zeros(cols, dtype=torch.float32, device=x.device)
    _rms_norm_bwd_kernel[(rows,)](dy, x, weight, rstd, dx, dw, cols, BLOCK=triton.next_power_of_2(cols))
    return dx, dw.to(weight.dtype)


# --- references: autograd of the fp32 forward ----------------------------------------------------


def _ln_ref(x, w, b, eps):
    return torch.nn.functional.layer_norm(x.float(), x.shape[-1:], w.float(), b.float(), eps).to(x.dtype)


def _rms_ref(x, w, eps):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


def _fused_ref(x, residual, w, eps):
    total = (x.float() + residual.float()).to(x.dtype)
    return _rms_ref(total, w, eps), total


def _ln_bwd_ref(dy, x, w, mean, rstd):
    """Autograd through the fp32 forward (mean and rstd recomputed from x: the same numbers)."""
    x32 = x.float().requires_grad_(True)
    w32 = w.float().requires_grad_(True)
    b32 = torch.zeros_like(w32, requires_grad=True)
    y = torch.nn.functional.layer_norm(x32, x.shape[-1:], w32, b32, _EPS)
    dx, dw, db = torch.autograd.grad(y, (x32, w32, b32), dy.float())
    return dx.to(x.dtype), dw.to(w.dtype), db.to(w.dtype)


def _rms_bwd_ref(dy, x, w, rstd):
    x32 = x.float().requires_grad_(True)
    w32 = w.float().requires_grad_(True)
    r = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + _EPS)
    dx, dw = torch.autograd.grad(x32 * r * w32, (x32, w32), dy.float())
    return dx.to(x.dtype), dw.to(w.dtype)


_EPS = 1e-5


def _ln_inputs(s, d, g):
    return randn(s, d, g, 2.0) + 1.0, randn(s[1:], d, g) + 1.0, randn(s[1:], d, g), _EPS


def _ln_bwd_inputs(s, d, g):
    x = randn(s, d, g, 2.0) + 1.0
    mean = x.float().mean(-1)
    rstd = torch.rsqrt(x.float().var(-1, unbiased=False) + _EPS)
    return randn(s, d, g), x, randn(s[1:], d, g) + 1.0, mean, rstd


def _rms_bwd_inputs(s, d, g):
    x = randn(s, d, g, 2.0)
    rstd = torch.rsqrt(x.float().pow(2).mean(-1) + _EPS)
    return randn(s, d, g), x, randn(s[1:], d, g) + 1.0, rstd


TASKS = [
    KernelTask(
        "layer_norm", "norm", 3,
        "LayerNorm over the last dimension of a 2-D tensor x (rows, cols): (x - mean) / sqrt(var + eps) * weight "
        "+ bias, with the biased variance, computed in fp32 and returned in x's dtype.",
        "def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor",
        _ln_ref, _ln_inputs, (_layer_norm_kernel, layer_norm), ROWS, tolerance=HALF_TOL, perf_shapes=PERF_ROWS),
    KernelTask(
        "layer_norm_backward", "norm", 4,
        "The backward pass of LayerNorm y = (x - mean) * rstd * weight + bias for a 2-D x, given the upstream "
        "gradient dy, x, weight and the forward's saved per-row mean and rstd (fp32, shape (rows,)). Return "
        "(dx, dweight, dbias): dx in x's dtype treating mean and rstd as functions of x (the usual LayerNorm "
        "gradient), dweight and dbias summed over rows, in weight's dtype.",
        "def layer_norm_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, "
        "rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]",
        _ln_bwd_ref, _ln_bwd_inputs, (_layer_norm_bwd_kernel, layer_norm_backward), ROWS,
        tolerance={torch.float32: (1e-3, 1e-3), **HALF_TOL}, perf_shapes=PERF_ROWS),
    KernelTask(
        "rms_norm", "norm", 3,
        "RMSNorm over the last dimension of a 2-D tensor: x / sqrt(mean(x^2) + eps) * weight, computed in fp32 "
        "and returned in x's dtype.",
        "def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor",
        _rms_ref, lambda s, d, g: (randn(s, d, g, 2.0), randn(s[1:], d, g) + 1.0, _EPS),
        (_rms_norm_kernel, rms_norm), ROWS, dtypes=(torch.float32, torch.float16, torch.bfloat16),
        tolerance=HALF_TOL, perf_shapes=PERF_ROWS),
    KernelTask(
        "rms_norm_backward", "norm", 4,
        "The backward pass of RMSNorm y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps) (eps = 1e-5), for a "
        "2-D x, given dy, x, weight and the forward's saved per-row rstd (fp32, shape (rows,)). Return (dx, "
        "dweight): dx in x's dtype with rstd treated as a function of x, dweight summed over rows in weight's "
        "dtype.",
        "def rms_norm_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) "
        "-> tuple[torch.Tensor, torch.Tensor]",
        _rms_bwd_ref, _rms_bwd_inputs, (_rms_norm_bwd_kernel, rms_norm_backward), ROWS,
        dtypes=(torch.float32, torch.float16, torch.bfloat16),
        tolerance={torch.float32: (1e-3, 1e-3), **HALF_TOL}, perf_shapes=PERF_ROWS),
    KernelTask(
        "fused_add_rms_norm", "norm", 3,
        "Fused residual add and RMSNorm: h = x + residual (rounded to x's dtype), y = h / sqrt(mean(h^2) + eps) "
        "* weight computed in fp32. Return (y, h), both in x's dtype.",
        "def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) "
        "-> tuple[torch.Tensor, torch.Tensor]",
        _fused_ref, lambda s, d, g: (randn(s, d, g), randn(s, d, g), randn(s[1:], d, g) + 1.0, _EPS),
        (_rms_norm_kernel, fused_add_rms_norm), ROWS, dtypes=(torch.float32, torch.float16, torch.bfloat16),
        tolerance=HALF_TOL, perf_shapes=PERF_ROWS),
]
