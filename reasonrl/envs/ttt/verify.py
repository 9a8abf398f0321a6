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
   A cue is skipped when its subject is another player: the text just before it is that player,
   then at most three of "then", "will", "would", "could", "can", "might", "should", "must",
   "also", "instead", "just" ("'ll" may be joined to the player), then, unless the cue word is
   itself a verb (play, move, answer, choose, place, take, pick), a move verb (play, take,
   place, put, move, go, answer, respond, reply, block, pick, choose, win; present or past) and
   perhaps a stone ("his stone", "a black stone"). Another player is "opponent" ("the
   opponent"), "they", and, given the player to move (`mover`), the other one's name or subject
   pronoun ("Bob", "he" when Alice is to move; "Alice", "she" when Bob is). So "If Bob then
   plays at I", "Then the opponent takes D", "they will answer at H" and "Bob places his stone
   at C" are skipped, and "Bob should play at E" answers nothing when Alice is to move. An
   object is never a subject ("stop him at C", "block the opponent at C", "the opponent's fork
   ... play at E" count), and a condition word skips nothing by itself ("Alice wins if she
   plays at E" answers E). Without `mover`, names and he/she are never another player.
The score is 1.0 if the answer is in the solution set, else 0.0.
"""

from __future__ import annotations

import re
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
# Whose move a cue states (rule 3): another player as the subject of the words just before it.
_VERB_CUE = re.compile(r"(?i:play|move|answer|choose|place|take|pick)")  # a cue word that is a move verb
_SUBJECT_CHARS = 80  # looked back from a cue: "the opponent'll then also place a black stone " fits
_GAP = r"[ \t\n]{1,3}"
_AUX = r"(?:then|will|would|could|can|might|should|must|also|instead|just)"
_MOVE_VERB = (r"(?:play|plays|played|take|takes|took|place|places|placed|put|puts|move|moves|moved|go|goes|went|"
              r"answer|answers|answered|respond|responds|responded|reply|replies|replied|block|blocks|blocked|"
              r"pick|picks|picked|choose|chooses|chose|win|wins|won)")
_STONE = rf"(?:(?:a|the|his|her|their|its){_GAP})?(?:(?:black|white){_GAP})?(?:stone|piece|mark|token){_GAP}"


def _subject(*players: str) -> re.Pattern:
    """Matches the text just before a cue whose subject is another player; group "verb" is the
    move verb between them, if any ("Bob will play " before "at I")."""
    others = "|".join(("opponent", "they") + players)  # "the opponent", "your opponent"
    return re.compile(rf"(?i:\b(?:{others})(?:['’]ll)?(?:{_GAP}{_AUX}){{0,3}}{_GAP}"
                      rf"(?:(?P<verb>{_MOVE_VERB}){_GAP}(?:{_STONE})?)?)$")


_OTHER_SUBJECT = {None: _subject(), "Alice": _subject("bob", "he"), "Bob": _subject("alice", "she")}


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
    """(position, label) of the last cue whose subject is not another player (rule 3), or None.

    Each cue looks back at most _SUBJECT_CHARS characters: linear in the text."""
    subject = _OTHER_SUBJECT[mover if mover in ("Alice", "Bob") else None]
    for cue in reversed([m for m in _CUE.finditer(text) if m.group(1) in labels]):
        said_of_other = subject.search(text, max(0, cue.start() - _SUBJECT_CHARS), cue.start())
        if not said_of_other or not (said_of_other.group("verb") or _VERB_CUE.match(text, cue.start())):
            return cue.start(1), cue.group(1)
    return None
