"""Held-out `sums` problems for the miniature: a base split and a hard split, as JSONL.

    python -m reasonrl.data.sand.mini.splits --out data/sums     # base.jsonl, hard.jsonl

base: 2-6 terms (the teacher's own range); hard: 7-10 terms (what hiking aims at). Digits 1-9,
no problem in both, rows {"id", "problem", "answer", "terms"}. They are the evaluation sets of
the miniature: decontamination keeps them out of the generated data, and accuracy is measured
on them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from .teacher import problem_text

SPLITS = {"base": (2, 6), "hard": (7, 10)}


def split(name: str, n: int, seed: int = 0) -> list[dict]:
    low, high = SPLITS[name]
    rng, seen, rows = random.Random(f"{name}:{seed}"), set(), []
    while len(rows) < n:
        terms = tuple(rng.randint(1, 9) for _ in range(rng.randint(low, high)))
        if terms in seen:
            continue
        seen.add(terms)
        rows.append({"id": f"{name}-{len(rows)}", "problem": problem_text(list(terms)), "answer": str(sum(terms)),
                     "terms": len(terms)})
    return rows


def write_splits(out: str | Path, n: int = 300, seed: int = 0) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in SPLITS:
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(row) + "\n" for row in split(name, n, seed)))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for base.jsonl and hard.jsonl")
    parser.add_argument("--n", type=int, default=300, help="problems per split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, path in write_splits(args.out, args.n, args.seed).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
