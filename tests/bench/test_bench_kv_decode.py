"""`reasonrl bench kv-decode` on the CPU: small shapes, the formats' PyTorch paths (the GPU run
times the Triton kernels; the target is checked there only)."""

import json

import pytest

from reasonrl.bench.kv_decode import DecodeBenchConfig, bench_kv_decode, filled_cache, format_table
from reasonrl.cli import main

SMALL = dict(context=70, batch=2, num_heads=4, num_kv_heads=2, head_dim=16, chunk=32, iters=2, warmup=1)


def test_rows_are_well_formed_and_dense_is_the_reference():
    rows = bench_kv_decode(DecodeBenchConfig(**SMALL, device="cpu"))
    assert [r["format"] for r in rows] == ["dense", "tada", "tada", "kivi", "spark", "spark", "spark"]
    assert rows[0]["ratio_to_dense"] == 1.0 and rows[0]["bytes_per_token_ratio"] == 1.0
    for r in rows:
        assert r["latency_ms"] > 0 and r["context"] == 70 and not r["kernels"] and "target" not in r
        assert r["ratio_to_dense"] == pytest.approx(r["latency_ms"] / rows[0]["latency_ms"])
    assert rows[2]["bytes_per_token_ratio"] < rows[1]["bytes_per_token_ratio"] < 1  # TaDA 2 bits < 4 bits
    assert "PyTorch paths" in format_table(rows)


def test_decode_steps_advance_and_fill_blocks_as_in_serving():
    """47 = 2 blocks + 15 tokens: the first decode step fills a staged block, the next ones start a
    new one (a repeated write at one position would write into a block already stored)."""
    rows = bench_kv_decode(DecodeBenchConfig(**{**SMALL, "context": 47, "iters": 3}, device="cpu"))
    assert len(rows) == 7 and all(r["latency_ms"] > 0 for r in rows)


@pytest.mark.parametrize("name, options", [("tada", {"bits": 4}), ("spark", {"key_ratio": 0.5})])
def test_the_cache_is_filled_as_the_engine_fills_it(name, options):
    """Whole blocks stored compressed, the last partial block of each sequence staged."""
    import torch

    cfg = DecodeBenchConfig(**SMALL)
    kv, tables = filled_cache(name, options, cfg, torch.device("cpu"), torch.float32)
    assert (kv.slots.table >= 0).sum() == cfg.batch  # 70 = 4 blocks + 6 tokens: one staged block per sequence
    assert tables.shape == (2, 5) and sorted(tables.flatten().tolist()) == list(range(10))


def test_dense_is_timed_on_its_pytorch_path_as_the_other_formats_are():
    """On CPU dense has a C++ decode kernel and no other format has one: the reference row would
    be some 3x faster than the path the formats' rows are compared with."""
    import torch

    kv, _ = filled_cache("dense", {}, DecodeBenchConfig(**SMALL), torch.device("cpu"), torch.float32)
    assert not kv.on_cpu_kernel


def test_cli_writes_the_rows(tmp_path, capsys):
    out = tmp_path / "d.json"
    assert main(["bench", "kv-decode", "--device", "cpu", "--context", "40", "--batch", "2", "--iters", "2",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 7 and rows[0]["context"] == 40 and rows[0]["num_kv_heads"] == 8
    assert "vs dense" in capsys.readouterr().out


def test_threads_flag_sets_torch_threads_and_is_recorded(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        out = tmp_path / "d.json"
        assert main(["bench", "kv-decode", "--threads", "1", "--device", "cpu", "--context", "20", "--batch", "1",
                     "--iters", "1", "--json", str(out)]) == 0
        assert json.loads(out.read_text())[0]["device"].endswith(", 1 threads")
        assert main(["bench", "kv-decode", "--threads", "0"]) == 2
        assert "--threads" in capsys.readouterr().err
        assert main(["bench", "kv-decode", "--device", "cpu", "--context", "0"]) == 2
        assert "context must be a positive integer" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
