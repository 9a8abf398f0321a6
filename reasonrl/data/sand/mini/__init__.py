"""SAND-Math in miniature, on `sums`: a deterministic teacher program behind a real
OpenAI-compatible endpoint (teacher.py, endpoint.py), held-out splits (splits.py), and the
reproduction of Difficulty Hiking (experiment.py; figures in docs/benchmarks.md). Nothing here
is used by the pipeline itself; it exists because no large model can run where reasonrl is
tested, and the pipeline's code path must still run end to end.
"""
