"""`MathEnvironment`: a fixed set of math problems with reference answers, scored by MathVerifier.

Records are (problem, answer) pairs, or ready `Prompt`s (the JSONL loader builds those, with
ids, chat messages and metadata). A text problem becomes [system, user] messages, the system
message asking for step-by-step reasoning and a final `\\boxed{}` answer.

`prompts(n, seed)` returns every prompt in order when `n` is None, else `n` prompts drawn
without replacement from a seeded shuffle (reshuffled per pass when `n` exceeds the set). The
set is one split: `split` is accepted for the interface and ignored; load another file for
another split.

`arithmetic_problems` generates small integer-arithmetic problems for smoke tests.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from ..base import Environment, Prompt
from .verifier import MathVerifier

MATH_SYSTEM_PROMPT = (
    "Please reason step by step, and put your final answer within \\boxed{}."
)


class MathEnvironment(Environment):
    held_out = False  # one file: another split means another file
    """Math problems with reference answers; reward 1.0 when the boxed answer is equivalent."""

    name = "math"

    def __init__(
        self,
        records: Sequence[tuple[str, Any] | Prompt],
        *,
        name: str = "math",
        system_prompt: str | None = MATH_SYSTEM_PROMPT,
        think_delimiter: str | None = None,
        verifier: MathVerifier | None = None,
    ):
        if verifier is not None and think_delimiter is not None and verifier.think_delimiter != think_delimiter:
            raise ValueError("think_delimiter differs from the given verifier's; configure the verifier")
        self.name = name
        self.items = [self._as_prompt(i, record, system_prompt) for i, record in enumerate(records)]
        if not self.items:
            raise ValueError(f"{name}: no problems")
        self._own_verifier = verifier is None
        self.verifier = verifier if verifier is not None else MathVerifier(think_delimiter=think_delimiter)

    def _as_prompt(self, index: int, record: tuple[str, Any] | Prompt, system_prompt: str | None) -> Prompt:
        if isinstance(record, Prompt):
            return record
        problem, answer = record
        messages = [{"role": "user", "content": problem}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return Prompt(id=f"{self.name}-{index}", messages=messages, answer=answer)

    def prompts(self, n: int | None = None, seed: int = 0, split: str = "train") -> list[Prompt]:
        return select(self.items, n, seed)

    def score(self, prompt: Prompt, response: str) -> float:
        return self.verifier.judge(response, prompt.answer)

    def extract(self, prompt: Prompt, response: str) -> str | None:
        try:
            return self.verifier.answer(response)
        except Exception:  # untrusted input: no answer, never an error
            return None

    def rewards(self, prompts: Sequence[Prompt], responses: Sequence[Any]) -> list[float]:
        """`reward` over a batch in one call, so every verifier worker is used."""
        return self.verifier.judge_many([(r, p.answer) for p, r in zip(prompts, responses, strict=True)])

    def metrics(self, prompts: Sequence[Prompt], responses: Sequence[Any], rewards: Sequence[float]
                ) -> dict[str, float]:
        out = super().metrics(prompts, responses, rewards)
        found = sum(self.verifier.answer(r) is not None for r in responses)
        out["answer_rate"] = found / max(len(responses), 1)  # format learning: is there a final answer?
        return out

    def close(self) -> None:
        if self._own_verifier:
            self.verifier.close()


def select(items: list[Prompt], n: int | None, seed: int) -> list[Prompt]:
    """All items in order (n None), or n items from seeded shuffles, one pass after another."""
    if n is None:
        return list(items)
    rng, out = random.Random(seed), []
    while len(out) < n:
        order = list(items)
        rng.shuffle(order)
        out.extend(order[: n - len(out)])
    return out


_OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}


def arithmetic_problems(n: int, seed: int = 0, digits: int = 2) -> list[tuple[str, str]]:
    """`n` problems like "Compute 37 * 12 - 5." with their integer answers."""
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        a, b, c = (rng.randint(1, 10**digits - 1) for _ in range(3))
        op1, op2 = rng.choice("+-*"), rng.choice("+-")
        value = _OPS[op2](_OPS[op1](a, b), c)  # op2 is + or -: left to right is the precedence order
        problems.append((f"Compute {a} {op1} {b} {op2} {c}.", str(value)))
    return problems
