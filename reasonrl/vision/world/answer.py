"""Checking a model's answer to a shapes-world question: the reward of the VQA environment.

Model output is untrusted: `score_answer` never raises and returns 0.0 for anything it cannot read.

Reading rule:
1. Only the last MAX_CHARS characters are read.
2. The answer text is the last complete \\boxed{...}, else the last "Answer: ..." / "The answer
   is ..." line (envs/math/extract.py), else the response's last non-empty line if it has at
   most MAX_LINE characters (a bare "red" or "3").
3. Case, punctuation and spacing are ignored; the words are read against the answer type's
   vocabulary (synonyms and plurals map to the canonical word: "circles" -> circle, "to the
   left" -> left, "three" -> 3). The answer is the one canonical value the text names; a text
   naming two different values ("red or blue") or none, or negating one ("no stripes", "not
   red", "not true": a negation word up to two words before it), is no answer and scores 0.
   For yes/no questions "no" is an answer, not a negation ("not no" is still negated).
"""

from __future__ import annotations

import re

from reasonrl.envs.math.extract import extract_answer

from .palette import COLOURS
from .shapes import SHAPES, TEXTURES

MAX_CHARS = 4000
MAX_LINE = 80
_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                 "fifteen sixteen seventeen eighteen nineteen twenty").split()
VOCABULARY: dict[str, dict[str, str]] = {
    "colour": {**{c: c for c in COLOURS}, "violet": "purple", "magenta": "pink"},
    "shape": {**{s: s for s in SHAPES}, **{s + "s": s for s in SHAPES}, "crosses": "cross", "plus": "cross"},
    "yes_no": {"yes": "yes", "no": "no", "true": "yes", "false": "no"},
    "direction": {"left": "left", "right": "right", "above": "above", "below": "below", "over": "above",
                  "under": "below", "beneath": "below", "underneath": "below"},
    "texture": {**{t: t for t in TEXTURES}, "stripes": "striped", "stripy": "striped", "plain": "solid"},
    "number": {**{w: str(i) for i, w in enumerate(_NUMBER_WORDS)}, "none": "0"},
}
ANSWER_TYPES: tuple[str, ...] = tuple(VOCABULARY)
_WORD = re.compile(r"[a-z]+|\d+")
_NEGATIONS = {"no", "not", "non", "without", "isn", "never", "neither", "nor"}  # "isn't" reads as isn, t
_YES_NO_NEGATIONS = _NEGATIONS - {"no"}  # where "no" is an answer: "no, no" says no


def read_answer(response: object, answer_type: str) -> str | None:
    """The canonical answer `response` gives for a question of `answer_type`, or None (rule in the docstring)."""
    if not isinstance(response, str) or answer_type not in VOCABULARY:
        return None
    text = response[-MAX_CHARS:]
    answer = extract_answer(text)
    if answer is None:
        lines = [line for line in text.splitlines() if line.strip()]
        answer = lines[-1] if lines and len(lines[-1].strip()) <= MAX_LINE else None
    if answer is None:
        return None
    vocabulary = VOCABULARY[answer_type]
    negations = _YES_NO_NEGATIONS if answer_type == "yes_no" else _NEGATIONS
    values, words = set(), _WORD.findall(answer.lower())
    for i, word in enumerate(words):
        if answer_type == "number" and word.isdigit():
            value = str(int(word))
        elif word in vocabulary:
            value = vocabulary[word]
        else:
            continue
        if negations & set(words[max(0, i - 2):i]):
            return None  # "no stripes", "not red": a negated value is no answer (it named the opposite before)
        values.add(value)
    return values.pop() if len(values) == 1 else None


def score_answer(response: object, answer: str, answer_type: str) -> float:
    """1.0 when the response's answer equals `answer`, else 0.0; never raises."""
    try:
        return 1.0 if read_answer(response, answer_type) == answer else 0.0
    except Exception:  # untrusted input must never stop training
        return 0.0
