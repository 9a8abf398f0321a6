"""Near-duplicate removal with MinHash and locality-sensitive hashing, in numpy, for millions of problems.

SAND-Math deduplicates with `SemHash.self_deduplicate(threshold=0.99)` (embedding similarity).
Departure: MinHash/LSH over word n-grams (Broder 1997; Indyk & Motwani 1998), which needs no
model or endpoint, is exact-duplicate-proof, and scales linearly:

1. A problem is the set of its word n-grams (lower-cased words and single punctuation marks).
2. Its signature is, for each of P hash functions over the 32-bit hashes x of its n-grams, the
   minimum; two signatures agree at a position with probability equal to the Jaccard similarity
   J of the two sets, so the share of agreeing positions estimates J. The functions are
   multiply-add-shift hashes h(x) = ((a x + b) mod 2^64) >> 32 with random 64-bit a (odd) and b,
   a 2-universal family for 32-bit keys (Dietzfelbinger 1996) that uint64 arithmetic computes as
   it wraps.
3. LSH: the signature is cut into B bands of R = P/B rows; problems whose band agrees in at
   least one band are candidates. A pair of similarity J becomes a candidate with probability
   1 - (1 - J^R)^B (an S-curve around (1/B)^(1/R): 0.42 for the default 32 bands of 4 rows).
4. Candidate pairs (each bucket member linked to the bucket's first member and to its
   predecessor: linear in the bucket's size) whose estimated J reaches `threshold` are joined
   (union-find); from each group the earliest problem is kept, the others are dropped naming it.
   Groups are transitive: A~B and B~C drop C even if A and C alone would be kept.

`reference` problems (the accepted base set, when the hiked set is deduplicated) come first and
are never dropped: a candidate in a group with one is dropped as its near-duplicate.
Memory: 4 P bytes per problem (512 B for P = 128) plus one 8-byte band key per problem at a time.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from .problem import Problem, Verdict

_TOKEN = re.compile(r"\w+|[^\w\s]")


def shingles(text: str, n: int) -> set[str]:
    words = _TOKEN.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


class MinHasher:
    def __init__(self, num_perm: int = 128, ngram: int = 3, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(0, 1 << 64, num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
        self.b = rng.integers(0, 1 << 64, num_perm, dtype=np.uint64, endpoint=False)
        self.ngram = ngram

    def signature(self, text: str) -> np.ndarray:
        """(num_perm,) uint32: the minimum of each hash function over the text's n-grams."""
        x = np.fromiter((zlib.crc32(s.encode()) for s in shingles(text, self.ngram)), dtype=np.uint64)
        hashed = (x[:, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)  # (n-grams, num_perm), wraps
        return hashed.min(axis=0).astype(np.uint32)

    def signatures(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), len(self.a)), dtype=np.uint32)
        for i, text in enumerate(texts):
            out[i] = self.signature(text)
        return out


def groups(signatures: np.ndarray, bands: int, threshold: float) -> np.ndarray:
    """(N,) index of the earliest member of each problem's group of near-duplicates."""
    n, num_perm = signatures.shape
    parent = np.arange(n)
    rows = num_perm // bands
    mix = np.random.default_rng(1).integers(1, 1 << 63, rows, dtype=np.uint64) | np.uint64(1)
    for band in range(bands):
        keys = (signatures[:, band * rows:(band + 1) * rows].astype(np.uint64) * mix).sum(axis=1)  # wraps mod 2**64
        for first, member in bucket_links(keys):
            if np.mean(signatures[first] == signatures[member]) >= threshold:
                _union(parent, first, member)
    return np.array([_find(parent, i) for i in range(n)])


def bucket_links(keys: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, sharing a key: each member linked to its bucket's first and to its predecessor."""
    order = np.argsort(keys, kind="stable")  # equal keys stay in index order
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    links = []
    for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
        members = order[start:end]
        links += [(int(members[0]), int(m)) for m in members[1:]]
        links += [(int(a), int(b)) for a, b in zip(members[1:-1], members[2:])]
    return links


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return int(i)


def _union(parent: np.ndarray, i: int, j: int) -> None:
    a, b = _find(parent, i), _find(parent, j)
    if a != b:
        parent[max(a, b)] = min(a, b)  # the root is the earliest member


def near_duplicates(texts: list[str], reference: list[str] = (), num_perm: int = 128, bands: int = 32,
                    ngram: int = 3, threshold: float = 0.8, seed: int = 0) -> list[int | None]:
    """For each text: None (kept), or the index of what it duplicates (< 0: reference -1 - i)."""
    hasher = MinHasher(num_perm, ngram, seed)
    sig = hasher.signatures([*reference, *texts])
    root = groups(sig, bands, threshold)
    offset, out = len(reference), []
    for i in range(offset, len(sig)):
        r = int(root[i])
        out.append(None if r == i else (r - offset if r >= offset else -1 - r))
    return out


def dedupe_stage(problems: list[Problem], reference: list[Problem]):
    """The stage function for `run_stage`: decides over the whole list (the decision of one problem
    depends on the others), then returns the verdicts of the ones asked for."""

    def decide(ctx, name: str, todo: list[Problem]) -> list[Verdict]:
        cfg = ctx.recipe.dedupe
        dup = near_duplicates([p.problem for p in problems], [p.problem for p in reference], cfg.num_perm,
                              cfg.bands, cfg.ngram, cfg.threshold, ctx.recipe.run.seed)
        verdict = {}
        for p, d in zip(problems, dup):
            if d is None:
                verdict[p.id] = Verdict.keep(p)
            elif d < 0:
                verdict[p.id] = Verdict.drop(p, "near-duplicate of a base problem", reference[-1 - d].id)
            else:
                verdict[p.id] = Verdict.drop(p, "near-duplicate", problems[d].id)
        return [verdict[p.id] for p in todo]

    return decide
