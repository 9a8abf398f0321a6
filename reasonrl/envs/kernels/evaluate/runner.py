"""What runs inside the sandbox: import the candidate, call it on each test case, save what it
returned. Nothing here judges; the parent compares (evaluator.py), out of the candidate's reach.

The result file (`out/.result.pt`, read back with `torch.load(weights_only=True)`, so it can
only hold tensors, numbers, strings and containers) has:

    stage        "done", or where it stopped: "import", "entry", "call", "save"
    case         the index of the case that raised (stage "call")
    error        the traceback, when something raised (its last ERROR_CHARS characters)
    outputs      per case, what the function returned (tensors detached, on the CPU)
    inputs_after per case, the arguments after the call (the parent checks nothing changed)
    launches     per case, Triton kernel launches during the call
    violations   what the audit hook denied
    layers       the sandbox layers that held

Every import this module needs happens at its import, before the sandbox drops `reasonrl`
from sys.modules and the audit hook forbids importing it again.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import traceback
from collections.abc import Mapping
from typing import Any

import numpy
import torch
import triton  # noqa: F401  (imported before the candidate, as the candidate will)
from triton.runtime.autotuner import Autotuner
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from .sandbox import Context

RESULT_FILE = ".result.pt"
MAX_DEPTH = 8  # output containers nested deeper than this are not serialized
ERROR_CHARS = 64 << 10  # of a traceback, the tail kept (the judge shows the last 3000 characters of it)


class Unrepresentable(TypeError):
    """An output `plain` cannot turn into what the parent loads: a run that returns one fails (the
    reference's run too: then no candidate can be judged on the task), since two different
    values of such a type would otherwise compare equal as the same placeholder."""


class LaunchCounter:
    """Counts Triton kernel launches by wrapping `run` of the JIT and interpreter kernel classes
    (autotuned and heuristic kernels end in one of them; on the CPU an autotuned kernel runs its
    first config, see `autotune_first_config`)."""

    def __init__(self):
        self.count = 0
        for cls in (JITFunction, InterpretedFunction):
            cls.run = self._wrap(cls.run)

    def _wrap(self, run):
        def counted(kernel, *args, warmup=False, **kwargs):
            if not warmup:
                self.count += 1
            return run(kernel, *args, warmup=warmup, **kwargs)

        return counted


def autotune_first_config() -> None:
    """Under Triton's interpreter (no GPU) the autotuner cannot benchmark: it asks for the active
    driver's benchmarker and there is none. Each `@triton.autotune` kernel then runs the first
    config its own pruning keeps, the path Triton itself takes for a single config; on a GPU the
    autotuner is untouched. Patched in the sandboxed child only."""
    prune = Autotuner.prune_configs

    def first(self, kwargs):
        return prune(self, kwargs)[:1]

    Autotuner.prune_configs = first


def load_candidate(path: str, name: str = "candidate"):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and triton.jit look their module up here
    spec.loader.exec_module(module)
    return module


def run_function(ctx: Context, source_path: str, entry: str, inputs_blob: bytes, device: str) -> None:
    """The body of a function job: the candidate's `entry` over every case."""
    counter = LaunchCounter()  # before the candidate's import, which may keep references to `run`
    if device == "cpu":
        autotune_first_config()
    result = {"stage": "call", "outputs": [], "inputs_after": [], "launches": []}
    try:
        cases = torch.load(io.BytesIO(inputs_blob), weights_only=True)
        result = execute_function(source_path, entry, cases, device, counter)
    except BaseException:
        result["error"] = error_text(source_path)
    finish(ctx, result)


def error_text(source_path: str) -> str:
    """The current exception's traceback, with the job's temporary directory left out (so the
    same error reads the same in every run)."""
    return traceback.format_exc().replace(os.path.dirname(source_path) + os.sep, "")[-ERROR_CHARS:]


def execute_function(source_path: str, entry: str, cases: list[tuple], device: str, counter: LaunchCounter,
                     module_name: str = "candidate") -> dict[str, Any]:
    """Import the candidate and call `entry` on each case's arguments (see the module docstring
    for the result). Also used in-process, unsandboxed, for trusted code (the experts)."""
    result: dict[str, Any] = {"stage": "import", "outputs": [], "inputs_after": [], "launches": []}
    try:
        module = load_candidate(source_path, module_name)
        result["stage"] = "entry"
        fn = getattr(module, entry, None)
        if not callable(fn):
            raise NameError(f"the answer defines no function named {entry!r}")
        result["stage"] = "call"
        for index, args in enumerate(cases):
            result["case"] = index
            args = tuple(_to(a, device) for a in args)
            before = counter.count
            out = fn(*args)
            _synchronize(device)
            result["launches"].append(counter.count - before)
            result["outputs"].append(plain(out))
            result["inputs_after"].append(plain(args))
        result["stage"] = "done"
        result.pop("case", None)
    except BaseException:
        result["error"] = error_text(source_path)
    return result


def run_script(ctx: Context, source_path: str, device: str) -> None:
    """The body of a script job (the published suites' format): run the candidate with its
    tests appended and keep the module's `result_gold`."""
    result: dict[str, Any] = {"stage": "import"}
    try:
        counter = LaunchCounter()
        if device == "cpu":
            autotune_first_config()
        module = load_candidate(source_path, "__candidate__")
        _synchronize(device)
        result["stage"] = "call"  # what its tests returned, turned into what the parent can compare
        result["outputs"] = [plain(getattr(module, "result_gold", None))]
        result["launches"] = [counter.count]
        result["stage"] = "done"
    except BaseException:
        result["error"] = error_text(source_path)
    finish(ctx, result)


def finish(ctx: Context, result: dict[str, Any]) -> None:
    result["violations"] = list(ctx.guard.violations)
    result["layers"] = sorted(ctx.layers)
    try:
        torch.save(result, os.path.join(ctx.work, RESULT_FILE))
    except BaseException:  # e.g. the file-size limit: report that, without the outputs
        small = {k: v for k, v in result.items() if k not in ("outputs", "inputs_after")}
        small.update(stage="save", error=traceback.format_exc())
        torch.save(small, os.path.join(ctx.work, RESULT_FILE))


def plain(value: Any, depth: int = 0) -> Any:
    """`value` as what `torch.load(weights_only=True)` accepts: plain tensors on the CPU,
    numbers, strings, None, and lists/tuples/dicts of those (any mapping becomes a dict with
    string keys, a dtype or device its name). Anything else, or nesting deeper than MAX_DEPTH,
    raises Unrepresentable."""
    if depth > MAX_DEPTH:
        raise Unrepresentable(f"the output is nested deeper than {MAX_DEPTH} containers")
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").as_subclass(torch.Tensor).clone()
    if value is None or type(value) in (bool, int, float, str, complex):
        return value
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if type(value) is list:
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, tuple):  # namedtuples and other tuple subclasses become plain tuples
        return tuple(plain(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        out = {str(k): plain(v, depth + 1) for k, v in value.items()}
        if len(out) != len(value):
            raise Unrepresentable(f"the output's keys {sorted(map(str, value))[:10]} are equal as strings")
        return out
    if type(value).__module__ == "numpy":
        try:
            return plain(torch.from_numpy(numpy.array(value)), depth + 1)
        except Exception:
            pass
    raise Unrepresentable(f"the output holds a {type(value).__module__}.{type(value).__qualname__}, which cannot "
                          "be compared: return tensors, numbers, strings, and lists, tuples or dicts of them")


def _to(value: Any, device: str) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) and device != "cpu" else value


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
