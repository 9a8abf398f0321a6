"""Recursive comparison of a candidate's output with the reference's, with the tolerance applied
at every level.

GEAK's evaluator (geak.md §2.3) drops its tolerance inside lists and tuples (they fall back to
allclose's defaults) and never reaches its namedtuple branch. Here one function walks both
structures together and applies the same (atol, rtol) to every floating-point leaf, however
deep: tensors with `|a - b| <= atol + rtol * |b|` elementwise (NaN must meet NaN, infinities
must match), Python floats the same way (a non-finite one on either side must equal the other:
`|a - inf| <= atol + rtol * inf` holds for any a), integer and boolean tensors and every other leaf
exactly. Shapes and dtypes must match: an fp32 answer to an fp16 task is a different kernel.
Lists and tuples are interchangeable (a wrapper may return either); dict keys must match.

`compare` returns None when they agree, else the first difference, as a sentence that names
where it is (`output[1]['mean']`) and by how much; the agent's reflector reads it.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def compare(expected: Any, actual: Any, atol: float, rtol: float, where: str = "output") -> str | None:
    if isinstance(expected, torch.Tensor):
        return _tensor(expected, actual, atol, rtol, where)
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)):
            return f"{where}: expected a sequence of {len(expected)} items, got {_kind(actual)}"
        if len(actual) != len(expected):
            return f"{where}: expected {len(expected)} items, got {len(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            found = compare(e, a, atol, rtol, f"{where}[{i}]")
            if found:
                return found
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{where}: expected a dict, got {_kind(actual)}"
        if set(map(str, expected)) != set(map(str, actual)):
            return f"{where}: expected keys {sorted(map(str, expected))}, got {sorted(map(str, actual))}"
        for key in expected:
            found = compare(expected[key], actual[str(key)], atol, rtol, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(expected, float) and not isinstance(actual, bool) and isinstance(actual, (int, float)):
        return None if _close_scalar(expected, float(actual), atol, rtol) else f"{where}: expected {expected!r}, got {actual!r}"
    if type(expected) is not type(actual) or expected != actual:
        return f"{where}: expected {_kind(expected)} {expected!r:.80}, got {_kind(actual)} {actual!r:.80}"
    return None


def _tensor(expected: torch.Tensor, actual: Any, atol: float, rtol: float, where: str) -> str | None:
    if not isinstance(actual, torch.Tensor):
        return f"{where}: expected a tensor of shape {tuple(expected.shape)}, got {_kind(actual)}"
    if actual.shape != expected.shape:
        return f"{where}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}"
    if actual.dtype != expected.dtype:
        return f"{where}: expected dtype {_dtype(expected)}, got {_dtype(actual)}"
    if not (expected.is_floating_point() or expected.is_complex()):
        if torch.equal(expected, actual):
            return None
        wrong = (expected != actual).sum().item()
        first = tuple(i.item() for i in (expected != actual).nonzero()[0])
        return (f"{where}: {wrong} of {expected.numel()} values differ (exact comparison); first at {first}: "
                f"expected {expected[first].item()}, got {actual[first].item()}")
    unit = "values"
    if expected.is_complex():  # real and imaginary parts each within tolerance (.double() would drop the latter)
        expected, actual = torch.view_as_real(expected.resolve_conj()), torch.view_as_real(actual.resolve_conj())
        unit = "real and imaginary parts"
    e, a = expected.double(), actual.double()
    nan_e, nan_a = torch.isnan(e), torch.isnan(a)
    finite = torch.isfinite(e) & torch.isfinite(a)
    close = (nan_e & nan_a) | (e == a) | (finite & ((a - e).abs() <= atol + rtol * e.abs()))
    if bool(close.all()):
        return None
    bad = ~close
    first = tuple(i.item() for i in bad.nonzero()[0])
    worst = torch.where(finite, (a - e).abs(), torch.full_like(e, math.inf))[bad].max().item()
    return (f"{where}: {int(bad.sum())} of {e.numel()} {unit} outside atol={atol:g}, rtol={rtol:g} (largest error "
            f"{worst:.4g}); first at {first}: expected {e[first].item():.6g}, got {a[first].item():.6g}")


def _close_scalar(expected: float, actual: float, atol: float, rtol: float) -> bool:
    if not (math.isfinite(expected) and math.isfinite(actual)):  # the tensor rule: NaN meets NaN, inf meets inf
        return expected == actual or (math.isnan(expected) and math.isnan(actual))
    return abs(actual - expected) <= atol + rtol * abs(expected)


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({_dtype(value)})"
    return "None" if value is None else type(value).__name__


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def identical(before: Any, after: Any) -> str | None:
    """Exact equality of two argument structures (NaN equal to NaN); the first difference."""
    if isinstance(before, torch.Tensor) or isinstance(after, torch.Tensor):
        if not (isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor)) \
                or after.shape != before.shape or after.dtype != before.dtype:
            return "changed type or shape"
        same = (before == after) | (torch.isnan(before) & torch.isnan(after)) if before.is_floating_point() \
            else before == after
        return None if bool(same.all()) else f"{int((~same).sum())} of {before.numel()} values overwritten"
    if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)) and len(before) == len(after):
        for i, (b, a) in enumerate(zip(before, after)):
            found = identical(b, a)
            if found:
                return f"argument {i}: {found}"
        return None
    return None if before == after else "changed"
