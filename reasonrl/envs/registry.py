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
from typing import Callable, Union

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


def arithmetic_from_spec(argument: str) -> Environment:
    """`arith:?n=1000&seed=0&digits=2`: generated integer arithmetic, the math reward."""
    from urllib.parse import parse_qsl

    from .math.environment import MathEnvironment, arithmetic_problems

    options = {"n": 1000, "seed": 0, "digits": 2}
    for key, value in parse_qsl(argument.lstrip("?"), keep_blank_values=True):
        if key not in options:
            raise ValueError(f"unknown option {key!r} for arith:; known: n, seed, digits")
        try:
            options[key] = int(value)
        except ValueError:
            raise ValueError(f"arith: option {key} must be an integer, got {value!r}") from None
    if options["n"] < 1 or not 1 <= options["digits"] <= 9:
        raise ValueError("arith: needs n >= 1 and 1 <= digits <= 9")
    return MathEnvironment(arithmetic_problems(**options), name="arith")


def sums_from_spec(argument: str) -> Environment:
    """`sums:?max_terms=10&p=0.3&min_terms=2`: chains of single-digit additions with a scratchpad."""
    from urllib.parse import parse_qsl

    from .sums import SumsEnvironment

    options = dict(parse_qsl(argument.lstrip("?")))
    unknown = set(options) - {"max_terms", "p", "min_terms"}
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} for sums:; known: max_terms, p, min_terms")
    try:
        max_terms, p, min_terms = int(options.get("max_terms", 10)), float(options.get("p", 0.3)), int(options.get("min_terms", 2))
    except ValueError:
        raise ValueError(f"sums: options must be numbers, got {options}") from None
    return SumsEnvironment(max_terms, p, min_terms)


def letter_from_spec(argument: str) -> Environment:
    """`letter:ab`: answer with one of these letters (a smoke test of the RL loop)."""
    from .letter import LetterEnvironment

    return LetterEnvironment(argument or "ab")
