"""`reasonrl bench prm`: batched scoring agrees with per-prefix scoring and is faster."""

from reasonrl.bench.prm import PRMBenchConfig, bench_prm


def test_bench_prm_small():
    out = bench_prm(PRMBenchConfig(solutions=16, naive_solutions=4, device="cpu"))
    assert out["steps"] > 16 and out["max_score_difference"] < 1e-4
    assert out["batched_steps_per_s"] > 0 and out["speedup"] > 1.0
