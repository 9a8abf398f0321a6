"""Benchmark harness: a local checkpoint or any OpenAI-compatible endpoint on an environment,
n samples per problem, pass@k, per-subset tables, resumable (see docs/eval.md).

harness.py (run_eval, the driver) · client.py (endpoints: concurrency, retries) · local.py (the
in-process engine) · jobs.py (samples and their seeds) · store.py (the run directory, resume) ·
passk.py (the unbiased estimator) · summary.py (numbers and markdown) · scaling.py (best-of-N
with reward models) · progress.py.
"""

from .client import EndpointError
from .harness import EvalConfig, IncompleteEval, evaluate, run_eval
from .passk import mean_pass_at_k, pass_at_k

__all__ = ["EndpointError", "EvalConfig", "IncompleteEval", "evaluate", "mean_pass_at_k", "pass_at_k", "run_eval"]
