"""Loaders for the published suites' file formats, for users who have the files (the suites are
not in this repository).

- TritonBench-G / TritonBench-revised (GEAK-eval `data/TritonBench/data/TritonBench_G_v1/`): one
  file per kernel, the reference implementation, a line of 146 `#`, then test code ending in
  `result_gold = test_...()`. Instructions come from an Alpaca-style JSON (a list of rows with
  `instruction` and `file`), or a generic one naming the signatures.
- ROCm (GEAK-eval `data/ROCm/data/ROCm_v1/`): the same separator, then pytest tests that store
  outputs in a module-level `result_gold` dict. We run the correctness tests ourselves
  (`ROCM_DRIVER`: parametrize marks expanded, `request.node.name` as pytest would give it) and
  skip `test_performance` and the `test_save_*` hooks; imports of `geak_eval` are removed.

A candidate answers with the kernel part; the task's tests are appended to it, as GEAK does. The
reference file runs in the sandbox once to give `result_gold`, and the candidate's
`result_gold` is compared with it in the parent with the tolerance applied at every depth
(GEAK's TritonBench tolerance atol 1e-2 / rtol 1e-1, its ROCm one 1e-2 / 1e-2).

Without a GPU the test code's device strings are rewritten to the CPU (`for_cpu`): a
best-effort proxy, since these tests were written for `cuda`.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SEPARATOR = re.compile(r"^#{100,}\s*$", re.MULTILINE)
TRITONBENCH_TOLERANCE = (1e-2, 1e-1)
ROCM_TOLERANCE = (1e-2, 1e-2)
SKIPPED_ROCM_TESTS = ("test_performance", "test_save_results", "test_save_performance_results")

ROCM_DRIVER = '''

def _reasonrl_run_correctness_tests():
    """Run this module's parametrized correctness tests the way pytest would (appended by reasonrl)."""
    import inspect, itertools
    skip = {skipped!r}
    for name, fn in list(globals().items()):
        if not (name.startswith("test_") and callable(fn)) or name in skip:
            continue
        grids = []
        for mark in reversed(getattr(fn, "pytestmark", [])):
            if mark.name != "parametrize":
                continue
            names = mark.args[0].split(",") if isinstance(mark.args[0], str) else list(mark.args[0])
            names = [n.strip() for n in names]
            rows = [v if len(names) > 1 else (v,) for v in mark.args[1]]
            grids.append([dict(zip(names, row)) for row in rows])
        for combo in itertools.product(*grids) if grids else [()]:
            kwargs = {{k: v for part in combo for k, v in part.items()}}
            ident = "-".join(str(v) for part in combo for v in part.values())

            class _Node:
                pass
            request = _Node()
            request.node = _Node()
            request.node.name = f"{{name}}[{{ident}}]" if ident else name
            if "request" in inspect.signature(fn).parameters:
                kwargs["request"] = request
            fn(**kwargs)


_reasonrl_run_correctness_tests()
'''.format(skipped=SKIPPED_ROCM_TESTS)


@dataclass(frozen=True)
class ScriptTask:
    """A published suite's task: the candidate's code runs with `tests` appended."""

    id: str
    family: str
    instruction: str
    signature: str
    reference_source: str
    tests: str
    tolerance: tuple[float, float]
    level: int = 3
    cpu: bool = True
    cpu_note: str = "test code rewritten from cuda to cpu"
    entry: str = ""
    directory: str = ""
    """The suite's directory: the evaluator hides it from candidates (its files hold the references)."""

    def prompt_text(self) -> str:
        return f"{self.instruction}\n\nKeep exactly these signatures (and their imports):\n\n{self.signature}"


def split_file(text: str) -> tuple[str, str] | None:
    """(reference code, test code) of a file with the 146-`#` separator; None without one."""
    match = SEPARATOR.search(text)
    if not match:
        return None
    return text[: match.start()].rstrip() + "\n", text[match.end():].lstrip("\n")


def signatures(code: str) -> str:
    """The top-level functions of `code` as `def name(args) -> ret` lines (decorators kept)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return ""
    lines = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
            lines += [f"@{ast.unparse(d)}" for d in node.decorator_list]
            lines.append(f"def {node.name}({ast.unparse(node.args)}){returns}")
    return "\n".join(lines)


def for_cpu(code: str) -> str:
    """Device strings, `.cuda()` and CUDA synchronization rewritten for the CPU."""
    code = re.sub(r"""(['"])cuda(:\d+)?\1""", r"\1cpu\1", code)
    code = re.sub(r"\.cuda\(\)", ".cpu()", code)
    return re.sub(r"torch\.cuda\.synchronize\([^)]*\)", "None", code)


def load_instructions(path: str | Path | None) -> dict[str, dict]:
    """Alpaca-style rows by file name (with and without .py); {} without a file."""
    if path is None:
        return {}
    rows = json.loads(Path(path).read_text())
    if isinstance(rows, dict):
        rows = [{"file": k, "instruction": v} for k, v in rows.items()]
    out = {}
    for row in rows:
        name = Path(str(row.get("file") or row.get("filename") or "")).name
        if name and isinstance(row.get("instruction"), str):
            out[name] = row
            out[name.removesuffix(".py")] = row
    return out


def load_tritonbench(directory: str | Path, instructions: str | Path | None = None) -> list[ScriptTask]:
    return _load(directory, instructions, "tritonbench", TRITONBENCH_TOLERANCE, lambda tests: tests)


def load_rocm(directory: str | Path, instructions: str | Path | None = None) -> list[ScriptTask]:
    def driver(tests: str) -> str:
        kept = "\n".join(line for line in tests.splitlines() if "geak_eval" not in line)
        return kept + ROCM_DRIVER

    return _load(directory, instructions, "rocm", ROCM_TOLERANCE, driver)


def _load(directory, instructions, family: str, tolerance, prepare) -> list[ScriptTask]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{family} suite directory {directory} does not exist")
    rows = load_instructions(instructions)
    tasks = []
    for path in sorted(directory.glob("*.py")):
        parts = split_file(path.read_text(errors="replace"))
        if parts is None:
            log.warning("%s: no line of #s between the code and the tests; skipped", path)
            continue
        code, tests = parts
        row = rows.get(path.name, {})
        sig = signatures(code)
        instruction = row.get("instruction") or (f"Write the Triton kernels and Python wrappers of {path.stem} "
                                                 f"with these signatures.")
        level = row.get("difficulty")
        tasks.append(ScriptTask(f"{family}/{path.stem}", family, instruction, sig, code, prepare(tests), tolerance,
                                level=int(level) if str(level).isdigit() else 3, directory=str(directory.resolve())))
    if not tasks:
        raise ValueError(f"no {family} task files (code, a line of #s, tests) in {directory}")
    return tasks
