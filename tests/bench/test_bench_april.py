import json

import pytest

from reasonrl.cli import main


@pytest.mark.slow
def test_bench_april_cli_writes_both_arms(tmp_path):
    out = tmp_path / "april.json"
    assert main(["bench", "april", "--steps", "2", "--prompts-per-step", "2", "--samples-per-prompt", "4",
                 "--max-tokens", "48", "--sft-steps", "20", "--max-num-seqs", "16", "--repeats", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["throughput_ratio"] == r["april"]["tokens_per_s"] / r["sync"]["tokens_per_s"]
    for arm in ("sync", "april"):
        assert r[arm]["dropped_groups"] == 0 and len(r[arm]["reward_per_step"]) == 2
        assert 0 <= r[arm]["tail_idle_fraction"] <= 1
        assert len(r[arm]["tokens_per_s_per_repeat"]) == 2
        assert r[arm]["tokens_per_s"] == sum(r[arm]["tokens_per_s_per_repeat"]) / 2  # median of two
    assert r["sync"]["off_policy_token_fraction"] == 0
    assert 0 < r["sampled_eval_reward_before"] <= 1  # the fine-tuned policy writes the letter, mostly
    assert all(0 <= r[arm]["sampled_eval_reward_after"] <= 1 for arm in ("sync", "april"))
