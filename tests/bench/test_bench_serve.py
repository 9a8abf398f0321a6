"""`bench_serve` on a tiny load: both arms run, good outputs agree, bad requests all get a 4xx."""

import pytest

from reasonrl.bench.serve import BAD_BODIES, ServeBenchConfig, bench_serve


def test_bench_serve_small_load():
    r = bench_serve(ServeBenchConfig(num_requests=9, concurrency=4, max_tokens=3, rounds=1, bad_fraction=0.5))
    assert r["bad_requests_per_round"] == 9  # half of all the mixed arm's requests
    for arm in ("clean", "mixed"):
        assert r[arm]["good_requests"] == 9 and r[arm]["failed_good"] == 0 and r[arm]["bad_not_4xx"] == 0
        assert r[arm]["latency_s"]["p50"] <= r[arm]["latency_s"]["p99"]
    assert r["outputs_identical"] and r["failed_good_requests"] == 0
    assert r["throughput_ratio"] == r["mixed"]["tokens_per_s"] / r["clean"]["tokens_per_s"]
    assert len(BAD_BODIES) >= 9


def test_bench_serve_config_is_checked():
    with pytest.raises(ValueError, match="bad_fraction"):
        ServeBenchConfig(bad_fraction=1.0)
    with pytest.raises(ValueError, match="concurrency"):
        ServeBenchConfig(concurrency=0)
