"""MinHash/LSH near-duplicate removal: exact and near duplicates go, distinct problems stay, at scale."""

import random

import numpy as np

from reasonrl.data.sand.dedupe import MinHasher, bucket_links, near_duplicates, shingles

BASE = ("Let n be the smallest positive integer such that n^2 + 5n + 7 is divisible by 13 and by 17. "
        "Find the remainder when n is divided by 1000.")
WORDS = ("triangle circle integer prime divisor sequence polynomial root probability coin die chord tangent "
         "remainder digit sum product square cube area perimeter angle").split()


def random_problem(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(30)) + f" {rng.randint(0, 10**6)}"


def test_signature_agreement_estimates_jaccard():
    hasher = MinHasher(num_perm=256, ngram=3)
    a, b = BASE, BASE.replace("Find the remainder", "Compute the remainder")
    sa, sb = shingles(a, 3), shingles(b, 3)
    exact = len(sa & sb) / len(sa | sb)
    estimate = np.mean(hasher.signature(a) == hasher.signature(b))
    assert 0.4 < exact < 0.95 and abs(estimate - exact) < 0.1
    assert np.mean(hasher.signature(a) == hasher.signature(a.upper())) == 1.0  # case does not matter


def test_duplicates_and_near_duplicates_go_distinct_problems_stay():
    rng = random.Random(0)
    distinct = [random_problem(rng) for _ in range(200)]
    texts = [BASE, *distinct[:100], BASE, BASE.replace("1000", "100"), *distinct[100:],
             "  " + BASE.replace("  ", " ") + " ", BASE.replace("13", "11")]
    dup = near_duplicates(texts, threshold=0.7)
    assert dup[0] is None and all(d is None for d in dup[1:101]) and all(d is None for d in dup[103:203])
    assert dup[101] == 0 and dup[102] == 0  # the exact copy, one number changed
    assert dup[203] == 0 and dup[204] == 0 and len(dup) == 205
    assert near_duplicates(texts, threshold=0.7) == dup  # deterministic


def test_reference_problems_are_never_dropped_and_their_copies_name_them():
    reference = ["Find all primes p with p^2 + 2 prime.", BASE]
    texts = [BASE, "An unrelated question about the area of a regular hexagon of side 3.", reference[0]]
    assert near_duplicates(texts, reference) == [-2, None, -1]  # -1 - i: reference i


def test_buckets_link_members_linearly():
    keys = np.array([5, 1, 5, 5, 2, 1], dtype=np.uint64)
    links = bucket_links(keys)
    assert sorted(links) == sorted([(1, 5), (0, 2), (0, 3), (2, 3)])


def test_twenty_thousand_problems_with_planted_duplicates():
    rng = random.Random(1)
    texts = [random_problem(rng) for _ in range(20_000)]
    planted = sorted(rng.sample(range(1, 20_000), 500))
    for i in planted:  # a copy of an earlier problem with its last word changed
        j = rng.randrange(i)
        texts[i] = texts[j].rsplit(" ", 1)[0] + " 7"
    dup = near_duplicates(texts, threshold=0.8)
    found = {i for i, d in enumerate(dup) if d is not None}
    assert set(planted) <= found  # every planted near-duplicate is found ...
    assert len(found - set(planted)) <= 5  # ... and almost nothing else (copies of copies are duplicates too)
