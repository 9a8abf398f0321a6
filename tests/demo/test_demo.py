"""The embedded default: the shipped policy, its reproduction script, and a shortened demo."""

import json

import pytest

from reasonrl.demo.policy import SHIPPED, make_policy
from reasonrl.demo.run import run_demo
from reasonrl.engine import LLM, SamplingParams
from reasonrl.envs.sums import SumsEnvironment
from reasonrl.models import load_model
from reasonrl.rl.metrics import read_metrics


def test_shipped_policy_is_a_real_checkpoint_that_reasons():
    env = SumsEnvironment()
    prompts = [p for p in env.prompts(n=60, split="eval") if p.metadata["terms"] <= 4][:20]
    llm = LLM(SHIPPED, kv_cache_memory=1 << 24)
    outs = llm.chat([p.messages for p in prompts], SamplingParams(temperature=0, max_tokens=64))
    rewards = env.rewards(prompts, [o.outputs[0].text for o in outs])
    assert sum(rewards) / len(rewards) > 0.6  # short problems: worked out, mostly right
    assert all("+" in o.outputs[0].text for o in outs[:5])  # with a scratchpad
    assert 0.3e6 < sum(p.numel() for p in load_model(SHIPPED).parameters()) < 5e6


def test_policy_script_still_runs(tmp_path):
    path = make_policy(tmp_path / "p", steps=3, num_traces=64)
    out = LLM(path, kv_cache_memory=1 << 24).chat([{"role": "user", "content": "Add: 1 + 2"}],
                                                 SamplingParams(temperature=0, max_tokens=8))
    assert len(out[0].outputs[0].token_ids) >= 1


def test_policy_script_makes_other_sizes(tmp_path):
    from reasonrl.demo.policy import main

    assert main(["--out", str(tmp_path / "p"), "--steps", "1", "--hidden-size", "96", "--num-layers", "3",
                 "--num-heads", "6", "--num-kv-heads", "3", "--intermediate-size", "200", "--lr", "1e-3"]) == 0
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["intermediate_size"], cfg["head_dim"]) == (96, 3, 6, 3, 200, 16)


@pytest.mark.slow
def test_shortened_demo_completes_and_reports(tmp_path):
    run_dir = tmp_path / "demo"
    summary = run_demo(run_dir, steps=3, measure_steps=1,
                       overrides={"env.eval_size": 40, "rollout.prompts_per_step": 6, "train.eval_every": 0})
    on_disk = json.loads((run_dir / "summary.json").read_text())
    for key in ("accuracy_before", "accuracy_after", "april_throughput_ratio", "wall_seconds"):
        assert key in on_disk and on_disk[key] == summary[key]
    for png in ("reward.png", "length.png", "accuracy.png"):
        assert (run_dir / png).stat().st_size > 1000
    assert (run_dir / "report.md").is_file() and on_disk["dropped_groups"] == 0
    rewards = [r["reward_mean"] for r in read_metrics(run_dir) if "reward_mean" in r]
    assert len(rewards) == 3 and min(rewards) > 0.25  # no collapse from the SFT policy's level
    assert summary["accuracy_after"] > summary["accuracy_before"] - 0.15

    # a second demo starts again from the shipped policy; the first run is kept aside
    again = run_demo(run_dir, steps=1, measure_steps=1,
                     overrides={"env.eval_size": 20, "rollout.prompts_per_step": 4, "train.eval_every": 0})
    assert again["steps"] == 1 and len([r for r in read_metrics(run_dir) if "reward_mean" in r]) == 1
    assert json.loads((tmp_path / "demo.previous" / "summary.json").read_text()) == on_disk
