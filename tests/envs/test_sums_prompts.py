"""`sums` prompts: disjoint splits, and a split smaller than asked for comes back whole, not forever."""

import itertools

from reasonrl.envs.sums import SumsEnvironment


def terms(prompt):
    return tuple(int(t) for t in prompt.messages[0]["content"].removeprefix("Add: ").split(" + "))


def test_a_small_split_comes_back_whole_instead_of_looping_forever():
    env = SumsEnvironment(max_terms=2)  # 81 problems in all (the loop never ended when asked for more)
    train, held = env.prompts(split="train"), env.prompts(50, split="eval")
    assert len(train) + len(held) == 81 and len(held) < 50
    everything = {terms(p) for p in train} | {terms(p) for p in held}
    assert everything == set(itertools.product(range(1, 10), repeat=2))
    assert [p.id for p in held] == [f"eval-{i}" for i in range(len(held))] and all(p.answer == sum(terms(p)) for p in held)
    assert [p.id for p in env.prompts(5, split="eval")] == [p.id for p in held[:5]]  # a prefix of the same order


def test_splits_are_disjoint_and_prompts_distinct():
    env = SumsEnvironment(max_terms=6)
    train, held = env.prompts(500, seed=1), env.prompts(200, seed=1, split="eval")
    assert len({terms(p) for p in train}) == 500 and len({terms(p) for p in held}) == 200
    assert not {terms(p) for p in train} & {terms(p) for p in held}


def test_a_used_up_split_is_completed_only_with_problems_the_draws_can_give():
    env = SumsEnvironment(max_terms=6, p=1.0)  # every draw has exactly min_terms = 2 terms
    prompts = env.prompts(200)
    assert len(prompts) < 81 and {len(terms(p)) for p in prompts} == {2}


def test_an_unknown_split_is_refused_not_drawn_from_the_training_side():
    """`reasonrl eval sums: --split test` scored training problems under held-out-looking ids."""
    import pytest

    with pytest.raises(ValueError, match="unknown split 'test'; known: train, eval"):
        SumsEnvironment().prompts(3, split="test")
