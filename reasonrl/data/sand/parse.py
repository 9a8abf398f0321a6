"""Reading untrusted model output: the part after the reasoning block, the last tag pair in it.

Every function here returns a value or a reason it could not, never raises: a model's output is
whatever it is (cut off at max_tokens, missing tags, tags inside its reasoning, empty).

- The reasoning block is `<think> ... </think>`; only text after the LAST `</think>` counts (a
  reasoning model drafts tags while thinking). An opened block that never closes means the model
  never finished thinking: there is no answer. Servers that split reasoning out of the content
  (vLLM's reasoning parsers) send the content alone, which has no block at all.
- A tag pair is `<T> ... </T>`, case-insensitive; the LAST complete pair is read, so a model
  that restates or corrects itself is read at its final word.
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
UP_TO_LAST_CLOSE = re.compile(r"(?s).*" + re.escape(THINK_CLOSE), re.IGNORECASE)
OPEN = re.compile(re.escape(THINK_OPEN), re.IGNORECASE)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def after_reasoning(text: str) -> tuple[str | None, str | None]:
    """(the text after the reasoning block, None), or (None, why) when there is none to read."""
    if not isinstance(text, str):
        return None, "no text"
    # matched in the text itself, not in text.lower(): lowering may change its length (U+0130 -> two
    # characters), and an index in the one would cut the other elsewhere
    close = UP_TO_LAST_CLOSE.match(text)  # anchored: one greedy scan back from the end
    if close is not None:
        return text[close.end():], None
    if OPEN.search(text):
        return None, "unclosed reasoning block"
    return text, None


def last_tag(text: str, tag: str) -> str | None:
    """The stripped content of the last complete `<tag>...</tag>` pair of `text`, or None."""
    closes = [m.start() for m in re.finditer(f"</{re.escape(tag)}>", text, re.IGNORECASE)]
    if not closes:
        return None
    end = closes[-1]
    opens = [m.end() for m in re.finditer(f"<{re.escape(tag)}>", text[:end], re.IGNORECASE)]
    return text[opens[-1]:end].strip() if opens else None


def final_text(text: str, finish_reason: str | None) -> tuple[str | None, str | None]:
    """The readable part of a response: (text after the reasoning, None) or (None, reason)."""
    if finish_reason == "length":
        return None, "truncated (max_tokens reached)"
    if not isinstance(text, str) or not text.strip():
        return None, "empty output"
    return after_reasoning(text)


def problem_and_solution(text: str, finish_reason: str | None) -> tuple[tuple[str, str] | None, str | None]:
    """((problem, solution), None) from a generator's or rewriter's `<Q>`/`<S>` output, or (None, reason)."""
    final, why = final_text(text, finish_reason)
    if final is None:
        return None, why
    question = last_tag(final, "Q")
    if question is None:
        return None, "no <Q> tag"
    if not question:
        return None, "empty <Q>"
    solution = last_tag(final, "S")
    if solution is None:
        return None, "no <S> tag"
    return (question, solution), None


def yes_no(text: str, finish_reason: str | None, tag: str = "C") -> tuple[bool | None, str | None]:
    """(True/False, None) from a judge's `<C>yes</C>` / `<C>no</C>`, or (None, reason)."""
    final, why = final_text(text, finish_reason)
    if final is None:
        return None, why
    verdict = last_tag(final, tag)
    if verdict is None:
        return None, f"no <{tag}> tag"
    word = verdict.strip(" .*'\"").lower()
    if word in ("yes", "no"):
        return word == "yes", None
    return None, f"<{tag}> is neither yes nor no"


def score(text: str, finish_reason: str | None, low: float = 1.0, high: float = 10.0,
          tag: str = "D") -> tuple[float | None, str | None]:
    """(a number in [low, high], None) from a rating's `<D>...</D>`, or (None, reason)."""
    final, why = final_text(text, finish_reason)
    if final is None:
        return None, why
    content = last_tag(final, tag)
    if content is None:
        return None, f"no <{tag}> tag"
    numbers = _NUMBER.findall(content[:100])
    if len(numbers) != 1:
        return None, f"<{tag}> does not hold one number"
    value = float(numbers[0])
    if not low <= value <= high:
        return None, f"<{tag}> out of [{low:g}, {high:g}]"
    return value, None


def snap(value: float, step: float = 0.5) -> float:
    """`value` rounded to the nearest multiple of `step` (halves round up: 5.25 -> 5.5)."""
    return float(int(value / step + 0.5) * step)
