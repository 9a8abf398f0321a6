"""The request fields that constrain an output, as the OpenAI-compatible API spells them: OpenAI's
`response_format` and tool definitions, vLLM's `guided_*` and `structured_outputs`; each maps to
one `StructuredOutput` (engine/structured.py). Used by the request bodies in engine/protocol.py."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from reasonrl.engine.sampling_params import ParamError
from reasonrl.engine.structured import ANY_JSON_OBJECT, StructuredOutput

GUIDED = ("response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs")
"""The fields that may constrain the output; at most one per request."""
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def structured_output(field: str, value: Any) -> StructuredOutput:
    """One constraint field's value as a StructuredOutput (ParamError when it is malformed)."""
    if field == "response_format":
        kind = value.get("type")
        if kind == "json_object":
            return StructuredOutput(json=ANY_JSON_OBJECT)
        schema = value.get("json_schema")
        if kind != "json_schema" or not isinstance(schema, dict) or not isinstance(schema.get("schema"), dict):
            raise ParamError(field, 'must be {"type": "text"}, {"type": "json_object"} or '
                                    '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}')
        return StructuredOutput(json=schema["schema"])
    if field == "guided_json":
        return StructuredOutput(json=_schema(value, field))
    if field in ("guided_regex", "guided_choice", "guided_grammar"):
        return StructuredOutput(**{field.removeprefix("guided_"): value})
    given = [k for k in ("json", "regex", "choice", "grammar", "json_object") if value.get(k) not in (None, False)]
    if len(given) != 1:
        raise ParamError(field, "give exactly one of json, regex, choice, grammar or json_object")
    if given[0] == "json_object":
        return StructuredOutput(json=ANY_JSON_OBJECT)
    return StructuredOutput(**{given[0]: _schema(value["json"], field) if given[0] == "json" else value[given[0]]})


def _schema(value: Any, field: str) -> dict:
    """A JSON schema given as an object or as JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ParamError(field, "the JSON schema is not valid JSON") from None
    if not isinstance(value, dict):
        raise ParamError(field, "the JSON schema must be an object")
    return value


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """A JSON schema of the arguments, an object's (as OpenAI requires); None takes any object."""
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, value):
        if value is not None and value.get("type", "object") != "object":
            raise ValueError(f"parameters must be the JSON schema of an object (type \"object\"), got type {value['type']!r}")
        return value


class Tool(BaseModel):
    model_config = STRICT
    type: Literal["function"]
    function: FunctionSpec


class FunctionName(BaseModel):
    model_config = STRICT
    name: str


class NamedToolChoice(BaseModel):
    model_config = STRICT
    type: Literal["function"]
    function: FunctionName
