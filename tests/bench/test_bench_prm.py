"""`reasonrl bench prm`: batched scoring agrees with per-prefix scoring; the speedup is reported (how large
it is is the benchmark's figure, docs/benchmarks.md, not a test's: a loaded CI machine measured 0.74x)."""

from reasonrl.bench.prm import PRMBenchConfig, bench_prm


def test_bench_prm_small():
    out = bench_prm(PRMBenchConfig(solutions=16, naive_solutions=4, device="cpu"))
    assert out["steps"] > 16 and out["max_score_difference"] < 1e-4
    assert out["batched_steps_per_s"] > 0 and out["naive_steps_per_s"] > 0
    assert out["speedup"] == out["batched_steps_per_s"] / out["naive_steps_per_s"]
