import json

from reasonrl.cli import main


def test_bench_spec_cli_compares_plain_and_speculative_on_the_same_prompts(tmp_path):
    out = tmp_path / "spec.json"
    assert main(["bench", "spec", "--num-prompts", "3", "--max-tokens", "24", "--repeats", "2", "--concurrency", "1", "2",
                 "--draft-depth", "4", "--no-adaptive", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("accepted_length", "speedup", "greedy_identical", "device", "draft_cost_ratio", "verify_cost_ratio"):
        assert key in r
    assert r["greedy_identical"] is True
    assert 1 < r["accepted_length"] <= 5  # depth 4: at most 4 drafts and the target's own token
    assert r["speedup"] == r["batch1"]["speculative_tokens_per_s"] / r["batch1"]["plain_tokens_per_s"]
    assert len(r["batch2"]["pairwise_speedups"]) == 2 and r["concurrency"] == [1, 2]


def test_bench_spec_refuses_zero_repeats(capsys):
    assert main(["bench", "spec", "--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().err


def test_bench_spec_refuses_an_empty_concurrency_level(capsys):
    assert main(["bench", "spec", "--concurrency", "0"]) == 2
    assert "--concurrency" in capsys.readouterr().err
