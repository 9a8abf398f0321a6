"""`StructuredOutput`: what a request's output must match (a JSON schema, a regex, one of a few
strings, or a grammar). Pure data, checked on construction; engine/grammar.py compiles it into a
per-sequence matcher that masks the logits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_SPEC_CHARS = 1 << 20
"""Largest schema, regex, choice list or grammar a request may carry (as JSON text)."""
MAX_CHOICES = 1024

JSON_OPTIONS = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}
"""How JSON is written under a constraint: json.dumps' separators and no other whitespace (what models are
trained on; a bounded schema then has finite outputs). A schema's "x-guidance" may say otherwise."""
ANY_JSON_OBJECT = {"type": "object"}
"""The schema of OpenAI's `response_format: {"type": "json_object"}`: any JSON object."""


@dataclass(slots=True)
class StructuredOutput:
    """Exactly one field is set."""

    json: dict[str, Any] | None = None
    """A JSON schema the output must be an instance of ({"type": "object"}: any JSON object)."""
    regex: str | None = None
    """A regular expression the whole output must match (Rust `regex` syntax)."""
    choice: list[str] | None = None
    """The output is exactly one of these strings."""
    grammar: str | None = None
    """A context-free grammar: Lark (llguidance's dialect, which may embed `%json {schema}`) or GBNF."""

    def __post_init__(self):
        from reasonrl.engine.sampling_params import ParamError

        given = [name for name in ("json", "regex", "choice", "grammar") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ParamError("structured", f"give exactly one of json, regex, choice or grammar, got {given or 'none'}")
        kind = given[0]
        value = getattr(self, kind)
        ok = {"json": lambda v: isinstance(v, dict), "regex": lambda v: isinstance(v, str) and v,
              "grammar": lambda v: isinstance(v, str) and v.strip(),
              "choice": lambda v: isinstance(v, list) and 0 < len(v) <= MAX_CHOICES
              and all(isinstance(c, str) and c for c in v)}[kind](value)
        if not ok:
            expected = {"json": "a JSON schema (an object)", "regex": "a non-empty string", "grammar": "a non-empty string",
                        "choice": f"1 to {MAX_CHOICES} non-empty strings"}[kind]
            raise ParamError(f"structured.{kind}", f"structured.{kind} must be {expected}")
        if len(json.dumps(value)) > MAX_SPEC_CHARS:
            raise ParamError(f"structured.{kind}", f"structured.{kind} is longer than {MAX_SPEC_CHARS} characters")

    @property
    def kind(self) -> str:
        return next(name for name in ("json", "regex", "choice", "grammar") if getattr(self, name) is not None)

    def key(self) -> str:
        """A text that identifies the constraint (grammars are cached by it). Key order is kept: a
        schema's property order is the order the output writes them in."""
        return self.kind + ":" + json.dumps(getattr(self, self.kind))
