"""The kernel task format: what a model is asked to write and how its answer is judged.

A `KernelTask` is data plus small functions:

- `instruction` (natural language) and `signature` (the Python function the answer must
  define, e.g. `def softmax(x: torch.Tensor) -> torch.Tensor`);
- `reference`: the PyTorch implementation that defines the right answer;
- `make_inputs(shape, dtype, generator)`: the arguments for one test case;
- `expert`: the functions (Triton kernels and their wrapper) whose source is the expert solution;
- `shapes` (at least three, one of them odd, all small enough for Triton's CPU interpreter),
  `dtypes`, and `tolerance` overrides per dtype.

A test case is (shape, dtype, seed); every shape is run with two seeds, so a candidate that
caches results between calls sees fresh inputs of the same shape. Tolerances are keyed by the
case's dtype (fp16 inputs give fp16-accurate outputs even when the output is fp32); integer and
boolean outputs compare exactly.
"""

from __future__ import annotations

import inspect
import textwrap
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

# KernelBench's defaults for fp32 and fp16; bf16 has 3 fewer mantissa bits than fp16, so one
# rounding step of a bf16 output near 1.0 (0.0078) already uses most of a 1e-2 budget.
DEFAULT_TOLERANCE: dict[torch.dtype, tuple[float, float]] = {  # dtype -> (atol, rtol)
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 2e-2),
}
SEEDS = (0, 1)  # every shape twice, with fresh inputs
HEADER = (
    "import math\n\nimport torch\nimport triton\nimport triton.language as tl\n"
    "from triton.language.extra import libdevice\n"
)


@dataclass(frozen=True)
class Case:
    shape: tuple[int, ...]
    dtype: torch.dtype
    seed: int

    @property
    def name(self) -> str:
        return f"{'x'.join(map(str, self.shape))}-{str(self.dtype).removeprefix('torch.')}-s{self.seed}"


@dataclass(frozen=True)
class KernelTask:
    id: str
    family: str
    level: int
    """Difficulty 1 (one elementwise op) to 5 (attention over a paged cache)."""
    instruction: str
    signature: str
    reference: Callable[..., Any]
    make_inputs: Callable[[tuple[int, ...], torch.dtype, torch.Generator], tuple]
    expert: tuple[Callable, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16)
    tolerance: dict[torch.dtype, tuple[float, float]] = field(default_factory=dict)
    perf_shapes: tuple[tuple[int, ...], ...] = ()
    """Larger shapes for GPU timing (default: none, the task is not timed)."""
    cpu: bool = True
    """Whether its correctness check runs under Triton's CPU interpreter."""
    cpu_note: str = ""
    """Why not, when it does not."""

    def __post_init__(self):
        if len(self.shapes) < 3:
            raise ValueError(f"task {self.id}: needs at least 3 test shapes, got {len(self.shapes)}")
        if not any(any(d % 2 for d in s) for s in self.shapes):
            raise ValueError(f"task {self.id}: needs a shape with an odd size")
        if not self.entry.isidentifier():
            raise ValueError(f"task {self.id}: cannot read a function name from signature {self.signature!r}")

    @property
    def entry(self) -> str:
        """The function the answer must define."""
        return self.signature.removeprefix("def ").split("(")[0].strip()

    def cases(self, seeds: tuple[int, ...] = SEEDS) -> list[Case]:
        return [Case(s, d, seed) for s in self.shapes for d in self.dtypes for seed in seeds]

    def tolerance_for(self, dtype: torch.dtype) -> tuple[float, float]:
        return self.tolerance.get(dtype, DEFAULT_TOLERANCE.get(dtype, (0.0, 0.0)))

    def inputs(self, case: Case) -> tuple:
        """The arguments of `case`: a pure function of (task, shape, dtype, seed)."""
        key = f"{self.id}:{case.shape}:{case.dtype}:{case.seed}".encode()
        generator = torch.Generator().manual_seed(zlib.crc32(key))
        return tuple(self.make_inputs(case.shape, case.dtype, generator))

    def expert_source(self) -> str:
        return solution_source(self.expert)

    def prompt_text(self) -> str:
        return f"{self.instruction}\n\nImplement exactly this function:\n\n    {self.signature}"


def solution_source(objects: tuple[Callable, ...]) -> str:
    """A self-contained module from functions and Triton kernels (their decorators included)."""
    parts = [textwrap.dedent(inspect.getsource(getattr(obj, "fn", obj))) for obj in objects]
    return HEADER + "\n\n" + "\n\n".join(parts)


def randn(shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Normal samples drawn in fp32 (same numbers for every dtype), then cast."""
    return (torch.randn(shape, generator=generator) * scale).to(dtype)


def uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.rand(shape, generator=generator) * (high - low) + low).to(dtype)
