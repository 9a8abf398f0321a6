"""`sums`: add a list of single-digit numbers, showing the running total: the demo's task.

    prompt:   Add: 4 + 7 + 2 + 9
    response: 4+7=11 11+2=13 13+9=22 \\boxed{22}

The number of terms follows a geometric law (2 terms most often, up to `max_terms`), so the
chain of thought, one step per term, varies a lot in length: a few rollouts are long, most
short, as in reasoning RL. The reward is 1 when the last `\\boxed{}` holds the exact sum.
`min_terms` raises the shortest problem (a held-out hard split: `sums:?min_terms=7`).
`tolerance` makes the verifier lenient, as a grader with a numeric tolerance is: a box within
`tolerance` of the sum is rewarded too (`sums:?tolerance=2`), so a round-number guess near the
total often passes. The step labels stay exact: with it, the outcome reward accepts answers the
process labels call wrong, the case a process reward model is for (docs/prm.md).

Every step of a worked response (steps separated by spaces: each `a+b=c` running total, then
`\\boxed{s}`) is exactly right or wrong, so `step_labels` gives exact process labels: step k is
right when it and every step before it are (the running total so far is the true one, the term is
the next term, the final box holds the sum). A slip makes its step and every later one wrong,
which is what a completer's Monte Carlo estimate measures (no continuation recovers from it).

`traces()` writes supervised traces that are deliberately imperfect, so that RL has something
to fix: on problems of `lazy_from` terms or more, most of them skip the work and box a
round-number guess, and a few running totals are off by one. A policy fine-tuned on them works
short problems out, and on long ones usually guesses (greedy decoding always does), although it
has seen, and can sample, the worked-out form that would have been right.
"""

from __future__ import annotations

import itertools
import random
import re
import zlib

from reasonrl.envs.base import Environment, Prompt
from reasonrl.envs.math.extract import last_boxed

_STEP = re.compile(r"(\d{1,6})\+(\d{1,6})=(\d{1,7})")
_BOX = re.compile(r"\\boxed\{(\d{1,7})\}")
_NUMBER = re.compile(r"[0-9]{1,7}")


MAX_MISSES = 10_000  # draws in a row that give no new problem of the split before it is taken as used up


def _held_out(terms: tuple[int, ...]) -> bool:
    """Train and eval never share a problem: the split is a hash of the terms (a tenth held out)."""
    return zlib.crc32(repr(terms).encode()) % 10 == 0


def problem_terms(rng: random.Random, max_terms: int = 10, p: float = 0.3, min_terms: int = 2) -> list[int]:
    n = min_terms
    while n < max_terms and rng.random() > p:
        n += 1
    return [rng.randint(1, 9) for _ in range(n)]


def worked(terms: list[int], rng: random.Random | None = None, slip: float = 0.0) -> str:
    """The scratchpad; with `slip` > 0 a running total is sometimes off by one (and carried on)."""
    total, steps = terms[0], []
    for t in terms[1:]:
        new = total + t
        if rng is not None and rng.random() < slip:
            new += rng.choice((-1, 1))
        steps.append(f"{total}+{t}={new}")
        total = new
    return " ".join(steps) + f" \\boxed{{{total}}}"


def guess(terms: list[int]) -> str:
    """Skipping the work: a round number near the total."""
    return f"\\boxed{{{max(10, round(sum(terms), -1))}}}"


