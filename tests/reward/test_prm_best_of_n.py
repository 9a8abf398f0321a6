"""Best-of-N selection rules and bootstrap curves."""

import pytest

from reasonrl.reward.prm.best_of_n import Candidate, curves, majority, rules


def c(answer, correct, scores, orm=None):
    return Candidate(answer, correct, scores, orm)


def test_rules_pick_what_they_should():
    pool = [c("5", False, [0.9, 0.2]), c("5", False, [0.8, 0.3]), c("6", True, [0.7, 0.6], 0.1), c(None, False, [0.95, 0.5])]
    pool[0].orm_score, pool[1].orm_score, pool[3].orm_score = 0.9, 0.2, 0.3
    r = rules("min", with_orm=True)
    assert r["majority"](pool).answer == "5"                       # two votes against one
    assert r["prm-min"](pool).answer == "6" and r["prm-last"](pool).answer == "6"   # min .6, last .6
    assert r["prm-mean"](pool).answer is None and r["prm-product"](pool).answer is None  # .725 and .475 win
    assert r["prm-vote"](pool).answer == "6"                       # 0.6 against 0.2 + 0.3
    assert r["orm"](pool) is pool[0] and r["oracle"](pool).correct
    assert majority([c(None, False, [])]).answer is None


def test_a_vote_counts_answers_equal_in_value_as_one():
    """\\frac{1}{2}, 0.5 and 1/2 were three answers of one vote each: 3, twice, won a math vote."""
    pool = [c("\\frac{1}{2}", True, [0.5]), c("0.5", True, [0.5]), c("1/2", True, [0.5]), c("3", False, [0.9]),
            c("3", False, [0.9]), c("$\\dfrac{1}{2}$", True, [0.5])]
    assert majority(pool[:5]).answer == "\\frac{1}{2}"  # the first drawn of the winning answer
    assert rules("min")["prm-vote"](pool).correct  # 4 x 0.5 against 2 x 0.9
    assert majority([c("x+1", False, []), c("x + 1", True, []), c("2", False, [])]).answer == "x+1"
    assert majority([c("3", False, []), c("3", False, []), c("x = 2", True, []), c("2", True, []), c("y=2", True, [])]).correct
    assert majority([c("999", False, []), c("999", False, []), c("1,000", True, []), c("1000", True, []),
                     c("1{,}000", True, [])]).correct


def test_curves_rank_a_perfect_verifier_above_majority_and_n1_equals_the_sample_accuracy():
    # each problem: 3 of 8 samples right (with a perfect PRM score), the 5 wrong ones share one answer
    pools = [[c("r", True, [1.0])] * 3 + [c("w", False, [0.1])] * 5 for _ in range(20)]
    out = curves(pools, [1, 4, 8], rules(), trials=100)
    assert out["majority"][8]["accuracy"] == 0.0 and out["prm-min"][8]["accuracy"] == 1.0
    assert out["prm-min"][1]["accuracy"] == pytest.approx(3 / 8, abs=0.05)
    assert out["prm-min"][1]["low"] <= out["prm-min"][1]["accuracy"] <= out["prm-min"][1]["high"]
    assert out["oracle"][4]["accuracy"] >= out["prm-min"][4]["accuracy"] > out["majority"][4]["accuracy"]


def test_pools_smaller_than_n_are_refused():
    with pytest.raises(ValueError, match="N=4"):
        curves([[c("a", True, [1.0])] * 3], [1, 4], rules())
