"""JSONL datasets as environments: a schema names the fields, a reward kind scores responses.

One JSON object per line. `JsonlSchema` says which field holds the prompt (a string, or chat
messages `[{"role": ..., "content": ...}]`), which the answer, which reward scores it, and
optionally the id, metadata and multiple-choice options fields. Reward kinds:

- `math`: a MathEnvironment (math-verify equivalence of the final boxed answer).
- `exact`: the final answer (last `\\boxed{}`, else the last "Answer:" line, else the whole
  response if at most 1000 characters) equals the reference after Unicode NFKC, case folding,
  `$`/`\\text{}` unwrapping, whitespace collapsing and edge punctuation stripping (never a
  decimal point before a digit nor a factorial "!" after one); plain decimal numbers match by
  value. The answer may be a list of accepted strings.
- `choice`: the letter that starts the final answer ("B", "(B)", "B. text", `\\boxed{B}`,
  "Option B")
  equals the reference letter; without a box or "Answer:" line, only a response that is just
  the letter ("B", "(b)") counts. The final answer is the last box, else what follows the last
  "Answer:" / "The answer is" cue, read up to its first clause boundary ("C, because ...",
  "C; B is wrong", "C。": math/extract.py `first_clause`). An answer that names another option
  letter joined to it by a hedge ("A or B", "A B C D", "A, B, C or D", "A and maybe B") names
  none and scores 0; "(B) Vitamin C", "D) A and B" and "B (A is wrong)" are B, D and B, and "I"
  before a lowercase word is the pronoun ("B, I think"). With a `choices` field, the options are listed under the prompt as "A. ..." and the
  reference letter must name one of them.

A row that is not a JSON object or has a missing or wrongly typed field (or a repeated id) is
reported with file, line and field and skipped; with `strict=True` the first one raises
`JsonlError`. Blank lines are ignored. Rows that fail are kept in `env.skipped`.

Text prompts get the reward's system prompt (`system=` overrides it, `system=""` drops it);
chat prompts are used as given unless `system` is set and they have no system message. With
`think` (e.g. "</think>"), only the text after the delimiter is scored and a response without
it scores 0. A file is one split: `prompts(split=...)` ignores `split`.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, Sequence

from .base import Environment, Prompt
from .math.environment import MATH_SYSTEM_PROMPT, MathEnvironment, select
from .math.extract import after_delimiter, answer_clause, answer_line, first_clause, last_box

log = logging.getLogger(__name__)

SYSTEM_PROMPTS = {
    "math": MATH_SYSTEM_PROMPT,
    "exact": "Answer the question. End with a line 'Answer: <your answer>'.",
    "choice": "Choose the correct option. End with a line 'Answer: <letter>'.",
}
REWARDS = tuple(SYSTEM_PROMPTS)
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class JsonlSchema:
    prompt: str = "prompt"  # field: a string, or a list of {"role", "content"} messages
    answer: str = "answer"  # field: str or number (math, exact), list of those (exact), letter (choice)
    reward: str = "math"  # math | exact | choice
    id: str | None = None  # field: str or int, unique; default "<name>-<line>"
    metadata: tuple[str, ...] = ()  # fields copied into Prompt.metadata when present
    choices: str | None = None  # field: list of option strings (choice only)
    system: str | None = None  # system prompt; None: the reward's default for text prompts
    think: str | None = None  # score only after this delimiter, e.g. "</think>"

    def __post_init__(self):
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {', '.join(REWARDS)}; got {self.reward!r}")
        if not self.prompt or not self.answer:
            raise ValueError("the prompt and answer fields must be named")
        if self.choices and self.reward != "choice":
            raise ValueError("choices= only goes with reward=choice")


@dataclass(frozen=True)
class RowError:
    path: str
    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f" field {self.field!r}:" if self.field else ""
        return f"{self.path}:{self.line}:{where} {self.message}"


class JsonlError(ValueError):
    def __init__(self, error: RowError):
        super().__init__(str(error))
        self.error = error


class _Bad(Exception):
    def __init__(self, field: str | None, message: str):
        self.field, self.message = field, message


# --- reading ------------------------------------------------------------------------------------


def read_jsonl(path: str | Path, schema: JsonlSchema, strict: bool = False, name: str | None = None
               ) -> tuple[list[Prompt], list[RowError]]:
    """Prompts from the good rows, and an error for each bad row (strict: raise on the first)."""
    path = Path(path)
    name = name or path.stem
    prompts, errors, seen = [], [], set()
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                prompt = _row(raw, line_no, schema, name)
                if prompt.id in seen:
                    raise _Bad(schema.id, f"repeats id {prompt.id!r}")
            except _Bad as bad:
                error = RowError(str(path), line_no, bad.field, bad.message)
                if strict:
                    raise JsonlError(error) from None
                errors.append(error)
                continue
            seen.add(prompt.id)
            prompts.append(prompt)
    return prompts, errors


def _row(raw: bytes, line_no: int, schema: JsonlSchema, name: str) -> Prompt:
    try:
        row = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Bad(None, f"not valid JSON ({exc})") from None
    if not isinstance(row, dict):
        raise _Bad(None, f"a row must be a JSON object, got {type(row).__name__}")
    messages = _messages(_get(row, schema.prompt), schema)
    answer = _answer(_get(row, schema.answer), schema)
    if schema.choices:
        options = _get(row, schema.choices)
        if not isinstance(options, list) or not 2 <= len(options) <= 26 or not all(isinstance(o, str) for o in options):
            raise _Bad(schema.choices, "must be a list of 2 to 26 strings")
        if ord(answer) - ord("A") >= len(options):
            raise _Bad(schema.answer, f"letter {answer} is past the {len(options)} choices")
        lettered = "\n".join(f"{chr(ord('A') + i)}. {option}" for i, option in enumerate(options))
        messages[-1] = {**messages[-1], "content": f"{messages[-1]['content']}\n\n{lettered}"}
    prompt_id = f"{name}-{line_no}"
    if schema.id:
        value = _get(row, schema.id)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise _Bad(schema.id, "must be a non-empty string or an integer")
        prompt_id = str(value)
    metadata = {key: row[key] for key in schema.metadata if key in row}
    return Prompt(id=prompt_id, messages=messages, answer=answer, metadata={"line": line_no, **metadata})


def _get(row: dict, field: str) -> Any:
    if field not in row:
        raise _Bad(field, "is missing")
    return row[field]


def _messages(value: Any, schema: JsonlSchema) -> list[dict[str, str]]:
    system = schema.system if schema.system is not None else SYSTEM_PROMPTS[schema.reward]
    if isinstance(value, str) and value.strip():
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str) for m in value
    ):
        messages = [{"role": m["role"], "content": m["content"]} for m in value]
        if messages[-1]["role"] != "user":
            raise _Bad(schema.prompt, "chat messages must end with a user message")
        if schema.system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": schema.system})
        return messages
    raise _Bad(schema.prompt, "must be a non-empty string or a list of {role, content} messages")


def _answer(value: Any, schema: JsonlSchema) -> Any:
    scalar = lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool) and v != ""  # noqa: E731
    if schema.reward == "choice":
        letter = value.strip().strip("()").upper() if isinstance(value, str) else ""
        if len(letter) != 1 or not "A" <= letter <= "Z":
            raise _Bad(schema.answer, f"must be an option letter A-Z, got {value!r}")
        return letter
    if schema.reward == "exact" and (scalar(value) or isinstance(value, list)):
        for v in value if isinstance(value, list) else [value]:
            if scalar(v) and not normalize_text(str(v)):  # "?", "...", "$": an empty response would match
                raise _Bad(schema.answer, f"{v!r} normalizes to nothing (edge punctuation and $ are dropped)")
    if scalar(value) and value == value and value not in (float("inf"), float("-inf")):
        return value
    if schema.reward == "exact" and isinstance(value, list) and value and all(scalar(v) for v in value):
        return value
    kinds = "a string, a number or a list of those" if schema.reward == "exact" else "a string or a number"
    raise _Bad(schema.answer, f"must be {kinds}, got {type(value).__name__}")


# --- exact and choice rewards -----------------------------------------------------------------

_TEXT_WRAPPER = re.compile(r"\\text(?:bf|rm)?\{([^{}]*)\}")
_EDGE_PUNCTUATION = " \t\n.,;:!?\"'`*"


def normalize_text(text: str) -> str:
    """NFKC, case-folded, `$`/`\\text{}` unwrapped, whitespace collapsed, edge punctuation off, but
    never a decimal point before a digit (".5" is not "5") nor a factorial after one ("5!" is not "5")."""
    text = _TEXT_WRAPPER.sub(r"\1", unicodedata.normalize("NFKC", text).replace("$", ""))
    text = " ".join(text.casefold().split())
    start, end = 0, len(text)
    while start < end and text[start] in _EDGE_PUNCTUATION and not (text[start] == "." and _digit(text, start + 1)):
        start += 1
    while end > start and text[end - 1] in _EDGE_PUNCTUATION and not (text[end - 1] == "!" and _digit(text, end - 2)):
        end -= 1
    return text[start:end]


def _digit(text: str, i: int) -> bool:
    return 0 <= i < len(text) and text[i].isdigit()


_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def same_answer(said: str, reference: str) -> bool:
    """Normalized texts equal, or both plain decimal numbers of equal value ("0.5" and ".5", "5" and "5.0")."""
    if said == reference:
        return True
    if _NUMBER.fullmatch(said) and _NUMBER.fullmatch(reference):
        return Decimal(said) == Decimal(reference)
    return False


def final_answer(response: str, think: str | None, whole_text_up_to: int) -> str | None:
    """The last box, else what follows the last "Answer:" cue on its line, else the whole text
    (after `think`) when it is at most `whole_text_up_to` characters long."""
    text = after_delimiter(response, think)
    if text is None:
        return None
    answer, too_long = last_box(text)
    if too_long:  # the answer is that box, and it is too long: no cue or text before it stands in
        return None
    if answer is None:
        answer = answer_line(text)
    if answer is None and len(text.strip()) <= whole_text_up_to:
        answer = text
    return answer


def exact_reward(response: str, answer: Any, think: str | None = None) -> float:
    candidate = final_answer(response, think, whole_text_up_to=1000)
    if candidate is None:
        return 0.0
    accepted = answer if isinstance(answer, list) else [answer]
    said = normalize_text(candidate)
    return 1.0 if said and any(same_answer(said, normalize_text(str(a))) for a in accepted) else 0.0


_OPTION_WORD = re.compile(r"^(?:option|choice)\s+(?=\(?[A-Za-z]\b)", re.IGNORECASE)
_LETTER = re.compile(r"\(?([A-Z])\)?(?=$|[\s.,;:!?)\]\u3002\uff0c\uff1b\uff1a\uff01\uff1f\u3001])")
# a second option letter joined to the first by a hedge ("A or B", "A, B", "A/B", "A and maybe B"), or
# after a bare letter and a space ("A B C D"); "D) A and B", "B (A is wrong)", "B rather than A" and
# "I" before a lowercase word (the pronoun: "C, I think") name no second option
_HEDGE = r"(?:\s*(?:[,/&;+]|\b(?:or|and|maybe|possibly|perhaps|probably|either|also)\b))+\s*\(?"
_SECOND_LETTER = re.compile(rf"{_HEDGE}([A-Z])\)?(?![A-Za-z'’])(?!(?<=I)\s+[a-z])")
_NEXT_BARE_LETTER = re.compile(r"\s+([A-Z])(?![A-Za-z'’])(?!(?<=I)\s+[a-z])")


def choice_letter(response: str, think: str | None = None) -> str | None:
    """The one option letter the final answer starts with and names, or None (module docstring)."""
    text = after_delimiter(response, think)
    if text is None:
        return None
    candidate, too_long = last_box(text)
    if too_long:
        return None
    candidate = answer_clause(text) if candidate is None else first_clause(candidate)
    if candidate is None and len(text.strip()) <= 4:  # "B", "(B)", "B.": not "I think"
        candidate = text
    if candidate is None:
        return None
    candidate = _TEXT_WRAPPER.sub(r"\1", candidate).replace("$", "").strip(_EDGE_PUNCTUATION)
    candidate = _OPTION_WORD.sub("", candidate, count=1)  # "Option B", "choice (C)": the letter follows
    if len(candidate) == 1:
        candidate = candidate.upper()
    match = _LETTER.match(candidate)
    if match is None:
        return None
    closed = match.group(0).endswith(")") or candidate[match.end():match.end() + 1] in (".", ":", "]")
    second = _SECOND_LETTER.match(candidate, match.end()) or (
        None if closed else _NEXT_BARE_LETTER.match(candidate, match.end()))
    if second and second.group(1) != match.group(1):
        return None  # "A or B", "A B C D": a hedge over options is no answer
    return match.group(1)


def choice_reward(response: str, answer: str, think: str | None = None) -> float:
    return 1.0 if choice_letter(response, think) == answer else 0.0


class AnswerEnvironment(Environment):
    held_out = False  # one file: another split means another file
    """Prompts with reference answers scored by `exact` or `choice` (see the module docstring)."""

    def __init__(self, prompts: Sequence[Prompt], reward: str, name: str, think: str | None = None):
        if reward not in ("exact", "choice"):
            raise ValueError(f"AnswerEnvironment scores exact or choice, not {reward!r}")
        if not prompts:
            raise ValueError(f"{name}: no prompts")
        self.items, self.reward_kind, self.name, self.think = list(prompts), reward, name, think
        self._score = exact_reward if reward == "exact" else choice_reward

    def prompts(self, n: int | None = None, seed: int = 0, split: str = "train") -> list[Prompt]:
        return select(self.items, n, seed)

    def score(self, prompt: Prompt, response: str) -> float:
        return self._score(response, prompt.answer, self.think)

    def extract(self, prompt: Prompt, response: str) -> str | None:
        try:
            if self.reward_kind == "choice":
                return choice_letter(response, self.think)
            answer = final_answer(response, self.think, whole_text_up_to=1000)
            return (answer or "").strip() or None
        except Exception:  # untrusted input: no answer, never an error
            return None


# --- loading --------------------------------------------------------------------------------


def load_jsonl(path: str | Path, schema: JsonlSchema | None = None, *, strict: bool = False,
               name: str | None = None, **schema_fields: Any) -> Environment:
    """An environment from a JSONL file: `load_jsonl("gsm8k.jsonl", prompt="question")`.

    Bad rows are logged and skipped (`env.skipped`), or raise JsonlError when `strict`."""
    schema = schema or JsonlSchema(**schema_fields)
    name = name or Path(path).stem
    prompts, errors = read_jsonl(path, schema, strict=strict, name=name)
    for error in errors[:10]:
        log.warning("skipped %s", error)
    if len(errors) > 10:
        log.warning("skipped %d more bad rows of %s", len(errors) - 10, path)
    if not prompts:
        raise ValueError(f"{path}: no valid rows ({len(errors)} bad)")
    if schema.reward == "math":
        env = MathEnvironment(prompts, name=name, think_delimiter=schema.think)
    else:
        env = AnswerEnvironment(prompts, schema.reward, name, schema.think)
    env.skipped = errors
    return env


def from_spec(spec: str, **defaults: Any) -> Environment:
    """`PATH?prompt=question&answer=answer&reward=math&id=uid&metadata=level,type&strict=1`.

    Keys are JsonlSchema's fields plus `strict` and `name`; values are URL-decoded, so a
    literal & or = is written %26 or %3D. A path cannot contain "?"."""
    path, _, query = spec.partition("?")
    if not path:
        raise ValueError(f"no path in environment spec {spec!r}")
    known = {f.name for f in fields(JsonlSchema)} | {"strict", "name"}
    given = _pairs(query, spec)
    for key, _ in given:
        if key not in known:
            raise ValueError(f"unknown option {key!r} in {spec!r}; known: {', '.join(sorted(known))}")
    if len({key for key, _ in given}) < len(given):
        raise ValueError(f"an option is given twice in {spec!r}")
    options: dict[str, Any] = {**defaults, **dict(given)}
    if "metadata" in options:
        options["metadata"] = tuple(k for k in options["metadata"].split(",") if k)
    strict = _boolean(options.pop("strict", "false"), spec)
    name = options.pop("name", None)
    return load_jsonl(path, JsonlSchema(**options), strict=strict, name=name)


def math_from_spec(spec: str) -> Environment:
    """`math:PATH[?...]`: a JSONL of {"problem", "answer"} rows with the math reward."""
    _, _, query = spec.partition("?")
    if any(key == "reward" and value != "math" for key, value in _pairs(query, spec)):
        raise ValueError(f"math:{spec} always uses reward=math; use jsonl: for another reward")
    return from_spec(spec, prompt="problem", answer="answer", reward="math")


def _pairs(query: str, spec: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    try:
        return parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"cannot read the options of {spec!r}: write key=value pairs joined by &") from None


def _boolean(value: str, spec: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no", ""):
        return False
    raise ValueError(f"strict must be true or false in {spec!r}, got {value!r}")
