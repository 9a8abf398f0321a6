"""Command-line flags generated from config dataclasses, so that a default lives in one place.

`add_flags(parser, EngineConfig)` adds one flag per field: `--max-num-seqs` from `max_num_seqs`,
its type from the annotation (Literal -> choices, bool -> --x/--no-x, tuple -> N values, dict ->
repeatable NAME=VALUE, ByteSize -> a size with units), its default from the field and its help from
the docstring under it, with the default shown. `values(args, EngineConfig)` reads them back as
keyword arguments; values go through the same `coerce` as recipes do.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any, Literal

import yaml

from reasonrl.config import (ConfigError, coerce, default_of, field_docs, is_bytes, parse_size, strip_optional,
                             type_hints)


def flag_name(f: dataclasses.Field) -> str:
    return "--" + f.metadata.get("flag", f.name.replace("_", "-"))


def dest_name(cls: type, f: dataclasses.Field) -> str:
    return f"{cls.__name__}.{f.name}"


def add_flags(parser: argparse.ArgumentParser, cls: type, *, only: list[str] | None = None,
              exclude: tuple[str, ...] = (), title: str | None = None, defaults: dict[str, Any] | None = None) -> None:
    """One flag per field of `cls` (in `only`, or all but `exclude`); `defaults` replaces a field's
    default for this command only (e.g. generate's greedy temperature)."""
    group = parser.add_argument_group(title) if title else parser
    docs, hints = field_docs(cls), type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude or (only is not None and f.name not in only) or f.metadata.get("cli") is False:
            continue
        default = (defaults or {}).get(f.name, default_of(f))
        kwargs = _kind(f.name, hints[f.name], default)
        required = default is dataclasses.MISSING
        help_text = docs.get(f.name, "")
        if not required and "default" not in help_text.lower():  # a docstring may say it better itself
            help_text = f"{help_text} (default: {_show(default)})".strip()
        if f.metadata.get("positional"):  # e.g. `reasonrl eval BENCHMARK`
            kwargs["metavar"] = f.name.upper()
            group.add_argument(dest_name(cls, f), help=help_text, **({} if required else {"nargs": "?", "default": default}),
                               **kwargs)
            continue
        group.add_argument(flag_name(f), dest=dest_name(cls, f), help=help_text, required=required,
                           **({} if required else {"default": default}), **kwargs)


def values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` given by `add_flags` flags, as keyword arguments (omitted ones left out)."""
    out = {}
    for f in dataclasses.fields(cls):
        dest = dest_name(cls, f)
        if hasattr(args, dest):
            out[f.name] = getattr(args, dest)
    return out


def command_line(*objs) -> list[str]:
    """The arguments that `add_flags` parses back into these dataclass instances (positional fields
    first, fields at their default left out): the command to print for a rerun."""
    positional, flags = [], []
    for obj in objs:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if not f.init or f.metadata.get("cli") is False or value == default_of(f) or value is None:
                continue  # (None, where it is not the default, has no flag spelling)
            if f.metadata.get("positional"):
                positional.append(str(value))
            elif isinstance(value, bool):
                flags.append(flag_name(f) if value else "--no-" + flag_name(f)[2:])
            elif isinstance(value, (list, tuple)):
                flags += [flag_name(f), *map(str, value)]
            elif isinstance(value, dict):
                for key, item in value.items():
                    flags += [flag_name(f), f"{key}={json.dumps(item)}"]  # (JSON is YAML, as the value is read)
            else:
                flags += [flag_name(f), str(value)]
    return positional + flags


def _kind(name: str, hint, default) -> dict[str, Any]:
    """argparse keywords for a field's annotation."""
    base = strip_optional(hint)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": list(args), "type": type(args[0])}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"nargs": "+", "type": _parser(name, args[0]), "metavar": "VALUE"}
    if origin is tuple:
        return {"nargs": len(args), "type": _parser(name, args[0]), "metavar": args[0].__name__.upper()}
    if origin is list:
        return {"nargs": "+", "type": _parser(name, args[0] if args else str), "metavar": "VALUE"}
    if base is dict or origin is dict:
        return {"action": _Mapping, "metavar": "NAME=VALUE"}
    return {"type": _parser(name, hint), "metavar": _metavar(hint)}


def _parser(name: str, hint):
    """A converter from the flag's text to the field's type, with the recipe's checks."""
    def convert(text: str):
        base = strip_optional(hint)
        if base is str or typing.get_origin(base) is Literal or str in typing.get_args(base):
            return text
        if base in (int, float):
            return base(text)  # a ValueError makes argparse say "invalid int value: 'x'"
        try:
            return coerce(name, hint, parse_size(text) if is_bytes(hint) else yaml.safe_load(text))
        except (ValueError, ConfigError) as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{name}: ")) from None

    convert.__name__ = getattr(strip_optional(hint), "__name__", "value")  # argparse names it in "invalid X value"
    return convert


def _metavar(hint) -> str:
    base = strip_optional(hint)
    if typing.get_origin(base) is typing.Annotated:
        return "SIZE"
    return {int: "N", float: "X", str: "TEXT"}.get(base, "VALUE")


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return "none" if value is None else str(value)


class _Mapping(argparse.Action):
    """`--kv-option bits=4 --kv-option group=32` -> {"bits": 4, "group": 32} (values read as YAML)."""

    def __call__(self, parser, namespace, text, option_string=None):
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentError(self, f"expects NAME=VALUE, got {text!r}")
        current = dict(getattr(namespace, self.dest) or {})
        current[key] = yaml.safe_load(value)
        setattr(namespace, self.dest, current)
