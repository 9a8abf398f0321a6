r"""Scoring a model's free-text answer to a TTT-Bench problem.

Paper: TTT-Bench (arXiv 2506.10209) scores Pass@1 on the answer in \boxed{}; a problem with
several answers accepts any of them. The paper does not say how answers are read; this is ours.

Reading rule (model output is untrusted: never raises, bounded work, garbage scores 0):
1. Only the last MAX_CHARS characters are read. All patterns are linear-time (no nested
   quantifiers; gaps between words are bounded).
2. If the text has a complete \boxed{...} (or \fbox{...}), the last one decides. Braces are
   matched in one pass, so nesting like \boxed{\text{E}} works. Inside it the answer is the
   one distinct position label standing alone (no letter or digit touching it), e.g. "E",
   "\text{E}", "Position E", "**E**". No label, or two different labels, is no answer (0);
   a box holding just a lowercase letter ("e", "\text{e}", "\mathrm{ e }") is read as that
   label, but not one that merely contains one ("1e5", "\frac{a}{2}").
3. Otherwise the answer is the last label that stands alone and either follows a cue word
   ("position", "point", "vertex", "cell", "square", "spot", "at", "play(s)", "move", "answer",
   "choose", "place(s)", "take(s)", "pick"), optionally followed by "is", ":", "=", "-" and
   quotes, asterisks or a parenthesis, e.g. "play at E", "the answer is **E**", "Answer: E";
   or stands alone on its own line, possibly in markup ("**E**", "(E).").
   A capital letter in ordinary prose ("I think", "A fork") has no cue word before it and
   is not on a line of its own, so it is never read as a label; after a cue word, "I" followed
   by a word that follows the pronoun ("the move I recommend is E", "the answer I would give")
   is the pronoun, not label I ("position I is best", "take I to block" are the label).
   A cue counts only if it states the move of the player to move, not a line of play:
   - not after a condition word ("if", "unless", "suppose", "assuming", "otherwise") in the same
     sentence (ended by . ! ? ; or a line break): in "I will play at C. If Bob then plays at I,
     I win with G." the answer is C;
   - not when the first person its clause names before it is someone else: "the opponent",
     "they", or, given the player to move (`mover`), the other one by name or pronoun ("Bob",
     "he" when Alice is to move; "we", "you" are the mover). A clause ends at , : and the
     sentence ends, and at "and", "but", "so", "or", "because", "since", "while". "Alice plays
     at C, then Bob plays at I" answers C for Alice; a clause naming no one ("so play at I",
     "my move: I") is the mover's. Without `mover`, names and he/she count as the mover's.
The score is 1.0 if the answer is in the solution set, else 0.0.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from functools import cached_property
from typing import Iterable

MAX_CHARS = 20_000

_BOXED = re.compile(r"\\(?:boxed|fbox)[ \t]{0,3}\{")
_BRACE = re.compile(r"[{}]")
_ALONE = r"(?<!\w)([A-Z])(?!\w|['’]\w)"  # a capital letter not part of a word (or "I'm")
_LABEL = re.compile(_ALONE)
# words that follow the pronoun I, never a position label ("the move I recommend", "the answer I would give")
_PRONOUN_VERBS = (r"(?:would|will|think|recommend|believe|suggest|guess|say|choose|pick|prefer|want|need|am|have|had|"
                  r"can|could|should|must|might|may|see|know|feel|expect|propose|reckon|'d|'ll|'m|'ve)")
_CUE = re.compile(
    r"(?i:\b(?:position|point|vertex|cell|square|spot|at|plays?|move|answer|choose|"
    r"places?|takes?|pick))[ \t]{0,3}(?i:is|=|:|-)?[ \t]{0,3}[*\"'`(]{0,3}[ \t]{0,2}" + _ALONE
    + r"(?!(?<=I)[ \t]{1,3}" + _PRONOUN_VERBS + r"\b)"  # "the move I recommend is E": the pronoun, not label I
)
# a box that is just a letter, perhaps in one \text{}-like wrapper ("e", "\mathrm{ e }"): not "1e5"
_BARE_LETTER = re.compile(r"\s*(?:\\(?:text|textbf|textrm|mathrm|mathbf|mathit)\s*\{\s*([A-Za-z])\s*\}|([A-Za-z]))\s*")
_LINE = re.compile(r"^[ \t>*#_\"'`(-]{0,6}" + _ALONE + r"[ \t*_\"'`).!]{0,6}$", re.MULTILINE)
# Whose move a cue states (rule 3): the sentence and clause it sits in, and the people named there.
_SENTENCE_END = re.compile(r"[.!?;\n]")
_CLAUSE_END = re.compile(r"[.!?;:,\n]|(?i:\b(?:and|but|so|or|because|since|while)\b)")
_CONDITION = re.compile(r"(?i:\b(?:if|unless|suppose|supposing|assuming|otherwise)\b)")
_PERSON = re.compile(r"(?i:\b(alice|she|her|bob|he|him|his|opponents?|they|them|their|we|you)\b)")
_WHO = {"alice": "Alice", "she": "Alice", "her": "Alice", "bob": "Bob", "he": "Bob", "him": "Bob", "his": "Bob"}
_OTHERS = {"opponent", "opponents", "they", "them", "their"}


def extract_answer(response: str, labels: str, mover: str | None = None) -> str | None:
    """The position label the response commits to, or None (see the module docstring).

    `mover` is the player to move ("Alice" or "Bob"), as the problem asks; None: unknown, so
    only "the opponent" and "they" mark another player's move."""
    if not isinstance(response, str) or not response:
        return None
    text = response[-MAX_CHARS:]
    boxed = _last_boxed(text)
    if boxed is not None:
        return _label_in_box(boxed, labels)
    found = [(m.start(1), m.group(1)) for m in _LINE.finditer(text) if m.group(1) in labels][-1:]
    cue = _own_cue(text, labels, mover)
    found += [cue] if cue else []
    return max(found)[1] if found else None  # the later of the last line and the last own cue


