"""`reasonrl bench structured`: both kinds decode, the constrained outputs obey the schema, the mask is timed."""

from reasonrl.bench.structured import StructuredBenchConfig, bench_structured


def test_bench_structured_small():
    out = bench_structured(StructuredBenchConfig(requests=4, max_tokens=12, repeats=1, device="cpu"))
    assert out["constrained_outputs_valid"]
    assert out["free_tokens_per_s"] > 0 and out["constrained_tokens_per_s"] > 0
    assert out["mask_us_per_sequence"] > 0 and out["schema_compile_ms"] > 0


def test_bench_structured_on_a_larger_generated_vocabulary():
    out = bench_structured(StructuredBenchConfig(vocab=1024, requests=2, max_tokens=8, repeats=1, device="cpu"))
    assert out["vocab"] == 1024 and out["constrained_outputs_valid"]
