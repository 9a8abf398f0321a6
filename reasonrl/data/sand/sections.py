"""The recipe's sections: one small dataclass per stage, each documented once, checked at load.

Every stage that calls a model is an `LLMSection`: it names its own endpoint, model, sampling,
token limit, concurrency and retries, so a small judge and a large teacher can be mixed. Keys in
the recipe's `defaults` section apply to every such stage that does not set them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from reasonrl.config import check
from reasonrl.eval.client import ClientConfig

from .prompts import SOLVE_SYSTEM

MAX_PROBLEMS = 1_000_000  # generate.problems: a run's slots are all built up front, in memory
AIME_BRANCHES = ["algebra", "geometry", "trigonometry", "number theory", "probability", "combinatorics"]


@dataclass
class LLMSection:
    base_url: str | None = None
    """This stage's OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang, reasonrl serve)."""
    model: str | None = None
    """The model name the endpoint serves."""
    api_key_env: str | None = None
    """The environment variable holding the endpoint's API key (none: OPENAI_API_KEY if set, else no key)."""
    chat: bool = True
    """POST /chat/completions with chat messages; false: /completions with their text (base models)."""
    temperature: float = 0.6
    """Sampling temperature (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling."""
    max_tokens: int = 4096
    """Response tokens per call, reasoning included; a response cut off there is dropped as truncated."""
    concurrency: int = 16
    """Requests in flight to this endpoint, at most."""
    retries: int = 5
    """Further attempts after a 5xx, 408, 429, timeout or broken connection (exponential backoff with jitter,
    Retry-After honoured)."""
    backoff: float = 0.5
    """Seconds before the first retry; doubles per attempt."""
    timeout: float = 3600.0
    """Seconds one request may take (a long reasoning trace takes minutes)."""
    extra_body: dict = field(default_factory=dict)
    """Server-specific request fields sent with every call, e.g. {reasoning_effort: high} for gpt-oss on vLLM,
    or {chat_template_kwargs: {enable_thinking: true}}."""

    def __post_init__(self):
        check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        check(self.max_tokens >= 1, "max_tokens", f"must be >= 1, got {self.max_tokens}")
        check(self.concurrency >= 1, "concurrency", f"must be >= 1, got {self.concurrency}")
        check(self.retries >= 0 and self.backoff >= 0 and self.timeout > 0, "retries",
              "retries and backoff must be >= 0 and timeout > 0")

    def client_config(self) -> ClientConfig:
        return ClientConfig(self.base_url, self.model, api_key=api_key(self.api_key_env), chat=self.chat,
                            concurrency=self.concurrency, retries=self.retries, backoff=self.backoff,
                            timeout=self.timeout)


def api_key(variable: str | None) -> str | None:
    if variable is None:
        return os.environ.get("OPENAI_API_KEY") or None
    value = os.environ.get(variable)
    if not value:
        raise ValueError(f"the API key variable {variable} is not set")
    return value


@dataclass
class RunSection:
    seed: int = 0
    """Seeds every call (a seeded server answers a rerun the same way), the branch order and the hike topics."""
    progress: bool = True
    """A progress line per stage on stderr."""


@dataclass
class GenerateSection(LLMSection):
    problems: int = 100
    """Candidate problems to generate (one call each; at most 1,000,000 per run)."""
    seed_problems: str | None = None
    """A JSONL file of problems to start from as well: {"problem", and "answer" or "solution"; optional "id",
    "branch"} per line. They skip generation and go through every other stage."""
    branches: list[str] = field(default_factory=lambda: list(AIME_BRANCHES))
    """Topic branches. Candidate i takes branch i of a seeded shuffle (round robin) and mixes in another one."""
    template: Literal["aime", "aime_hard", "olympiad_integer", "international_olympiad"] = "aime"
    """The generation prompt: AIME level (the released pipeline's), AIME 11-15 with an integer answer 0-999,
    olympiad with an integer answer, or IMO level."""
    instructions: str | None = None
    """Your own generation prompt instead of the template, with {branch} and {mix} where the branches go; it
    must ask for the problem in <Q></Q> and the solution in <S></S>."""
    max_problem_chars: int = 4000
    """Longer problems are dropped."""
    temperature: float = 1.0
    """Sampling temperature of the generator (the released pipeline: 1.0)."""
    max_tokens: int = 32768
    """Response tokens per call, reasoning included."""

    def __post_init__(self):
        super().__post_init__()
        check(0 <= self.problems <= MAX_PROBLEMS, "problems",
              f"must be >= 0 and <= {MAX_PROBLEMS:,}, got {self.problems}")
        check(len(set(self.branches)) >= 2, "branches", "must name at least two distinct branches (one is mixed in)")
        check(self.max_problem_chars >= 1, "max_problem_chars", "must be >= 1")


