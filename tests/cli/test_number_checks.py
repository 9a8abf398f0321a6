"""The shared check of a config's real-valued fields (reasonrl.config.finite_numbers)."""

import math
from dataclasses import dataclass

import pytest

from reasonrl.config import finite_numbers, is_number


@dataclass
class Weights:
    lr: float = 1e-3
    eps: float = 0.0
    threshold: float = -2.5


def check(w: Weights) -> None:
    finite_numbers(w, above={"lr": 0}, at_least={"eps": 0, "threshold": -math.inf}, prefix="optim.")


@pytest.mark.parametrize("value", [True, "1", None, float("nan"), float("inf"), -float("inf")])
def test_what_is_not_a_finite_number(value):
    assert not is_number(value)
    with pytest.raises(ValueError, match=rf"^optim\.threshold must be a finite number, got {value!r}$".replace("(", r"\(")):
        check(Weights(threshold=value))


def test_bounds_strict_and_inclusive_name_the_field():
    check(Weights(lr=1e-9, eps=0, threshold=-1e300))  # an int is a number; the inclusive bound is allowed
    assert is_number(3) and is_number(-0.5)
    with pytest.raises(ValueError, match=r"^optim\.lr must be a finite number > 0, got 0$"):
        check(Weights(lr=0))
    with pytest.raises(ValueError, match=r"^optim\.eps must be a finite number >= 0, got -1e-09$"):
        check(Weights(eps=-1e-9))
    with pytest.raises(ValueError, match=r"^optim\.lr must be a finite number > 0, got nan$"):
        check(Weights(lr=float("nan")))  # NaN is refused, not waved through by `nan <= 0` being false
