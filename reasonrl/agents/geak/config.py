"""The kernel agent's options (`reasonrl kernel-agent` flags come from these fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class AgentConfig:
    endpoint: str
    """OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang, `reasonrl serve`, a hosted API)."""
    model: str
    """The model name the endpoint serves."""
    out: str = "runs/kernel-agent"
    """Run directory: every call, candidate and verdict is logged there; rerunning resumes it."""
    tasks: str = "kernels:?cpu=1"
    """Which tasks: a kernels: spec (kernels:?family=softmax, kernels:rocm=DIR, ...) or task ids (matmul,flip)."""
    iterations: int = 10
    """Sequential iterations per trajectory (GEAK: 20)."""
    parallel: int = 1
    """Independent trajectories per task (parallel scaling; pass@k is reported for k up to this)."""
    temperature: float = 1.0
    """Sampling temperature (GEAK: 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling."""
    max_tokens: int = 4096
    """Tokens per answer."""
    reflect: bool = True
    """Ask for a reflection on each verdict and show it to the next generation (GEAK's reflector)."""
    optimizer: bool = True
    """With GPU timings: show the passing candidates and their speedups and ask for a faster kernel."""
    knowledge: bool = True
    """Add the Triton knowledge notes to the system prompt (GEAK's knowledge injection)."""
    one_shot: Literal["experts", "solved", "none"] = "experts"
    """One-shot example: the most similar solved task by BM25 among other families' experts and this run's
    solutions of other tasks (experts), this run's solutions of other tasks only (solved), or none."""
    max_repeated_errors: int = 3
    """The debugger: after this many identical errors in a row, drop the line and start afresh."""
    ancestors: int = 5
    """Passing candidates the optimizer is shown (GEAK's ancestor_num)."""
    seed: int = 0
    """Call k of a trajectory is sampled with a seed derived from this, the task and k."""
    concurrency: int = 8
    """Requests in flight."""
    retries: int = 5
    """Retries of a 5xx / 408 / 429 / timeout / broken connection."""
    request_timeout: float = 600.0
    """Seconds per request."""
    api_key_env: str | None = None
    """The variable holding the API key (default: OPENAI_API_KEY if set)."""

    def __post_init__(self):
        for name in ("iterations", "parallel", "max_tokens", "max_repeated_errors", "ancestors", "concurrency"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0) or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")

    def settings(self) -> dict:
        """What decides a run's calls: a resumed run must agree on all of it."""
        keys = ("model", "tasks", "temperature", "top_p", "max_tokens", "reflect", "optimizer", "knowledge",
                "one_shot", "max_repeated_errors", "ancestors", "seed")
        return {k: getattr(self, k) for k in keys}
