"""compare(): the tolerance holds at every depth (GEAK dropped it inside lists and tuples)."""

import collections
import math

import pytest
import torch

from reasonrl.envs.kernels.evaluate.compare import compare, identical
from reasonrl.envs.kernels.evaluate.runner import Unrepresentable, plain


def test_tolerance_applies_inside_nested_containers():
    ref = {"a": [torch.ones(3), (torch.zeros(2), 1.0)], "b": 7}
    ok = {"a": [torch.ones(3) + 5e-3, (torch.zeros(2) + 5e-3, 1.004)], "b": 7}
    assert compare(ref, ok, atol=1e-2, rtol=0.0) is None
    # GEAK's list branch fell back to allclose's defaults (1e-5 / 1e-8 and 1e-3 in places): 5e-3 off
    # would fail there although it is well inside atol=1e-2. And a too-large error deep inside fails here:
    bad = {"a": [torch.ones(3), (torch.tensor([0.0, 0.5]), 1.0)], "b": 7}
    message = compare(ref, bad, atol=1e-2, rtol=0.0)
    assert message.startswith("output['a'][1][0]: 1 of 2 values") and "largest error 0.5" in message


def test_shapes_dtypes_kinds_and_keys_must_match():
    x = torch.ones(2, 3)
    assert "shape" in compare(x, torch.ones(3, 2), 1, 1)
    assert "dtype" in compare(x, x.half(), 1, 1)
    assert "expected a tensor" in compare(x, None, 1, 1)
    assert "2 items" in compare((x, x), [x], 1, 1)
    assert compare((x, x), [x, x], 0, 0) is None  # a list answers a tuple
    assert "keys" in compare({"a": x}, {"b": x}, 1, 1)


def test_integers_are_exact_and_nan_meets_nan():
    ints = torch.tensor([1, 2, 3])
    assert compare(ints, torch.tensor([1, 2, 3]), 10, 10) is None
    assert "exact" in compare(ints, torch.tensor([1, 2, 4]), 10, 10)
    f = torch.tensor([1.0, math.nan, math.inf])
    assert compare(f, torch.tensor([1.0, math.nan, math.inf]), 0, 0) is None
    assert compare(f, torch.tensor([1.0, 0.0, math.inf]), 1, 1) is not None
    assert compare(f, torch.tensor([1.0, math.nan, -math.inf]), 1, 1) is not None
    assert compare(1.0, 1.05, 0.1, 0) is None and compare(1.0, 1.5, 0.1, 0) is not None
    assert compare(3, 3.0, 0, 0) is not None  # an int answer where an int is expected stays exact


def test_relative_tolerance_scales_with_the_reference():
    ref = torch.tensor([1000.0, 1.0])
    assert compare(ref, torch.tensor([1000.5, 1.0]), atol=1e-3, rtol=1e-3) is None
    assert compare(ref, torch.tensor([1000.0, 1.5]), atol=1e-3, rtol=1e-3) is not None


def test_identical_finds_overwritten_inputs():
    a = torch.randn(4)
    assert identical((a, 2.0), (a.clone(), 2.0)) is None
    b = a.clone()
    b[1] = 0
    assert "argument 0: 1 of 4 values overwritten" == identical((a, 2.0), (b, 2.0))


def test_complex_outputs_compare_both_parts():
    """.double() on a complex tensor keeps the real part only: any imaginary part passed."""
    ref = torch.tensor([1 + 1j, 2 + 2j])
    assert compare(ref, torch.tensor([1 + 1.001j, 2 + 2j]), atol=1e-2, rtol=0) is None
    assert "1 of 4 real and imaginary parts" in compare(ref, torch.tensor([1 + 100j, 2 + 2j]), atol=1e-2, rtol=0)
    assert compare(ref, torch.tensor([1 - 1j, 2 - 2j]).conj(), atol=0, rtol=0) is None  # a lazy conjugate is its value


def test_identical_tells_a_scalar_from_a_tensor():
    assert identical((torch.ones(2), 2.0), (torch.ones(2), torch.tensor(2.0))) == "argument 1: changed type or shape"


def test_a_non_finite_scalar_must_be_met_exactly():
    """|a - inf| <= atol + rtol * inf holds for every a: an expected inf accepted any float."""
    pairs = [(math.inf, -math.inf), (math.inf, 0.0), (-math.inf, 1e308), (1.0, math.inf), (math.nan, 1.0)]
    for expected, actual in pairs:
        assert compare(expected, actual, 1e-4, 1e-4) is not None, (expected, actual)
        assert compare((torch.ones(2), expected), (torch.ones(2), actual), 1e-2, 1e-2) is not None
    for value in (math.inf, -math.inf, math.nan):
        assert compare(value, value, 0, 0) is None  # NaN meets NaN, as in a tensor


def test_plain_keeps_what_it_can_compare_and_refuses_the_rest():
    """An OrderedDict, a defaultdict, a dtype or a nest deeper than 8 became the same placeholder string
    on both sides, and equal placeholders passed: a wrong kernel passed a task whose gold was an OrderedDict."""
    right, wrong = torch.arange(4.0), torch.full((4,), 1e6)
    for kind in (collections.OrderedDict, lambda **kw: collections.defaultdict(list, **kw)):
        gold, got = plain(kind(case_1=right)), plain(kind(case_1=wrong))
        assert type(gold) is dict and compare(gold, got, 1e-2, 1e-1) is not None
    assert plain({"dtype": torch.float16, "device": torch.device("cpu")}) == {"dtype": "torch.float16", "device": "cpu"}
    assert compare(plain(torch.float16), plain(torch.float32), 0, 0) is not None
    nested = right
    for _ in range(10):
        nested = [nested]
    for unrepresentable in (nested, {1, 2}, object(), {1: right, "1": wrong}):
        with pytest.raises(Unrepresentable):
            plain(unrepresentable)
