"""Advantage estimators and DAPO's batch-side rules against numbers worked out by hand."""

import math

import pytest
import torch

from reasonrl.rl import advantages
from reasonrl.rl.advantages import (
    AdvantageConfig,
    dynamic_sampling_mask,
    get_advantage,
    grpo_advantages,
    overlong_penalty,
    register_advantage,
)

# Groups are found by id, not by position: ids interleave, skip values, and vary in size.
#   group 0: [1, 0, 0, 1]      group 3: [3, 0, 0]      group 1: [0.1] * 3      group 7: [2]
REWARDS = torch.tensor([1.0, 3.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.1, 2.0, 0.1, 0.1])
GROUPS = torch.tensor([0, 3, 0, 3, 0, 3, 0, 1, 7, 1, 1])


def test_grpo_by_hand():
    adv = grpo_advantages(REWARDS, GROUPS, AdvantageConfig())
    # group 0: mean 0.5; unbiased var = 4 * 0.5^2 / (4 - 1) = 1/3, std = 0.57735; A = +-0.5 / (std + 1e-6)
    a0 = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    # group 3: mean 1; deviations [2, -1, -1], var = 6 / 2 = 3, std = sqrt 3; A = dev / (sqrt 3 + 1e-6)
    s3 = math.sqrt(3) + 1e-6
    # group 1 is flat and group 7 has one sample: exactly 0
    expected = [a0, 2 / s3, -a0, -1 / s3, -a0, -1 / s3, a0, 0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(adv, torch.tensor(expected))
    assert adv.dtype == torch.float32
    assert (adv[[7, 8, 9, 10]] == 0).all()


def test_std_is_unbiased():
    # [1, 0]: mean 0.5, unbiased std = sqrt(0.5 / 1) = 0.7071 -> A = +-0.7071 (biased std 0.5 would give +-1)
    adv = grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), AdvantageConfig(eps=0.0))
    torch.testing.assert_close(adv, torch.tensor([math.sqrt(0.5), -math.sqrt(0.5)]))


def test_dr_grpo_only_centres():
    adv = grpo_advantages(REWARDS, GROUPS, AdvantageConfig(std_normalize=False))
    # r - group mean: group 0 -> +-0.5, group 3 -> [2, -1, -1], flat groups -> 0
    expected = [0.5, 2.0, -0.5, -1.0, -0.5, -1.0, 0.5, 0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(adv, torch.tensor(expected))


@pytest.mark.parametrize("std_normalize", [True, False])
@pytest.mark.parametrize("eps", [1e-6, 0.0])
def test_flat_groups_give_exact_zeros_not_nan(std_normalize, eps):
    cfg = AdvantageConfig(std_normalize=std_normalize, eps=eps)
    # seven float64 rewards of 0.1: their float mean is 0.1 + 1.4e-17 and their std 1.5e-17, so
    # without the flat rule A would be ~1e-11 (eps 1e-6) or 0.93 (eps 0); zeros: 0/0 with eps 0
    for rewards in (torch.full((7,), 0.1, dtype=torch.float64), torch.zeros(4), torch.tensor([5.0])):
        adv = grpo_advantages(rewards, torch.zeros(len(rewards), dtype=torch.long), cfg)
        assert (adv == 0).all()
    assert grpo_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long), cfg).shape == (0,)


def test_integer_rewards_and_shape_errors():
    adv = grpo_advantages(torch.tensor([1, 0]), torch.tensor([0, 0]), AdvantageConfig(std_normalize=False))
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5]))
    with pytest.raises(ValueError, match="group_ids"):
        grpo_advantages(torch.zeros(3), torch.zeros(2, dtype=torch.long), AdvantageConfig())


def test_dynamic_sampling_keeps_groups_with_signal():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.0, 0.0, 0.2, 0.7])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 4, 4])
    # group 0 all 1, group 2 a single sample, group 3 all 0: dropped; groups 1 and 4 differ: kept
    keep = dynamic_sampling_mask(rewards, groups)
    assert keep.tolist() == [False, False, False, True, True, False, False, False, True, True]
    # equality, not std > 0: seven float64 0.1s have a float std of 1.5e-17 and are still flat
    near_flat = torch.full((7,), 0.1, dtype=torch.float64)
    assert not dynamic_sampling_mask(near_flat, torch.zeros(7, dtype=torch.long)).any()


@pytest.mark.parametrize(
    "length,expected",
    [
        (0, 0.0),
        (16, 0.0),  # <= Lmax - Lcache = 20 - 4
        (17, -0.25),  # (16 - 17) / 4
        (19, -0.75),  # (16 - 19) / 4
        (20, -1.0),  # (16 - 20) / 4, the last length inside the ramp
        (21, -1.0),  # beyond Lmax
    ],
)
def test_overlong_penalty_by_hand(length, expected):
    assert overlong_penalty(length, max_len=20, cache_len=4) == expected


def test_overlong_penalty_paper_values():
    # Lmax = 20480, Lcache = 4096: 16384 free, then a ramp to -1
    assert overlong_penalty(16384, 20480, 4096) == 0.0
    assert overlong_penalty(18432, 20480, 4096) == -0.5  # (16384 - 18432) / 4096
    assert overlong_penalty(30000, 20480, 0) == -1.0  # no ramp: only beyond Lmax
    assert overlong_penalty(20480, 20480, 0) == 0.0


@pytest.mark.parametrize(
    "args,name",
    [((5, 0, 0), "max_len"), ((5, 20, 21), "cache_len"), ((5, 20, -1), "cache_len"), ((-1, 20, 4), "length")],
)
def test_overlong_penalty_errors_name_the_argument(args, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        overlong_penalty(*args)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(name="ppo"), "name"),
        (dict(std_normalize="yes"), "std_normalize"),
        (dict(eps=-1.0), "eps"),
        (dict(eps=float("nan")), "eps"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"AdvantageConfig\.{field}"):
        AdvantageConfig(**kwargs)


def test_registry(monkeypatch):
    assert get_advantage("grpo") is grpo_advantages
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'ppo'; known: grpo"):
        get_advantage("ppo")
    with pytest.raises(ValueError, match="already registered"):
        register_advantage("grpo")(grpo_advantages)
    monkeypatch.setattr(advantages, "_ESTIMATORS", dict(advantages._ESTIMATORS))  # keep the real one clean

    @register_advantage("raw")
    def raw(rewards, group_ids, cfg):
        return rewards

    assert get_advantage("raw") is raw
    assert AdvantageConfig(name="raw").name == "raw"