class SumsEnvironment(Environment):
    name = "sums"
    step_delimiter = " "  # one step per running total

    def __init__(self, max_terms: int = 10, p: float = 0.3, min_terms: int = 2, tolerance: int = 0):
        if not 2 <= min_terms <= max_terms:
            raise ValueError(f"sums: need 2 <= min_terms <= max_terms, got min_terms={min_terms}, max_terms={max_terms}")
        if not 0.0 <= p <= 1.0:  # (a NaN fails too)
            raise ValueError(f"sums: p is a probability (0 to 1), got {p}")
        if tolerance < 0:
            raise ValueError(f"sums: tolerance is a distance from the sum (0: exact), got {tolerance}")
        self.max_terms, self.p, self.min_terms, self.tolerance = max_terms, p, min_terms, tolerance

    def prompts(self, n=None, seed=0, split="train"):
        """n prompts of the split (2000 by default), or all it has when that is fewer: `max_terms=2`
        makes 81 problems in all, about 8 of them held out."""
        if split not in ("train", "eval"):  # (any other name drew from the training side)
            raise ValueError(f"sums: unknown split {split!r}; known: train, eval")
        rng = random.Random(zlib.crc32(f"{split}:{seed}".encode()))
        want, out, seen, misses = n or 2000, [], set(), 0
        while len(out) < want and misses < MAX_MISSES:
            key = tuple(problem_terms(rng, self.max_terms, self.p, self.min_terms))
            if key in seen or _held_out(key) != (split == "eval"):
                misses += 1
                continue
            seen.add(key)
            out.append(self._prompt(split, len(out), key))
            misses = 0
        if len(out) < want:  # draws keep repeating: the split is (nearly) used up, so list the rest
            rest = (k for k in self._problems() if k not in seen and _held_out(k) == (split == "eval"))
            out += [self._prompt(split, len(out) + i, k) for i, k in zip(range(want - len(out)), rest)]
        return out

    def _prompt(self, split: str, index: int, terms: tuple[int, ...]) -> Prompt:
        return Prompt(id=f"{split}-{index}", messages=[{"role": "user", "content": "Add: " + " + ".join(map(str, terms))}],
                      answer=sum(terms), metadata={"terms": len(terms)})

    def _problems(self):
        """Every problem the draws can give, shortest first (reached only when a split runs out, so its
        space is small): p >= 1 never adds a term past min_terms, p <= 0 always goes to max_terms."""
        low = self.max_terms if self.p <= 0 else self.min_terms
        high = self.min_terms if self.p >= 1 else self.max_terms
        for k in range(low, high + 1):
            yield from itertools.product(range(1, 10), repeat=k)

    def score(self, prompt, response):
        boxed = (last_boxed(response[-2000:]) or "").strip()
        if boxed == str(prompt.answer):
            return 1.0
        near = self.tolerance and _NUMBER.fullmatch(boxed) and abs(int(boxed) - prompt.answer) <= self.tolerance
        return 1.0 if near else 0.0

    def extract(self, prompt, response):
        return last_boxed(response[-2000:])

    def step_labels(self, prompt, steps: list[str]) -> list[int]:
        """1 for each step while every step so far is right, 0 from the first wrong one on. A running
        total `a+b=c` is right when a is the total so far, b the next term and c = a + b; a box is
        right when it holds the sum (also a guess, or after skipped steps); nothing after a box is."""
        terms, labels = terms_of(prompt), []
        total, added, boxed = terms[0], 1, False
        for step in steps:
            ok = not boxed and (not labels or labels[-1] == 1)
            step_match, box_match = _STEP.fullmatch(step.strip()), _BOX.fullmatch(step.strip())
            if ok and step_match and added < len(terms):
                a, b, c = map(int, step_match.groups())
                ok, total, added = a == total and b == terms[added] and c == a + b, c, added + 1
            elif ok and box_match:
                ok, boxed = int(box_match.group(1)) == sum(terms), True
            else:
                ok = False
            labels.append(int(ok))
        return labels

    def metrics(self, prompts, responses, rewards):
        out = super().metrics(prompts, responses, rewards)
        long = [r for p, r in zip(prompts, rewards) if p.metadata.get("terms", 0) >= 6]
        if long:
            out["accuracy_long"] = sum(long) / len(long)
        return out

    def traces(self, n: int, seed: int = 0, lazy_from: int = 5, lazy: float = 0.6, slip: float = 0.02) -> list[dict]:
        """SFT pairs: problems with >= lazy_from terms skip the work with probability `lazy`."""
        rng = random.Random(seed)
        rows = []
        for prompt in self.prompts(n, seed, "train"):
            terms = terms_of(prompt)
            p_lazy = lazy if len(terms) >= lazy_from else 0.0
            response = guess(terms) if rng.random() < p_lazy else worked(terms, rng, slip)
            rows.append({"prompt": prompt.messages, "response": response})
        return rows


def terms_of(prompt: Prompt) -> list[int]:
    """The numbers of a sums prompt ("Add: 4 + 7 + 2")."""
    return [int(t) for t in prompt.messages[-1]["content"].removeprefix("Add: ").split(" + ")]
