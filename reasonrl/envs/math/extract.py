"""Final-answer extraction: which part of a response is its answer.

What counts as the answer of a response, in priority order:
1. With `think_delimiter` set (e.g. "</think>"), only the text after its LAST occurrence is read;
   a response without the delimiter has no answer (it scores 0: the model never finished
   thinking, and rewarding answers inside the reasoning would teach it to skip the delimiter).
2. The content of the last complete `\\boxed{...}` or `\\fbox{...}`, braces matched (nested braces
   and escaped `\\{ \\}` are fine). A box whose braces never close before the text ends (a
   truncated response) does not count; an earlier complete box then wins. A last box still open
   after `max_chars` characters is too long: no answer, not a fall back to an earlier box nor to an
   answer cue before it.
3. Otherwise the answer stated after the last "Answer:" / "Final answer:" / "The (final) answer is"
   cue, to the end of its line and only up to its first clause boundary: ". " (or a final "."),
   ";", "?", ", <word>", " because", " since", " as", " which", " so", " therefore", " thus",
   " hence", " (<word>", "—" and CJK stops. A boundary inside brackets, braces or `$...$` does not
   count, nor does a comma in a number or before a single letter ("1,000", "x = 1, y = 2", "1, 2, 3"),
   nor ", and"/", or", nor the period of "approx.", "i.e.", "e.g."; "!" is a factorial. "The answer
   is 7 (check: 7 - 4 = 3)" answers 7, and "Answer: 6? No wait, the answer is 5." answers 5. A
   clause followed by another answer offered ("5 (or maybe 6)", "2 — or 3", "2 as well as 3") is a
   hedge: no answer.
4. Otherwise nothing: no answer, score 0.

Everything here runs in the trainer's process, so it is linear in the input and bounded by
`max_chars`: a box or an answer longer than that is treated as no answer.

Departures from lm-eval-harness `last_boxed_only_string`, which we otherwise follow: we match
`\\fbox` too, tolerate a space before the brace, and skip unclosed boxes instead of failing.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "Answer: 12", "**Final Answer:** 12", "The final answer is 12." (case-insensitive); only the cue, so
# that a later cue on the same line ("Answer: 6? No wait, the answer is 5.") is found and wins
_ANSWER_CUE = re.compile(r"\banswer\s*(?:is\s*)?[:：]|\bthe\s+(?:final\s+)?answer\s+is\b:?", re.IGNORECASE)
# What ends an answer's clause (group `end`) and what shields a boundary inside it (brackets, $...$).
# A command is matched whole so that \ldots, \! and \, are never a full stop, factorial or comma.
_CLAUSE_TOKEN = re.compile(
    r"(?P<end>(?<!\.)(?<!\bapprox)(?<!\bca)(?<!\bi\.e)(?<!\be\.g)(?<!\bviz)\.(?=\s|$)"  # a sentence's end: not
    r"|[;?\uff1b\uff1f\u3002\uff01\uff0c\u3001\u2014]"  # "3.5", "...", "approx. 3", "i.e. 4"
    r"|,(?=[ \t]*(?!(?i:and|or|nor)\b)[A-Za-z]{2})"  # ", not 6", ", because": not "1,000" or "1, 2"
    r"|[ \t](?:(?i:because|since|as|which|so|therefore|thus|hence)\b|\((?=[A-Za-z]{2})))"  # one blank: no backtracking
    r"|(?P<open>\\?[{(\[])|(?P<close>\\?[})\]])|(?P<math>\$+)|\\[A-Za-z]+|\\."
)
# what, right after the clause, offers a second answer (a hedge is no answer)
_ANOTHER = re.compile(r"[\s(\u2014,;-]*(?:or|and/or|as\s+well\s+as)\b", re.IGNORECASE)
_MATH_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def after_delimiter(text: str, delimiter: str | None) -> str | None:
    """The part of `text` after the last `delimiter`; None when it is configured but absent."""
    if not delimiter:
        return text
    at = text.rfind(delimiter)
    return None if at < 0 else text[at + len(delimiter):]


def last_boxed(text: str, max_chars: int = 1000, max_tries: int = 16) -> str | None:
    """Content of the last complete `\\boxed{}`/`\\fbox{}` in `text`, or None (also when that box is
    longer than `max_chars`: an earlier box is not its answer)."""
    return last_box(text, max_chars, max_tries)[0]


def last_box(text: str, max_chars: int = 1000, max_tries: int = 16) -> tuple[str | None, bool]:
    """(`last_boxed`, whether the last box is still open past `max_chars`): a box that long is the
    answer and too long, so a caller must not fall back to an answer cue before it either.

    Only the last `max_tries` candidates are tried, so a flood of unclosed boxes stays linear."""
    end = len(text)
    for _ in range(max_tries):
        at = max(text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end))
        if at < 0:
            return None, False
        end = at
        box = _BOX.match(text, at)
        if box is None:
            continue
        content = _braced(text, box.end(), max_chars)
        if content is not None:
            return content.strip(), False
        if len(text) > box.end() + max_chars:  # still open past max_chars: too long, not unclosed
            return None, True
    return None, False


_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)


def _braced(text: str, start: int, max_chars: int) -> str | None:
    """Text from `start` to the brace closing the one just before it; None if unclosed."""
    depth = 1
    # an escaped character, \{ and \} included, is matched whole and never opens or closes
    for token in _BRACE_OR_ESCAPE.finditer(text, start, min(len(text), start + max_chars + 1)):
        if token.group() == "{":
            depth += 1
        elif token.group() == "}":
            depth -= 1
            if depth == 0:
                return text[start:token.start()]
    return None


def answer_line(text: str, max_chars: int = 1000) -> str | None:
    """What follows the last "Answer:" / "The answer is" cue, to the end of its line, or None (also
    when it is longer than `max_chars`)."""
    line = _after_last_cue(text)
    return None if line is None else _cleaned(line, max_chars)


def answer_clause(text: str, max_chars: int = 1000) -> str | None:
    """`answer_line` up to its first clause boundary (rule 3 of the module docstring), or None (also
    when the clause after it offers another answer: "5 (or maybe 6)", "2 — or 3", "2 as well as 3")."""
    line = _after_last_cue(text)
    if line is None:
        return None
    clause = first_clause(line, max_chars)
    if _ANOTHER.match(line, len(clause)):
        return None
    return _cleaned(clause, max_chars)


def first_clause(text: str, max_chars: int = 1000) -> str:
    """`text` up to its first clause boundary outside brackets and `$...$` (rule 3), else all of it.

    Only the first `max_chars` characters (past leading markup) are scanned: an answer that runs
    longer is no answer whatever follows, and the scan stays bounded on a hostile line."""
    depth, in_math = 0, False
    start = _LEADING_DECORATION.match(text).end()
    for token in _CLAUSE_TOKEN.finditer(text, start, start + max_chars + 8):  # 8: room for "$$...$$"
        if token.group("open"):
            depth += 1
        elif token.group("close"):
            depth = max(0, depth - 1)  # a stray ")" in prose must not shield the rest of the line
        elif token.group("math"):
            in_math = not in_math
        elif token.group("end") and depth == 0 and not in_math:
            return text[:token.start()]
    return text


def _after_last_cue(text: str) -> str | None:
    last = None
    for last in _ANSWER_CUE.finditer(text):
        pass
    if last is None:
        return None
    end = text.find("\n", last.end())
    return text[last.end():end if end >= 0 else len(text)]


def _cleaned(answer: str, max_chars: int) -> str | None:
    answer = _undecorated(strip_math(_undecorated(answer)))
    return answer if answer and len(answer) <= max_chars else None


_LEADING_DECORATION = re.compile(r"[\s*`]*")
_TRAILING_DECORATION = re.compile(r"[\s*`.]*")  # matched on the reversed text


def _undecorated(text: str) -> str:
    """Markdown emphasis, code ticks and closing full stops taken off, in any nesting ("**5**.", "`5`").

    One pass from each end (taking a layer off at a time was quadratic on a line of "*.*.*.")."""
    start = _LEADING_DECORATION.match(text).end()
    end = len(text) - _TRAILING_DECORATION.match(text[::-1]).end()
    return text[start:end] if start < end else ""


def extract_answer(response: str, think_delimiter: str | None = None, max_chars: int = 1000) -> str | None:
    """The final answer of `response` (see the module docstring), or None when there is none."""
    if not isinstance(response, str):
        return None
    text = after_delimiter(response, think_delimiter)
    if text is None:
        return None
    answer, too_long = last_box(text, max_chars)
    if answer is None and not too_long:
        answer = answer_clause(text, max_chars)
    if not answer or len(answer) > max_chars:
        return None
    return answer


def reference_answer(reference: object, max_chars: int = 10_000) -> str | None:
    """A dataset's reference as an answer string: numbers as text; a full solution's last box."""
    if isinstance(reference, bool) or reference is None:
        return None
    if isinstance(reference, int):
        return str(reference)
    if isinstance(reference, float):
        # positional notation: repr's "1e-07" reads as Euler's e minus 7 to a math parser
        return format(Decimal(repr(reference)), "f") if math.isfinite(reference) else None
    if not isinstance(reference, str):
        return None
    boxed = last_boxed(reference, max_chars)
    answer = strip_math(boxed if boxed is not None else reference.strip())
    return answer if answer and len(answer) <= max_chars else None


def strip_math(answer: str) -> str:
    """Drop one pair of enclosing `$..$`, `$$..$$`, `\\(..\\)` or `\\[..\\]`."""
    for left, right in _MATH_WRAPPERS:
        if len(answer) > len(left) + len(right) and answer.startswith(left) and answer.endswith(right):
            return answer[len(left):-len(right)].strip()
    return answer