@dataclass
class SolveSection(LLMSection):
    n: int = 2
    """Independent solutions per problem (the released pipeline: 2)."""
    system_prompt: str | None = SOLVE_SYSTEM
    """The solver's system message (none: the problem alone)."""
    max_tokens: int = 32768
    """Response tokens per solution, reasoning included."""

    def __post_init__(self):
        super().__post_init__()
        check(self.n >= 1, "n", f"must be >= 1, got {self.n}")


@dataclass
class ConsistencySection(LLMSection):
    min_agreeing: int | None = None
    """Solutions whose final answer must agree with the reference (none: all of them; 1: the released script)."""
    judge: bool = True
    """Ask the LLM judge where the math verifier cannot decide (an answer it cannot read, a timeout);
    false: such a solution counts as disagreeing and this stage calls no model."""
    verifier_workers: int = 2
    """Processes of the math verifier."""
    verifier_timeout: float = 5.0
    """Seconds one answer comparison may take in the verifier before it counts as undecided."""
    tail_chars: int = 3000
    """Characters from the end of each solution shown to the judge (where the final answer is)."""
    temperature: float = 0.0
    """The judge's temperature (the released pipeline: 0)."""
    max_tokens: int = 2048
    """Response tokens per judgement."""

    def __post_init__(self):
        super().__post_init__()
        check(self.min_agreeing is None or self.min_agreeing >= 1, "min_agreeing", "must be >= 1")
        check(self.verifier_workers >= 1, "verifier_workers", "must be >= 1")
        check(self.verifier_timeout > 0, "verifier_timeout", "must be > 0")
        check(self.tail_chars >= 1, "tail_chars", f"must be >= 1 (0 showed the whole solution), got {self.tail_chars}")


@dataclass
class DedupeSection:
    threshold: float = 0.8
    """Estimated Jaccard similarity of word n-gram sets at or above which a later problem is a near-duplicate
    of an earlier one and is dropped."""
    ngram: int = 3
    """Words per shingle."""
    num_perm: int = 128
    """MinHash permutations per problem."""
    bands: int = 32
    """LSH bands (num_perm / bands rows each); more bands find pairs of lower similarity, at more checks."""

    def __post_init__(self):
        check(0 < self.threshold <= 1, "threshold", f"must be in (0, 1], got {self.threshold}")
        check(self.ngram >= 1 and self.num_perm >= 1 and self.bands >= 1, "ngram", "ngram, num_perm and bands must be >= 1")
        check(self.num_perm % self.bands == 0, "num_perm", f"{self.num_perm} is not a multiple of bands ({self.bands})")


@dataclass
class DecontamSection(LLMSection):
    eval_sets: list[str] = field(default_factory=list)
    """JSONL files of evaluation problems to keep out of the data (AIME, MATH-500, GPQA, ...)."""
    eval_field: str = "problem"
    """The field holding a problem's text in the evaluation files (else "question" or "prompt")."""
    ngram: int = 13
    """A candidate sharing any run of this many words with an evaluation problem is dropped (a shorter
    candidate: when its whole text equals one); always on."""
    embed_base_url: str | None = None
    """An OpenAI-compatible /embeddings endpoint; set, each candidate's top_k nearest evaluation problems
    go to the judge (the LLM fields of this section)."""
    embed_model: str | None = None
    """The embedding model the endpoint serves."""
    embed_api_key_env: str | None = None
    """The variable holding the embedding endpoint's key (none: as api_key_env)."""
    top_k: int = 5
    """Nearest evaluation problems judged per candidate."""
    min_similarity: float = 0.0
    """Neighbours below this cosine similarity are not judged."""
    temperature: float = 0.6
    """The judge's temperature (the released pipeline: 0.6)."""
    max_tokens: int = 2048
    """Response tokens per judgement."""

    def __post_init__(self):
        super().__post_init__()
        check(self.ngram >= 1 and self.top_k >= 1, "ngram", "ngram and top_k must be >= 1")
        check(-1 <= self.min_similarity <= 1, "min_similarity", "must be in [-1, 1]")
        check((self.embed_base_url is None) == (self.embed_model is None), "embed_model",
              "embed_base_url and embed_model go together")