def score(response: str, solution: Iterable[str], labels: str, mover: str | None = None) -> float:
    """1.0 if the response's answer is one of the solution labels, else 0.0; never raises."""
    try:
        answer = extract_answer(response, labels, mover)
        return 1.0 if answer is not None and answer in set(solution) else 0.0
    except Exception:  # untrusted input must never stop training
        return 0.0


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} whose braces close, or None."""
    opens = [m.end() - 1 for m in _BOXED.finditer(text)]
    if not opens:
        return None
    close, stack = {}, []
    for m in _BRACE.finditer(text):  # one pass: match every brace pair
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            close[stack.pop()] = m.start()
    for start in reversed(opens):
        if start in close:
            return text[start + 1 : close[start]]
    return None


def _label_in_box(content: str, labels: str) -> str | None:
    found = {m.group(1) for m in _LABEL.finditer(content)} & set(labels)
    if len(found) == 1:
        return found.pop()
    bare = None if found else _BARE_LETTER.fullmatch(content)
    letter = bare and (bare.group(1) or bare.group(2)).upper()
    return letter if letter and letter in labels else None


def _own_cue(text: str, labels: str, mover: str | None) -> tuple[int, str] | None:
    """(position, label) of the last cue that states the mover's own move (rule 3), or None.

    Walks back from the last cue and reads each sentence at most once: linear, and usually it
    reads only the last sentence."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    sentence = None
    for cue in reversed([m for m in _CUE.finditer(text) if m.group(1) in labels]):
        i = bisect_right(ends, cue.start())
        start, end = ends[i - 1] if i else 0, ends[i] if i < len(ends) else len(text)
        if sentence is None or sentence.start != start:
            sentence = _Sentence(text, start, end, mover)
        if sentence.states_own_move(cue.start()):
            return cue.start(1), cue.group(1)
    return None


class _Sentence:
    """Where text[start:end]'s first condition word, clause ends and people are (rule 3)."""

    def __init__(self, text: str, start: int, end: int, mover: str | None):
        self.text, self.start, self.end, self.mover = text, start, end, mover
        condition = _CONDITION.search(text, start, end)
        self.condition = condition.start() if condition else end

    def states_own_move(self, cue: int) -> bool:
        if self.condition < cue:  # a condition's scope: a line of play, not the answer
            return False
        i = bisect_right(self.clauses, cue)
        at, other = self.people
        first = bisect_left(at, self.clauses[i - 1] if i else self.start)  # first person in the clause
        return not (first < len(at) and at[first] < cue and other[first])

    @cached_property
    def clauses(self) -> list[int]:  # where each clause after the first starts
        return [m.end() for m in _CLAUSE_END.finditer(self.text, self.start, self.end)]

    @cached_property
    def people(self) -> tuple[list[int], list[bool]]:  # where each person word is, and whether it is not the mover
        words = [(m.start(), m.group(1).lower()) for m in _PERSON.finditer(self.text, self.start, self.end)]
        other = [w in _OTHERS or (self.mover is not None and _WHO.get(w, self.mover) != self.mover) for _, w in words]
        return [at for at, _ in words], other
