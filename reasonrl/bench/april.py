"""`reasonrl bench april`: rollout throughput of APRIL (over-provision 2.0) against synchronous
rollout (1.0), one RL workload run twice in one process from the same initial weights and seeds.

The policy is a small Qwen2-architecture model, fine-tuned here (a few seconds of `sft`) to answer
the `letter` task with responses whose lengths follow a log-normal law (median 24 tokens, p99
~10x that): the heavy tail of reasoning rollouts, produced by real sampling from a real model.
Both arms then run the same GRPO steps; each reports held-out greedy reward (64 prompts) before
and after, and the expected reward of the final policy (8 samples at temperature 1 on the same
64 prompts): the fair "reward at equal steps". The per-step training reward of the APRIL arm is
over a different mix of samples (recycled long ones, begun by older policies, finish later).
Throughput is response tokens of the samples trained on per rollout second (tokens of partial
samples still in APRIL's buffer at the end are not counted, which slightly favours the
synchronous arm). Each arm runs `repeats` times, interleaved; medians are reported.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reasonrl.bench.common import device_name
from reasonrl.engine import LLM, SamplingParams
from reasonrl.envs.letter import LetterEnvironment
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.loader import resolve_device, save_model
from reasonrl.models.tiny import make_checkpoint, make_tokenizer
from reasonrl.rl.config import load_config
from reasonrl.rl.metrics import read_metrics
from reasonrl.rl.sft import SFTConfig, load_sft_data, train_sft
from reasonrl.rl.trainer import Trainer


def heavy_tailed_policy(root: Path, median: int = 24, max_len: int = 256, seed: int = 0, sft_steps: int = 120,
                        hidden: int = 128, device: str | None = None) -> Path:
    """A small checkpoint that writes letter runs of log-normal length, then stops."""
    rng = random.Random(seed)
    env = LetterEnvironment()
    prompts = env.prompts(n=64, seed=seed)
    rows = []
    for _ in range(512):
        p = rng.choice(prompts)
        n = max(1, min(max_len - 2, int(math.exp(math.log(median) + rng.gauss(0, 1)))))
        mix = "".join(p.answer if rng.random() < 0.7 else rng.choice("ab ") for _ in range(n))  # imperfect: room for RL
        rows.append({"prompt": p.messages[0]["content"], "response": mix})
    tok = make_tokenizer([r["prompt"] for r in rows] + ["a b ab ba aa bb"], vocab_size=300)
    base = make_checkpoint(root / "base", "qwen2", tok, hidden_size=hidden, num_layers=2, num_heads=4, num_kv_heads=2,
                           max_position_embeddings=1024, seed=seed)
    data = root / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = load_model(base, device)
    samples = load_sft_data(data, Tokenizer.from_dir(base))
    train_sft(model, samples, SFTConfig(epochs=sft_steps * 32 / len(samples), lr=3e-3, samples_per_step=32, seed=seed))
    return save_model(model, root / "policy", Tokenizer.from_dir(base))


def run_arm(policy: Path, run_dir: Path, ratio: float, steps: int, prompts_per_step: int, samples_per_prompt: int,
            max_tokens: int, max_num_seqs: int, seed: int, off_policy: str = "tis", lr: float = 2e-3,
            device: str | None = None) -> dict:
    cfg = load_config(None, {
        "model.path": str(policy), "model.device": device, "train.run_dir": str(run_dir), "train.steps": steps, "train.seed": seed,
        "train.save_every": steps, "env.name": "letter", "env.eval_size": 64, "rollout.over_provision": ratio,
        "rollout.prompts_per_step": prompts_per_step, "rollout.samples_per_prompt": samples_per_prompt,
        "rollout.max_tokens": max_tokens, "optim.lr": lr, "engine.max_num_seqs": max_num_seqs, "loss.off_policy": off_policy,
        "engine.kv_cache_memory": 1 << 28})
    trainer = Trainer(cfg, LetterEnvironment(), load_model(policy, device), Tokenizer.from_dir(policy), console=False)
    trainer.train()
    records = read_metrics(run_dir)
    rows = [r for r in records if "reward_mean" in r]
    evals = [r["eval_reward_mean"] for r in records if "eval_reward_mean" in r]
    seconds = sum(r["rollout_seconds"] for r in rows)
    trained = sum(r["rollout_tokens_per_s"] * r["rollout_seconds"] for r in rows)
    return {"over_provision": ratio, "tokens_per_s": trained / seconds, "rollout_seconds": seconds,
            "generated_tokens_per_s": sum(r["rollout_new_tokens"] for r in rows) / seconds,
            "tail_idle_fraction": sum(r["tail_idle_fraction"] * r["rollout_seconds"] for r in rows) / seconds,
            "dropped_groups": sum(r["dropped_groups"] for r in rows),
            "off_policy_token_fraction": sum(r["off_policy_token_fraction"] for r in rows) / len(rows),
            "reward_per_step": [r["reward_mean"] for r in rows],
            "eval_reward_before": evals[0], "eval_reward_after": evals[-1],
            "sampled_eval_reward_after": sampled_reward(trainer.policy, trainer.tokenizer, max_tokens, seed),
            "length_p50": sorted(r["length_p50"] for r in rows)[len(rows) // 2],
            "length_max": max(r["length_max"] for r in rows)}


def sampled_reward(model, tokenizer, max_tokens: int, seed: int, prompts: int = 64, n: int = 8) -> float:
    """Mean reward of n samples (temperature 1) per held-out prompt: the policy's expected reward,
    which greedy decoding (saturated on this task) does not show."""
    env = LetterEnvironment()
    eval_prompts = env.prompts(n=prompts, seed=seed, split="eval")
    llm = LLM(model, tokenizer, kv_cache_memory=1 << 28)
    outs = llm.chat([p.messages for p in eval_prompts], SamplingParams(temperature=1.0, max_tokens=max_tokens, n=n,
                                                                       seed=seed))
    rewards = env.rewards([p for p, o in zip(eval_prompts, outs) for _ in o.outputs],
                          [c.text for o in outs for c in o.outputs])
    return sum(rewards) / len(rewards)


@dataclass
class AprilBenchConfig:
    steps: int = 16
    """RL steps per arm."""
    prompts_per_step: int = 8
    """Groups trained per step (N)."""
    samples_per_prompt: int = 8
    """Samples per group (G)."""
    max_tokens: int = 256
    """Response length cap."""
    max_num_seqs: int = 128
    """The engine's sequences in flight."""
    ratio: float = 2.0
    """Over-provisioning of the APRIL arm (the other arm runs at 1.0)."""
    seed: int = 0
    """Seeds the policy's warm-up and both arms."""
    sft_steps: int = 120
    """Warm-up of the heavy-tailed policy."""
    off_policy: Literal["none", "mask", "tis", "decoupled"] = "tis"
    """loss.off_policy of both arms (only APRIL has recycled tokens)."""
    lr: float = 3e-4
    """Learning rate of both arms."""
    repeats: int = 2
    """Runs per arm, interleaved; medians reported."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
        if self.ratio < 1:
            raise ValueError(f"ratio must be at least 1.0, got {self.ratio}")


def bench_april(c: AprilBenchConfig) -> dict:
    """Each arm runs `repeats` times, interleaved (sync, APRIL, sync, ...); the rollouts repeat
    exactly (same seeds), so only the timings differ, and throughput uses each arm's median."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        policy = heavy_tailed_policy(root, max_len=c.max_tokens, seed=c.seed, sft_steps=c.sft_steps, device=c.device)
        before = sampled_reward(load_model(policy, c.device), Tokenizer.from_dir(policy), c.max_tokens, c.seed)
        runs: dict[str, list[dict]] = {"sync": [], "april": []}
        for rep in range(c.repeats):
            for name, r in (("sync", 1.0), ("april", c.ratio)):
                runs[name].append(run_arm(policy, root / f"{name}{rep}", r, c.steps, c.prompts_per_step,
                                          c.samples_per_prompt, c.max_tokens, c.max_num_seqs, c.seed, c.off_policy, c.lr,
                                          c.device))
    arms = {}
    for name, results in runs.items():
        arms[name] = {**results[0], "tokens_per_s": statistics.median(x["tokens_per_s"] for x in results),
                      "generated_tokens_per_s": statistics.median(x["generated_tokens_per_s"] for x in results),
                      "tokens_per_s_per_repeat": [x["tokens_per_s"] for x in results],
                      "rollout_seconds_per_repeat": [x["rollout_seconds"] for x in results]}
        del arms[name]["rollout_seconds"]
    return {"device": device_name(resolve_device(c.device)), "steps": c.steps, "prompts_per_step": c.prompts_per_step,
            "samples_per_prompt": c.samples_per_prompt, "max_tokens": c.max_tokens, "max_num_seqs": c.max_num_seqs,
            "off_policy": c.off_policy, "lr": c.lr, "repeats": c.repeats,
            "throughput_ratio": arms["april"]["tokens_per_s"] / arms["sync"]["tokens_per_s"],
            "sampled_eval_reward_before": before, **arms}
