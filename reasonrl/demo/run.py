"""`reasonrl train` with no arguments: post-train the embedded policy on `sums`, end to end.

1. measure rollout throughput of APRIL against synchronous rollout, from the starting policy
   (rollouts only, same prompts and seeds, same process);
2. GRPO with APRIL rollouts, the verifier as reward, held-out greedy accuracy before and after;
3. write the report (PNG curves, report.md), summary.json and a checkpoint, and say how to
   evaluate and serve the result.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from reasonrl.demo.policy import SHIPPED
from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.envs.registry import load_environment
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.chat import ChatEncoder
from reasonrl.rl.checkpoint import latest_checkpoint
from reasonrl.rl.config import RunConfig, load_config
from reasonrl.rl.metrics import read_metrics
from reasonrl.rl.report import write_report
from reasonrl.rl.run import RunMismatch, _refuse_if_busy, is_run_dir, open_run
from reasonrl.rl.trainer import Trainer
from reasonrl.rollout.backend import EngineBackend
from reasonrl.rollout.manager import RolloutManager

RECIPE = Path(__file__).parent / "demo.yaml"


def say(text: str = "") -> None:
    print(text, file=sys.stderr, flush=True)


def rollout_throughput(cfg: RunConfig, env, policy, tokenizer, ratio: float, steps: int) -> dict[str, float]:
    """Rollouts only (no training) from the starting policy, through the same rollout manager the
    trainer uses: response tokens of finished groups per rollout second, and the tail idle fraction."""
    backend = EngineBackend(LLMEngine(policy, tokenizer, cfg.engine))
    rollout = RolloutManager(backend, env, ChatEncoder(tokenizer, policy, cfg.rollout.chat_template_kwargs),
                             dataclasses.replace(cfg.rollout, over_provision=ratio), cfg.train.seed)
    seconds = tokens = idle = 0.0
    rollout.collect(0, 0)  # warm-up, not counted
    for step in range(1, steps + 1):
        groups, stats = rollout.collect(step, 0)
        seconds += stats["rollout_seconds"]
        tokens += sum(len(s.response_ids) for g in groups for s in g.samples)
        idle += stats["tail_idle_fraction"] * stats["rollout_seconds"]
    return {"tokens_per_s": tokens / seconds, "tail_idle_fraction": idle / seconds, "seconds": seconds}


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def run_demo(run_dir: str | Path = "runs/demo", steps: int | None = None, measure_steps: int = 4,
             overrides: dict | None = None, stop=lambda: False) -> dict | None:
    """The demo's summary, or None when `stop()` ended it early (the run is then checkpointed and
    can be resumed like any run: `reasonrl train RUN/config.yaml`)."""
    start = time.perf_counter()
    cfg = load_config(RECIPE, {"model.path": str(SHIPPED), "train.run_dir": str(run_dir),
                               **({"train.steps": steps} if steps else {}), **(overrides or {})})
    run_dir = Path(cfg.train.run_dir)  # `--set train.run_dir=...` wins
    if run_dir.exists() and not _empty_dir(run_dir):  # the demo always starts afresh; the last run is kept aside
        previous = run_dir.with_name(run_dir.name + ".previous")
        for path in (run_dir, previous):
            _refuse_if_busy(path)  # (a live run moved aside goes on, by name, in the new one)
            if path.exists() and not is_run_dir(path) and not _empty_dir(path):
                raise RunMismatch(f"{path} exists and is not a reasonrl run directory: the demo would move or delete "
                                  "it; choose another train.run_dir")
        shutil.rmtree(previous, ignore_errors=True)
        run_dir.rename(previous)
        say(f"(the previous run in {run_dir} is now {previous})")
    open_run(run_dir, cfg.to_dict(), console=False)
    env = load_environment(cfg.env.name)
    policy, tokenizer = load_model(cfg.model.path, cfg.model.device), Tokenizer.from_dir(cfg.model.path)
    say(f"reasonrl demo: GRPO + APRIL on `sums` (add digits, showing the running total) with the embedded "
        f"{sum(p.numel() for p in policy.parameters()) / 1e6:.1f}M-parameter policy, on {policy.device.type.upper()}.")
    say(f"[1/3] rollout throughput, synchronous vs APRIL (over-provision {cfg.rollout.over_provision}), "
        f"{measure_steps} rollout steps each ...")
    sync = rollout_throughput(cfg, env, policy, tokenizer, 1.0, measure_steps)  # no update: the weights stay
    april = rollout_throughput(cfg, env, policy, tokenizer, cfg.rollout.over_provision, measure_steps)
    ratio = april["tokens_per_s"] / sync["tokens_per_s"]
    say(f"      synchronous {sync['tokens_per_s']:,.0f} tok/s (tail idle {sync['tail_idle_fraction']:.0%}), "
        f"APRIL {april['tokens_per_s']:,.0f} tok/s (tail idle {april['tail_idle_fraction']:.0%}): {ratio:.2f}x")
    say(f"[2/3] RL: {cfg.train.steps} steps of {cfg.rollout.prompts_per_step} prompts x "
        f"{cfg.rollout.samples_per_prompt} samples; held-out greedy accuracy on {cfg.env.eval_size} problems "
        "before, during and after ...")
    trainer = Trainer(cfg, env, policy, tokenizer)
    try:
        trainer.train(stop)
    finally:
        trainer.close()
    if stop():
        say(f"stopped at step {trainer.step}; checkpoint: {latest_checkpoint(run_dir)}\n"
            f"resume with: reasonrl train {run_dir / 'config.yaml'}")
        return None
    say("[3/3] report ...")
    records = read_metrics(run_dir)
    evals = [r for r in records if "eval_accuracy" in r]
    summary = {
        "accuracy_before": evals[0]["eval_accuracy"], "accuracy_after": evals[-1]["eval_accuracy"],
        "accuracy_long_before": evals[0].get("eval_accuracy_long"), "accuracy_long_after": evals[-1].get("eval_accuracy_long"),
        "april_throughput_ratio": ratio, "sync_tokens_per_s": sync["tokens_per_s"],
        "april_tokens_per_s": april["tokens_per_s"], "sync_tail_idle_fraction": sync["tail_idle_fraction"],
        "april_tail_idle_fraction": april["tail_idle_fraction"],
        "response_length_p50_before": evals[0].get("eval_length_p50"), "response_length_p99_before": evals[0].get("eval_length_p99"),
        "response_length_p50_after": evals[-1].get("eval_length_p50"), "response_length_p99_after": evals[-1].get("eval_length_p99"),
        "dropped_groups": sum(r.get("dropped_groups", 0) for r in records), "steps": cfg.train.steps,
        "wall_seconds": time.perf_counter() - start,
    }
    report = write_report(run_dir, summary)
    summary["checkpoint"] = str(latest_checkpoint(run_dir))
    summary["report"] = str(report)
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _closing(summary, Path(run_dir))
    return summary


def _closing(s: dict, run_dir: Path) -> None:
    say()
    say(f"held-out accuracy (greedy): {s['accuracy_before']:.1%} -> {s['accuracy_after']:.1%} "
        f"({100 * (s['accuracy_after'] - s['accuracy_before']):+.1f} points)")
    if s["accuracy_long_before"] is not None:
        say(f"  on problems with 6+ terms: {s['accuracy_long_before']:.1%} -> {s['accuracy_long_after']:.1%}")
    say(f"response length (tokens) p50/p99: {s['response_length_p50_before']:.0f}/{s['response_length_p99_before']:.0f} "
        f"-> {s['response_length_p50_after']:.0f}/{s['response_length_p99_after']:.0f}")
    say(f"APRIL rollout throughput vs synchronous: {s['april_throughput_ratio']:.2f}x; dropped groups: {s['dropped_groups']}")
    say(f"wall time: {s['wall_seconds']:.0f} s")
    say()
    say(f"run directory: {run_dir}   (summary.json, metrics.jsonl, reward.png, length.png, accuracy.png)")
    say(f"report:        {s['report']}")
    say(f"checkpoint:    {s['checkpoint']}")
    say("next:")
    say(f"  reasonrl eval sums: --model {s['checkpoint']} --out {run_dir}/eval --limit 200 --n 4 --temperature 1.0")
    say(f"  reasonrl serve --model {s['checkpoint']}")
