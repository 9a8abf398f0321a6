"""`reasonrl bench scale` on the test session's Ray cluster: both arms and both sync paths measured."""

import json

import pytest

from reasonrl.cli import main


@pytest.mark.slow
def test_bench_scale_reports_both_arms_and_sync_paths(ray_cluster, policy_dir, tmp_path, capsys):
    out = tmp_path / "scale.json"
    assert main(["bench", "scale", "--model", str(policy_dir), "--requests", "4", "--max-tokens", "8",
                 "--repeats", "1", "--syncs", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["tokens_per_s"]) == {"1_engine", "2_engines"} and all(v > 0 for v in result["tokens_per_s"].values())
    assert result["speedup_2_vs_1"] == pytest.approx(result["tokens_per_s"]["2_engines"] / result["tokens_per_s"]["1_engine"])
    assert set(result["weight_sync_seconds"]) == {"object_store", "broadcast"}
    assert all(v > 0 for v in result["weight_sync_seconds"].values())
    assert ray_cluster.is_initialized()  # the session's cluster is left running
