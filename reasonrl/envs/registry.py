"""`load_environment("scheme:argument")`: environments by name, for recipes and the CLI.

The scheme picks a factory from `ENVIRONMENTS`; the factory gets the text after the first ":"
(empty when there is none) and returns an Environment:

    jsonl:data/gsm8k.jsonl?prompt=question&answer=answer&reward=math   any JSONL (jsonl.py)
    math:data/math500.jsonl                                            {"problem", "answer"} rows
    arith:?n=500&digits=3                                              generated arithmetic
    ttt:oTTT,cTTT   ttt:all                                            TTT-Bench games (ttt/)
    sums:           sums:?max_terms=16&min_terms=7                     running-sum chains (the demo's task)
    letter:a                                                           a smoke-test task (letter.py)
    shapes:?families=count,colour                                      visual QA on the shapes world (shapes.py)
    lvr:?max_objects=4                                                 shapes detail questions, LVR's rewards (vision/lvr/env.py)
    kernels:?family=softmax&cpu=1                                      Triton kernel tasks (kernels/)

Registering another environment (the hook): add `"name": "package.module:factory"` to
`ENVIRONMENTS` (a string keeps its import lazy, so loading `jsonl:` never imports TTT), or call
`register_environment("name", factory)` at run time. For example TTT-Bench registers
`"ttt": "reasonrl.envs.ttt:from_spec"`, and `ttt:oTTT` calls `from_spec("oTTT")`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Union

from .base import Environment

Factory = Callable[[str], Environment]

ENVIRONMENTS: dict[str, Union[Factory, str]] = {
    "jsonl": "reasonrl.envs.jsonl:from_spec",
    "math": "reasonrl.envs.jsonl:math_from_spec",
    "arith": "reasonrl.envs.registry:arithmetic_from_spec",
    "ttt": "reasonrl.envs.ttt:from_spec",
    "sums": "reasonrl.envs.registry:sums_from_spec",
    "letter": "reasonrl.envs.registry:letter_from_spec",
    "shapes": "reasonrl.envs.shapes:from_spec",
    "lvr": "reasonrl.vision.lvr.env:from_spec",
    "kernels": "reasonrl.envs.kernels:from_spec",
}


def register_environment(name: str, factory: Factory | str) -> None:
    """Make `name:...` specs build environments with `factory` ("module:function" or callable)."""
    if not name or not name.isidentifier():
        raise ValueError(f"environment names are identifiers, got {name!r}")
    ENVIRONMENTS[name] = factory


def load_environment(spec: str) -> Environment:
    """The environment a spec names, e.g. "jsonl:train.jsonl?prompt=question&reward=exact"."""
    scheme, _, argument = spec.partition(":")
    if scheme not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {scheme!r} in {spec!r}; known: {', '.join(sorted(ENVIRONMENTS))}")
    return _resolve(ENVIRONMENTS[scheme])(argument)


def _resolve(factory: Factory | str) -> Factory:
    if callable(factory):
        return factory
    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)


def spec_options(argument: str, env: str, kinds: dict[str, type]) -> dict[str, Any]:
    """The `?key=value&...` options of an `env:` spec, each converted by its kind (int or float); a
    ValueError names an unknown, repeated, valueless or malformed option (a typo is never ignored)."""
    from urllib.parse import parse_qsl

    text, out = argument.lstrip("?"), {}
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True) if text else []
    except ValueError:
        raise ValueError(f"{env}: options are key=value pairs joined by &, got {argument!r}") from None
    for key, value in pairs:
        if key not in kinds:
            raise ValueError(f"unknown option {key!r} for {env}:; known: {', '.join(kinds)}")
        if key in out:
            raise ValueError(f"{env}: option {key} is given twice")
        try:
            out[key] = kinds[key](value)
        except ValueError:
            kind = "an integer" if kinds[key] is int else "a number"
            raise ValueError(f"{env}: option {key} must be {kind}, got {value!r}") from None
    return out


def arithmetic_from_spec(argument: str) -> Environment:
    """`arith:?n=1000&seed=0&digits=2`: generated integer arithmetic, the math reward."""
    from .math.environment import MathEnvironment, arithmetic_problems

    options = {"n": 1000, "seed": 0, "digits": 2,
               **spec_options(argument, "arith", {"n": int, "seed": int, "digits": int})}
    if options["n"] < 1 or not 1 <= options["digits"] <= 9:
        raise ValueError("arith: needs n >= 1 and 1 <= digits <= 9")
    return MathEnvironment(arithmetic_problems(**options), name="arith")


def sums_from_spec(argument: str) -> Environment:
    """`sums:?max_terms=10&p=0.3&min_terms=2&tolerance=0`: chains of single-digit additions with a scratchpad."""
    from .sums import SumsEnvironment

    return SumsEnvironment(**spec_options(argument, "sums", {"max_terms": int, "p": float, "min_terms": int,
                                                                  "tolerance": int}))


def letter_from_spec(argument: str) -> Environment:
    """`letter:ab`: answer with one of these letters (a smoke test of the RL loop)."""
    from .letter import LetterEnvironment

    if argument and not (argument.isascii() and argument.isalpha()):
        raise ValueError(f"letter: the spec is the letters to answer with (letter:ab), got {argument!r}")
    return LetterEnvironment(argument or "ab")
