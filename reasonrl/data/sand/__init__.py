"""SAND-Math: novel, difficult, verified math problems from an LLM, with Difficulty Hiking.

Paper: "SAND-Math: Using LLMs to Generate Novel, Difficult and Useful Mathematics Questions and
Answers" (arXiv 2507.20527, AMD; NeurIPS 2025); code AMD-AGI/sand-pipeline. A teacher writes
problems with solutions, independent solutions must agree with them, duplicates and anything
close to evaluation sets go, an LLM rates difficulty, and Difficulty Hiking rewrites problems
around a sampled theorem and concept to make them harder (mean rating 5.02 -> 5.98, AIME25
46.38% -> 49.23% at equal data in the paper).

pipeline.py (the driver) · recipe.py, sections.py (the YAML recipe) · stage.py (resumable
stages) · calls.py (model calls, recorded) · ledger.py (append-only JSONL) · source.py (generate,
seed problems) · solve.py · consistency.py · dedupe.py (MinHash/LSH) · decontam.py (n-grams,
embeddings + judge) · rate.py · measure.py (empirical difficulty) · hike.py, topics.py ·
export.py · accounting.py, report.py · parse.py (untrusted output) · prompts.py · embeddings.py.

Departures from the released pipeline (each also named in its stage's file):
- Every stage names its own endpoint, model, temperature and token limit (the release hard-codes
  one server, one teacher and temperature 1); any OpenAI-compatible server works (chat
  completions, not the Responses API; `extra_body` passes e.g. vLLM's `reasoning_effort`).
- Resumable: every decision and every answered call is recorded; a rerun repays nothing.
- Consistency asks our math verifier first and the LLM judge only where it cannot decide, over
  all N solutions (the release judges `solution_1` against the reference).
- Dedupe is MinHash/LSH over word n-grams (the release: SemHash at 0.99), decontamination adds a
  word n-gram pass before the embedding + judge pass; the web novelty check is not implemented.
- Empirical difficulty (1 - a reference policy's pass rate over k samples) is measured next to
  the LLM rating, and either can filter.
- Yield accounting: drops with reasons, calls and tokens per stage, accepted problems per call.
"""

from .calls import StageIncomplete, Stopped
from .pipeline import run_sand
from .recipe import Recipe, from_dict, load_recipe

__all__ = ["Recipe", "StageIncomplete", "Stopped", "from_dict", "load_recipe", "run_sand"]
