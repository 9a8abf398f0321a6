"""Config dataclasses: one place for every option's name, type, default and documentation.

A user-facing option is one field of a small dataclass: its name is the YAML key and the flag
(`max_num_seqs` -> `--max-num-seqs`), its annotation the type, its default the default, and the
string literal written under it the help text. Values from YAML files and from the command line
go through the same `coerce`, so a recipe accepts what a flag accepts (`kv_cache_memory: 64MiB`).

    @dataclass
    class EngineConfig:
        kv_cache_memory: ByteSize | None = None
        \"\"\"Bytes for the KV cache (units accepted: 512MiB, 2GiB).\"\"\"

Checks: no silent coercion (`"2"` is not an int, `1` is not a bool), ints are accepted where
floats are, lists where tuples are, `Literal[...]` fields take only their choices.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import textwrap
import types
import typing
from typing import Annotated, Any, Literal

BYTES = "bytes"
ByteSize = Annotated[int, BYTES]
"""A number of bytes: an int, or a string with a unit (512MiB, 2GiB, 1.5GB, 4096)."""

_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


class ConfigError(ValueError):
    """A config value that cannot be used; the message starts with the key."""


def check(ok: bool, key: str, message: str) -> None:
    """A field check whose error names the key: ValueError("rollout.max_tokens: must be >= 1, got 0")."""
    if not ok:
        raise ValueError(f"{key}: {message}")


RENDER_ARGUMENTS = frozenset({"messages", "add_generation_prompt", "tokenize", "bos_token", "eos_token"})
"""What the renderer sets itself: chat template variables may not."""


def check_template_kwargs(kwargs: Any, where: str) -> dict:
    """`kwargs` as chat template variables, or a ValueError naming `where`."""
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"{where} must be a mapping of template variable names to values, got {kwargs!r}")
    taken = sorted(set(kwargs) & RENDER_ARGUMENTS)
    if taken:
        raise ValueError(f"{where} may not set {', '.join(taken)} (the renderer sets them)")
    return dict(kwargs)


def positive_ints(obj, names: tuple[str, ...], prefix: str = "") -> None:
    """ValueError(f"{prefix}{name} must be a positive integer, got ...") for the first of `names` on
    `obj` that is not an int >= 1 (True is not 1 here)."""
    min_ints(obj, dict.fromkeys(names, 1), prefix)


def min_ints(obj, minimums: dict[str, int], prefix: str = "") -> None:
    """ValueError naming the first field of `obj` that is not an int >= its minimum (True is not 1
    here). Configs call it when built, before anything is written: a count that failed mid-run would
    leave output that refuses the corrected rerun."""
    for name, low in minimums.items():
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            what = "a positive integer" if low == 1 else f"an integer >= {low}"
            raise ValueError(f"{prefix}{name} must be {what}, got {value!r}")


def is_number(x) -> bool:
    """A finite int or float; True is not 1 here. Range checks alone let NaN through (every
    comparison with it is false), and a NaN weight or scale makes every result NaN."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def finite_numbers(obj, above: dict[str, float] | None = None, at_least: dict[str, float] | None = None,
                   prefix: str = "") -> None:
    """ValueError naming the first field of `obj` that is not a finite number strictly above its bound
    in `above`, or at least its bound in `at_least` (-inf: any finite number)."""
    bounds = [(name, low, ">") for name, low in (above or {}).items()]
    bounds += [(name, low, ">=") for name, low in (at_least or {}).items()]
    for name, low, rule in bounds:
        value = getattr(obj, name)
        if not is_number(value) or (value <= low if rule == ">" else value < low):
            what = "a finite number" + ("" if low == -math.inf else f" {rule} {low:g}")
            raise ValueError(f"{prefix}{name} must be {what}, got {value!r}")


def parse_size(text: str | int) -> int:
    """Bytes from `512MiB`, `2GiB`, `1.5GB`, `4096` (binary units are powers of 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if not isinstance(text, str):
        raise ValueError(f"not a size: {text!r} (examples: 512MiB, 2GiB, 1000000)")
    t = text.strip().lower().replace(" ", "")
    number = t.rstrip("kmgtib")
    try:
        value = float(number) * _UNITS[t[len(number):]]
    except (ValueError, KeyError):
        raise ValueError(f"not a size: {text!r} (examples: 512MiB, 2GiB, 1000000)") from None
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"not a whole number of bytes: {text!r}")
    return int(value)


# ---- reading the dataclass -----------------------------------------------------------------------
@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of `cls` (and of its dataclass bases), whitespace folded."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):  # no source (e.g. a dataclass made at run time)
            continue
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (default_factory called); MISSING when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def is_bytes(hint) -> bool:
    hint = strip_optional(hint)
    return typing.get_origin(hint) is Annotated and BYTES in typing.get_args(hint)[1:]


def strip_optional(hint):
    """`X | None` -> X (other unions are returned as they are)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


# ---- values -------------------------------------------------------------------------------------
def coerce(key: str, hint, value):
    """`value` checked against the annotation `hint` (and converted where that loses nothing)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        if BYTES in args[1:]:
            try:
                return _positive_size(value)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
        return coerce(key, args[0], value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's own error, which names its choices or the reason
            return coerce(key, options[0], value)
        for arg in options:
            try:
                return coerce(key, arg, value)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {type_name(hint)}, got {value!r}")
    if origin is Literal:
        if value in args and type(value) is type(next(a for a in args if a == value)):
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(map(str, args))}, got {value!r}")
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(coerce(key, args[0], v) for v in value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(coerce(key, a, v) for a, v in zip(args, value))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(key, args[0], v) for v in value] if args else list(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-6 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    if hint in (dict, typing.Any) or origin is dict:
        if hint is typing.Any or isinstance(value, dict):
            return dict(value) if isinstance(value, dict) else value
    raise ConfigError(f"{key}: expected {type_name(hint)}, got {value!r}")


def _positive_size(value) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"must be a positive number of bytes, got {value!r}")
    return size


def type_name(hint) -> str:
    if is_bytes(hint):
        return "a size (e.g. 512MiB)"
    if typing.get_origin(hint) is Literal:
        return " | ".join(map(str, typing.get_args(hint)))
    if strip_optional(hint) is not hint:
        return f"{type_name(strip_optional(hint))} (or null)"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def build(cls: type, values: dict[str, Any], section: str | None = None):
    """`cls(**values)` with every value coerced to its field's type; errors name `section.key`."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        name = f"{section}.{key}" if section else key
        if key not in fields:
            raise ConfigError(f"{name}: unknown key; known: {', '.join(fields)}")
        kwargs[key] = coerce(name, hints[key], value)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        raise ConfigError(f"{section}: {message}" if section and not message.startswith(section) else message) from None


def to_dict(obj) -> Any:
    """A dataclass (nested ones too) as plain YAML/JSON-able values; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs between two nested dicts. A key
    only one side has, whose value there is None, false or empty, is no difference: an option added
    (or removed) since the old dict was saved, off (a run saved before env.eval_name existed resumes)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, dataclasses.MISSING), new.get(key, dataclasses.MISSING)
        name = f"{prefix}{key}"
        if dataclasses.MISSING in (a, b) and _off(b if a is dataclasses.MISSING else a):
            continue
        if isinstance(a, dict) and isinstance(b, dict) and a and b:
            out += differences(a, b, name + ".")
        elif a != b:
            out.append((name, None if a is dataclasses.MISSING else a, None if b is dataclasses.MISSING else b))
    return out


def _off(value) -> bool:
    return value is None or value is False or (isinstance(value, (dict, list, tuple, str)) and not value)
