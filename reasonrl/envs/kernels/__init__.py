"""Triton kernel tasks (GEAK, arXiv 2507.23194): the task format, our task set, loaders for the
published suites, the evaluator and the RL environment. See docs/kernels.md.
"""