@dataclass
class RateSection(LLMSection):
    ratings: int = 3
    """Ratings per problem (1-10 in 0.5 steps), averaged and snapped to 0.5."""
    min_rating: float | None = None
    """Problems rated below this are dropped."""
    max_rating: float | None = None
    """Problems rated above this are dropped."""
    max_solution_chars: int = 60000
    """The solution shown to the rater is cut to this many characters (its start)."""
    temperature: float = 0.5
    """The rater's temperature (the released pipeline: 0.5)."""
    max_tokens: int = 4096
    """Response tokens per rating."""

    def __post_init__(self):
        super().__post_init__()
        check(self.ratings >= 1, "ratings", f"must be >= 1, got {self.ratings}")
        for name in ("min_rating", "max_rating"):
            value = getattr(self, name)
            check(value is None or 1 <= value <= 10, name, f"must be a rating in [1, 10], got {value}")
        check(self.min_rating is None or self.max_rating is None or self.min_rating <= self.max_rating, "min_rating",
              f"{self.min_rating} is above max_rating {self.max_rating}: every problem would be dropped")
        check(self.max_solution_chars >= 1, "max_solution_chars", f"must be >= 1, got {self.max_solution_chars}")


@dataclass
class MeasureSection:
    model: str | None = None
    """The reference policy whose pass rate gives the empirical difficulty: a checkpoint directory (our engine,
    in process) or, with base_url, the model an endpoint serves. None: not measured."""
    base_url: str | None = None
    """The reference policy's OpenAI-compatible endpoint (none: the local engine)."""
    api_key_env: str | None = None
    """The variable holding the endpoint's key."""
    k: int = 4
    """Samples per problem; empirical difficulty = 1 - correct / k."""
    temperature: float = 1.0
    """Sampling temperature of the reference policy."""
    top_p: float = 1.0
    """Nucleus sampling."""
    max_tokens: int = 4096
    """Response tokens per sample."""
    system_prompt: str | None = SOLVE_SYSTEM
    """The system message given with each problem (none: the problem alone)."""
    chat: bool = True
    """Chat messages (the policy's chat template); false: plain text."""
    concurrency: int = 16
    """Endpoint: requests in flight."""
    device: str | None = None
    """Local engine: cpu, cuda or cuda:N."""
    min_difficulty: float | None = None
    """Problems whose empirical difficulty is below this are dropped (e.g. 0.25: the policy solves them always)."""
    max_difficulty: float | None = None
    """Problems whose empirical difficulty is above this are dropped."""

    def __post_init__(self):
        check(self.k >= 1 and self.max_tokens >= 1, "k", "k and max_tokens must be >= 1")
        check(self.temperature >= 0, "temperature", "must be >= 0")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        check(self.concurrency >= 1, "concurrency", f"must be >= 1, got {self.concurrency}")
        for name in ("min_difficulty", "max_difficulty"):
            value = getattr(self, name)
            check(value is None or 0 <= value <= 1, name, f"must be a difficulty in [0, 1], got {value}")
        check(self.min_difficulty is None or self.max_difficulty is None or self.min_difficulty <= self.max_difficulty,
              "min_difficulty", f"{self.min_difficulty} is above max_difficulty {self.max_difficulty}: every problem "
              "would be dropped")


@dataclass
class HikeSection(LLMSection):
    enabled: bool = True
    """Difficulty Hiking: rewrite rated problems around a sampled theorem and concept, then re-filter them."""
    topics: str | None = None
    """YAML topic file: branch -> topic -> {theorems: [...], tools_concepts: [...]}. The central theorem comes
    from the problem's branch (any branch when the file lacks it), the concept from any branch."""
    min_rating: float = 0.0
    """Problems rated below this are not hiked."""
    max_rating: float = 10.0
    """Problems rated above this are not hiked."""
    include_rating: bool = True
    """Tell the rewriter the original's rating."""
    temperature: float = 1.0
    """The rewriter's temperature."""
    max_tokens: int = 32768
    """Response tokens per rewrite, reasoning included."""

    def __post_init__(self):
        super().__post_init__()
        check(self.min_rating <= self.max_rating, "min_rating", "must be <= max_rating")


@dataclass
class ExportSection:
    min_solution_words: int = 500
    """Solutions with fewer whitespace-separated words are not exported (the released pipeline: 500, to drop
    short or cut-off traces); 0 keeps all."""
    system_prompt: str | None = SOLVE_SYSTEM
    """The system message of each SFT example (none: the problem alone)."""
    keep_reasoning: bool = True
    """Keep a solution's <think>...</think> block in the SFT response."""

    def __post_init__(self):
        check(self.min_solution_words >= 0, "min_solution_words", "must be >= 0")


def llm_sections() -> dict[str, type]:
    return {"generate": GenerateSection, "solve": SolveSection, "consistency": ConsistencySection,
            "decontaminate": DecontamSection, "rate": RateSection, "hike": HikeSection}


def section_types() -> dict[str, type]:
    """Section name -> dataclass, in recipe order."""
    return {"run": RunSection, "defaults": LLMSection, "generate": GenerateSection, "solve": SolveSection,
            "consistency": ConsistencySection, "dedupe": DedupeSection, "decontaminate": DecontamSection,
            "rate": RateSection, "measure": MeasureSection, "hike": HikeSection, "export": ExportSection}

