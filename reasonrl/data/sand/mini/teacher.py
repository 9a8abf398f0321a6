"""A deterministic program playing the teacher LLM for the `sums` domain, for the miniature.

No large model can run here, so the miniature reproduction of Difficulty Hiking puts this
program behind a real OpenAI-compatible HTTP endpoint (endpoint.py) and runs the pipeline's
real code path against it: HTTP, the client's concurrency and retries, parsing of untrusted
output, the verifier, the ledgers. It reads each request's prompt the way a model would (which
stage is asking, which problem, which theorem) and answers in the stage's format, seeded by the
request's seed, with the faults real teachers have, at set rates: cut-off outputs, missing tags,
unfinished reasoning, wrong reference answers, arithmetic slips in solutions (more in longer
ones), repeated problems, problems copied from the evaluation sets, unreadable ratings, and
rewrites that change nothing.

The domain: "Add: 4 + 7 + 2" with a running-total solution "4+7=11 11+2=13 \\boxed{13}" (the
demo policy's format, reasonrl/envs/sums.py). Difficulty is the number of terms: the teacher writes
problems of 3-6 terms, rates them 1 + 0.75 (terms - 2) plus noise, and hikes a problem by
inserting new terms until it is the "chain of N terms" its theorem names. Token counts in `usage` are characters / 4.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from reasonrl.envs.math.extract import last_boxed
from reasonrl.envs.sums import worked

BRANCH_DIGITS = {"small digits": (1, 5), "large digits": (5, 9), "mixed digits": (1, 9)}
_TERMS = re.compile(r"Add:\s*(\d+(?:\s*\+\s*\d+)*)")
_CHAIN = re.compile(r"chain of (\d+) terms")
_NUMBER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Faults:
    truncated: float = 0.03  # output cut off at max_tokens (finish_reason "length")
    untagged: float = 0.03  # the problem without its <Q> tags
    unfinished: float = 0.02  # a reasoning block that never closes
    wrong_reference: float = 0.04  # the reference solution's answer is off
    repeated: float = 0.04  # a problem from a small pool every teacher falls back on (duplicates)
    copied: float = 0.02  # a problem copied from an evaluation set
    slip_per_step: float = 0.01  # a solver's running total off by one, per step
    unboxed: float = 0.02  # a solution that states its answer without \boxed{}
    unreadable_rating: float = 0.03
    unchanged_rewrite: float = 0.03  # a "harder" rewrite that is the original


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str = "stop"


def terms_of(text: str) -> list[int] | None:
    """The terms of the last "Add: a + b + ..." in `text`."""
    found = _TERMS.findall(text)
    return [int(t) for t in re.findall(r"\d+", found[-1])] if found else None


def problem_text(terms: list[int]) -> str:
    return "Add: " + " + ".join(map(str, terms))


class SumsTeacher:
    def __init__(self, faults: Faults = Faults(), base_terms: tuple[int, int] = (3, 6),
                 known_problems: list[str] = ()):
        self.faults, self.base_terms = faults, base_terms
        self.known = list(known_problems)  # what it may copy: the evaluation sets it has "seen"
        pool = random.Random("pool")
        self.pool = [[pool.randint(1, 9) for _ in range(pool.randint(*base_terms))] for _ in range(12)]

    def respond(self, prompt: str, seed: int | None) -> Reply:
        """The answer to a prompt, as the stage that sent it expects."""
        rng = random.Random(f"{seed}:{prompt}")
        if "Original problem:" in prompt:
            return self.hike(prompt, rng)
        if "Candidate problem:" in prompt:
            return self.same_problem(prompt)
        if "End of the first solution:" in prompt:
            return self.same_answer(prompt)
        if "<D>" in prompt:
            return self.rate(prompt, rng)
        if "<Q>" in prompt:
            return self.generate(prompt, rng)
        return self.solve(prompt, rng)

    def generate(self, prompt: str, rng: random.Random) -> Reply:
        low, high = BRANCH_DIGITS.get(_branch(prompt), (1, 9))
        roll = rng.random()
        if roll < self.faults.repeated:
            terms = list(rng.choice(self.pool))
        elif roll < self.faults.repeated + self.faults.copied and self.known:
            terms = terms_of(rng.choice(self.known)) or [1, 1]
        else:
            terms = [rng.randint(low, high) for _ in range(rng.randint(*self.base_terms))]
        return self._problem(terms, rng, f"I need {len(terms)} digits from {low} to {high}.")

    def hike(self, prompt: str, rng: random.Random) -> Reply:
        original = terms_of(prompt.split("Original problem:")[-1]) or [1, 1]
        if rng.random() < self.faults.unchanged_rewrite:
            return self._problem(original, rng, "The original is already hard enough.")
        chain = _CHAIN.search(prompt)
        target = max(int(chain.group(1)) if chain else len(original) + 3, len(original) + 1)
        low = 7 if "7, 8 and 9" in prompt else 1
        terms = list(original)
        for _ in range(target - len(original)):  # new terms anywhere: a rewrite, not an appendix
            terms.insert(rng.randint(0, len(terms)), rng.randint(low, 9))
        return self._problem(terms, rng, f"Extend the chain to {target} terms.")

    def _problem(self, terms: list[int], rng: random.Random, thought: str) -> Reply:
        wrong = rng.random() < self.faults.wrong_reference
        solution = worked(terms, rng, 0.5) if wrong else worked(terms)
        text = f"<think>{thought} <Q> is where the problem goes.</think>\n<Q>{problem_text(terms)}</Q>\n<S>{solution}</S>"
        roll = rng.random()
        if roll < self.faults.truncated:
            return Reply(text[: len(text) // 2], "length")
        roll -= self.faults.truncated
        if roll < self.faults.untagged:
            return Reply(f"Here is a new problem: {problem_text(terms)}. Solution: {solution}")
        if roll - self.faults.untagged < self.faults.unfinished:
            return Reply(f"<think>{thought} Let me think about which digits to use")
        return Reply(text)

    def solve(self, prompt: str, rng: random.Random) -> Reply:
        terms = terms_of(prompt)
        if terms is None:
            return Reply("I do not see an addition problem here. \\boxed{0}")
        text = worked(terms, rng, self.faults.slip_per_step)  # a slip per step: longer chains, more slips
        roll = rng.random()
        if roll < self.faults.truncated:
            return Reply(text[: len(text) // 2], "length")
        if roll - self.faults.truncated < self.faults.unboxed:
            return Reply(text.replace("\\boxed{", "so the total is ").rstrip("}") + ".")
        return Reply(text)

    def same_answer(self, prompt: str) -> Reply:
        first, second = prompt.split("End of the first solution:")[-1].split("End of the second solution:")
        a, b = _final_number(first), _final_number(second.split("Reply with")[0])
        verdict = "yes" if a is not None and a == b else "no"
        return Reply(f"The first ends in {a}, the second in {b}. <C>{verdict}</C>")

    def same_problem(self, prompt: str) -> Reply:
        candidate, known = prompt.split("Candidate problem:")[-1].split("Known problem")
        a, b = terms_of(candidate), terms_of(known)
        same = a is not None and b is not None and sorted(a) == sorted(b)  # reordered terms: the same problem
        return Reply(f"<C>{'yes' if same else 'no'}</C>")

    def rate(self, prompt: str, rng: random.Random) -> Reply:
        terms = terms_of(prompt.split("Problem:")[-1].split("A solution:")[0]) or [1, 1]
        if rng.random() < self.faults.unreadable_rating:
            return Reply("<S>Adding digits.</S><D>moderate</D><R>It depends.</R>")
        score = min(10.0, max(1.0, 1 + 0.75 * (len(terms) - 2) + rng.uniform(-0.5, 0.5)))
        return Reply(f"<S>Adding {len(terms)} digits.</S><D>{score:.1f}</D><R>Longer chains, more carries.</R>")

    def embed(self, text: str) -> list[float]:
        """Digit counts and length of the problem's terms (reordered terms embed the same), plus a
        little of the text's character mix."""
        terms = terms_of(text) or []
        vector = [float(terms.count(d)) for d in range(1, 10)] + [len(terms) / 2]
        return vector + [text.count(c) / 10 for c in "aeiou"]


def _branch(prompt: str) -> str:
    found = re.search(r"main subject is ([^;.\n]+)", prompt)
    return found.group(1).strip().lower() if found else ""


def _final_number(text: str) -> int | None:
    boxed = last_boxed(text)
    numbers = _NUMBER.findall(boxed if boxed is not None else text)
    return int(numbers[-1]) if numbers else None
