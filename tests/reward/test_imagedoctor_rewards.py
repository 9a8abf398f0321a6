"""ImageDoctor's heatmap and grounding rewards: hand-computed values, the empty-map rules, hostile boxes."""

import numpy as np
import pytest

from reasonrl.reward.imagedoctor.rewards import compactness, completeness, heatmap_reward, uniqueness

TRUTH = np.zeros((10, 10))
TRUTH[2:6, 2:6] = 1.0  # 16 pixels of mass


def test_heatmap_reward_is_one_minus_the_clipped_scaled_mse():
    pred = TRUTH.copy()
    pred[0, 0] = 0.5  # MSE 0.25 / 100
    assert heatmap_reward(pred, TRUTH, "misalignment") == pytest.approx(1 - 80 * 0.0025)
    assert heatmap_reward(pred, TRUTH, "artifact") == pytest.approx(1 - 40 * 0.0025)
    assert heatmap_reward(1 - TRUTH, TRUTH, "artifact") == 0.0
    assert heatmap_reward(np.full((10, 10), np.nan), TRUTH, "artifact") == 0.0


def test_grounding_rewards_by_hand():
    half = [(2, 2, 6, 4)]  # the top half of the flaw: 8 of 16 pixels, all flawed
    assert completeness(half, TRUTH) == 0.5 and compactness(half, TRUTH) == 1.0 and uniqueness(half, TRUTH) == 1.0
    loose = [(0, 0, 10, 10)]
    assert completeness(loose, TRUTH) == 1.0 and compactness(loose, TRUTH) == pytest.approx(0.16)
    twice = [(2, 2, 6, 6), (2, 2, 6, 4)]  # IoU 8/16
    assert uniqueness(twice, TRUTH) == pytest.approx(0.5)


def test_empty_rules_and_hostile_boxes():
    empty = np.zeros((10, 10))
    for reward in (completeness, compactness, uniqueness):
        assert reward([], empty) == 1.0 and reward([(1, 1, 3, 3)], empty) == 0.0 and reward([], TRUTH) == 0.0
        assert reward([(50, 50, 90, 90), (5, 5, 5, 9), (float('nan'), 0, 3, 3)], TRUTH) == 0.0  # outside the image, empty: no boxes left
    assert completeness([(-100, -100, 1e9, 1e9)], TRUTH) == 1.0  # clipped to the image


def test_judge_and_dense_rewards_by_hand():
    from reasonrl.reward.imagedoctor.rewards import dense_reward, judge_reward

    assert judge_reward({"alignment": 0.5, "aesthetics": 1.0, "plausibility": 0.0, "overall": 0.9}) == pytest.approx(0.5)
    assert judge_reward({"alignment": None, "aesthetics": 1.0}) == pytest.approx(0.1)
    maps = np.zeros((2, 4, 4))
    maps[0, :2, :2] = 1.0  # misalignment in the top-left quarter
    maps[1, :2, :2] = 0.5  # artifact there too: mean 0.75
    dense = dense_reward(0.8, maps, (2, 2))
    np.testing.assert_allclose(dense, [[0.8 * 0.25, 0.8], [0.8, 0.8]])
    with pytest.raises(ValueError, match="pool evenly"):
        dense_reward(0.8, maps, (3, 3))
