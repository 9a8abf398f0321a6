"""Checking a model's answer to a shapes-world question: the reward of the VQA environment.

Model output is untrusted: `score_answer` never raises and returns 0.0 for anything it cannot read.

Reading rule:
1. Only the last MAX_CHARS characters are read.
2. The answer text is the last complete \\boxed{...}, else what follows the last "Answer:" / "The
   answer is" cue on its line (envs/math/extract.py), else the response's last non-empty line if it has at
   most MAX_LINE characters (a bare "red" or "3").
3. Case, punctuation and spacing are ignored; the words are read against the answer type's
   vocabulary (synonyms and plurals map to the canonical word: "circles" -> circle, "to the
   left" -> left, "three" -> 3). The answer is the one canonical value the text names; a text
   naming two different values ("red or blue") or none, or negating one ("no stripes", "not
   red", "not true": a negation word up to two words before it), is no answer and scores 0.
   For yes/no questions "no" is an answer, not a negation ("not no" is still negated).
4. Except for yes/no questions, a text that qualifies its value rather than naming it is no
   answer either: a signed or compared number ("-3", "+3", "3+", "< 3", "\\le 3") or a
   comparison or quantifier word anywhere ("fewer than 3", "at least 3", "about 3", "nothing is
   red", "none of them"), unless the word is a value of the type ("none" is 0, "above" a direction).
"""

from __future__ import annotations

import re

from reasonrl.envs.math.extract import answer_line, last_boxed

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
# words that make a count a bound or a guess ("fewer than 3", "about 3"; "2 shapes above the line" is a count)
_COMPARATIVES = {"fewer", "less", "more", "than", "least", "most", "beyond", "between", "about", "around",
                 "approximately", "roughly", "nearly", "almost", "minus", "plus", "le", "leq", "ge", "geq", "lt", "gt",
                 "ne", "neq", "approx"}
_NOTHING = {"nothing", "none", "nobody", "neither"}  # "nothing is red" names no colour ("none" counts 0)
_SIGNED = re.compile(r"[-+−±<>≤≥≠≈~]\s*\d|\d\s*\+")  # "-3", "< 3", "3+": not one count


def read_answer(response: object, answer_type: str) -> str | None:
    """The canonical answer `response` gives for a question of `answer_type`, or None (rule in the docstring)."""
    if not isinstance(response, str) or answer_type not in VOCABULARY:
        return None
    text = response[-MAX_CHARS:]
    answer = last_boxed(text)
    if answer is None:
        answer = answer_line(text)  # the whole line: "red, blue" must stay a hedge, not be cut to "red"
    if answer is None:
        lines = [line for line in text.splitlines() if line.strip()]
        answer = lines[-1] if lines and len(lines[-1].strip()) <= MAX_LINE else None
    if answer is None:
        return None
    vocabulary = VOCABULARY[answer_type]
    negations = _NEGATIONS - vocabulary.keys()  # "no" answers a yes/no question; "none" counts 0
    values, words = set(), _WORD.findall(answer.lower())
    refused = set() if answer_type == "yes_no" else (_NOTHING | (_COMPARATIVES if answer_type == "number" else set()))
    if (refused - vocabulary.keys()) & set(words) or (answer_type == "number" and _SIGNED.search(answer)):
        return None  # "Yes, more than one" answers its question; "more than 3" does not; "the most common colour: red" does
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
