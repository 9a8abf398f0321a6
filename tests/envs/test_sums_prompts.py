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


def test_a_tolerance_makes_the_outcome_lenient_and_leaves_the_step_labels_exact():
    """`sums:?tolerance=2`: a grader with a numeric tolerance, which a round-number guess near the total
    passes, while the process labels still call that box wrong (the case a PRM is for)."""
    import pytest

    from reasonrl.envs.registry import load_environment

    exact, lenient = load_environment("sums:"), load_environment("sums:?tolerance=2")
    prompt = exact.prompts(1, seed=3)[0]
    near, far = f"\\boxed{{{prompt.answer + 2}}}", f"\\boxed{{{prompt.answer + 3}}}"
    assert [exact.score(prompt, r) for r in (near, far)] == [0.0, 0.0]
    assert [lenient.score(prompt, r) for r in (near, far)] == [1.0, 0.0]
    assert lenient.step_labels(prompt, [near]) == exact.step_labels(prompt, [near]) == [0]
    for garbage in ("\\boxed{²}", "\\boxed{-1}", "\\boxed{1e9}", "\\boxed{}", "", "\\boxed{" + "9" * 40 + "}"):
        assert lenient.score(prompt, garbage) == 0.0
    assert exact.score(prompt, f"\\boxed{{0{prompt.answer}}}") == 0.0  # exact stays a string match
    with pytest.raises(ValueError, match="tolerance"):
        load_environment("sums:?tolerance=-1")
