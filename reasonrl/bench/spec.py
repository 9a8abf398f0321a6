"""`reasonrl bench spec`: plain against speculative decoding, same prompts, same process.

Both engines share one target model; the speculative one has a draft head (by default the draft
shipped with the demo policy, distilled by `reasonrl distill-draft`). Each arm decodes the same
held-out prompts greedily, at batch 1 (one request at a time: the latency case speculative
decoding is for) and with every prompt in flight (continuous batching), interleaved over
`repeats`, medians reported. Outputs of the two arms must be token-identical.

Costs in the terms of SpecVLM's Eq. 2: the draft's time per verification round and the
speculative target step's time per round, each divided by the plain engine's time per token at
batch 1. speedup ~= accepted_length / (draft_cost_ratio + verify_cost_ratio + bookkeeping).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from reasonrl.bench.common import device_name, sync
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.spec.draft import DraftHead
from reasonrl.models.loader import load_model
from reasonrl.models.tokenizer import Tokenizer

DEMO = Path(__file__).resolve().parents[1] / "demo"


def decode(engine: LLMEngine, prompts: list[list[int]], max_tokens: int, batch: int) -> tuple[list[list[int]], float, int]:
    """Greedy outputs, wall seconds and tokens, keeping at most `batch` requests in flight."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, detokenize=False)
    outputs: dict[int, list[int]] = {}
    queue = list(enumerate(prompts))
    in_flight = 0
    sync(engine.model.device)
    start = time.perf_counter()
    while queue or in_flight:
        while queue and in_flight < batch:
            i, p = queue.pop(0)
            engine.add_request(str(i), p, params)
            in_flight += 1
        for out in engine.step():
            if out.finished:
                outputs[int(out.request_id)] = out.outputs[0].token_ids
                in_flight -= 1
    sync(engine.model.device)
    seconds = time.perf_counter() - start
    ordered = [outputs[i] for i in range(len(prompts))]
    return ordered, seconds, sum(map(len, ordered))


class _Timer:
    """Accumulated wall time of one bound method (draft proposals, target steps) on one engine."""

    def __init__(self, obj, name: str, device: torch.device):
        self.seconds = 0.0
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            sync(device)
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            sync(device)
            self.seconds += time.perf_counter() - start
            return out

        setattr(obj, name, timed)

    def reset(self):
        self.seconds = 0.0


@dataclass
class SpecBenchConfig:
    model: str | None = None
    """Target checkpoint (default: the demo policy)."""
    draft: str | None = None
    """Draft checkpoint (default: the demo policy's shipped draft)."""
    distill_steps: int = 0
    """Distill a fresh draft for --model first, for this many steps (0: use --draft)."""
    env: str = "sums:"
    """Environment whose held-out prompts are decoded."""
    num_prompts: int = 32
    """Prompts decoded one at a time (batch 1) and all at once."""
    max_tokens: int = 96
    """Response length cap (greedy)."""
    draft_top_k: int = 8
    """Draft tree: children per expanded node."""
    draft_depth: int = 6
    """Draft tree: deepest draft token."""
    draft_tokens: int = 32
    """Draft tree: draft tokens verified per step."""
    repeats: int = 3
    """Runs per arm, interleaved; medians reported."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Default: float32 on CPU, the checkpoint's on GPU."""
    seed: int = 0
    """Seeds the prompts (and the distillation)."""

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError(f"--repeats must be at least 1, got {self.repeats}")


def bench_spec(c: SpecBenchConfig) -> dict:
    from reasonrl.envs.registry import load_environment

    model_path = Path(c.model) if c.model else DEMO / "policy"
    num_prompts, max_tokens, repeats, draft = c.num_prompts, c.max_tokens, c.repeats, c.draft
    env_ = load_environment(c.env if ":" in c.env else c.env + ":")
    if c.distill_steps:
        from reasonrl.engine.spec.distill import DistillConfig, DistillJob, run_distill

        job = DistillJob(str(model_path), str(Path(tempfile.mkdtemp()) / "draft"), env=c.env, device=c.device, dtype=c.dtype)
        draft = str(run_distill(job, DistillConfig(steps=c.distill_steps, seed=c.seed)))
    draft_path = Path(draft) if draft else DEMO / "draft"
    target = load_model(model_path, c.device, c.dtype)
    tok = Tokenizer.from_dir(model_path)
    prompts = [tok.apply_chat_template(p.messages, add_generation_prompt=True)
               for p in env_.prompts(n=num_prompts, seed=c.seed + 1, split="eval")]
    opts = dict(max_model_len=max(map(len, prompts)) + max_tokens + 1, max_num_seqs=max(num_prompts, 1),
                kv_cache_memory=1 << 28)  # fixed: on CUDA the first engine would otherwise take the free memory
    plain = LLMEngine(target, None, EngineConfig(**opts))
    spec = LLMEngine(target, None, EngineConfig(**opts, draft_top_k=c.draft_top_k, draft_depth=c.draft_depth,
                                                draft_tokens=c.draft_tokens), draft=DraftHead.load(draft_path, target))
    draft_timer = _Timer(spec.speculator, "propose", target.device)
    verify_timer = _Timer(spec.runner, "run", target.device)
    arms = {"plain": plain, "speculative": spec}
    for engine in arms.values():  # warm-up
        decode(engine, prompts[:2], 8, 2)
    rates: dict[tuple[str, int], list[float]] = {}
    outputs: dict[str, list[list[int]]] = {}
    batch1_rounds = batch1_emitted = 0
    for r in range(repeats):
        for batch in (1, num_prompts):
            for name, engine in arms.items():
                if name == "speculative" and batch == 1:
                    draft_timer.reset(), verify_timer.reset()
                    before = spec.stats()
                engine.reset_prefix_cache()
                outs, seconds, tokens = decode(engine, prompts, max_tokens, batch)
                rates.setdefault((name, batch), []).append(tokens / seconds)
                outputs.setdefault(f"{name}@{batch}", outs)
                if name == "speculative" and batch == 1:
                    after = spec.stats()
                    rounds = after["spec_rounds"] - before["spec_rounds"]
                    batch1_rounds += rounds
                    batch1_emitted += after["spec_emitted_tokens"] - before["spec_emitted_tokens"]
                    spec_costs = (draft_timer.seconds, verify_timer.seconds, rounds)
                print(f"  repeat {r + 1}/{repeats}  batch {batch:>3}  {name:<11} {tokens / seconds:8.1f} tok/s",
                      file=sys.stderr, flush=True)
    med = {key: statistics.median(v) for key, v in rates.items()}
    per_token_plain = 1 / med[("plain", 1)]
    draft_s, verify_s, rounds = spec_costs
    reference = outputs["plain@1"]
    result = {
        "device": device_name(target.device), "dtype": str(target.dtype).removeprefix("torch."),
        "model": str(model_path), "draft": str(draft_path), "prompts": num_prompts, "max_tokens": max_tokens,
        "tree": {"top_k": c.draft_top_k, "depth": c.draft_depth, "tokens": c.draft_tokens}, "repeats": repeats,
        "accepted_length": batch1_emitted / max(batch1_rounds, 1),
        "speedup": med[("speculative", 1)] / med[("plain", 1)],
        "greedy_identical": all(outs == reference for outs in outputs.values()),
        "batch1": _arm(rates, 1), f"batch{num_prompts}": _arm(rates, num_prompts),
        "draft_cost_ratio": draft_s / max(rounds, 1) / per_token_plain,
        "verify_cost_ratio": verify_s / max(rounds, 1) / per_token_plain,
    }
    _print(result, num_prompts)
    return result


def _arm(rates, batch: int) -> dict:
    plain, spec = rates[("plain", batch)], rates[("speculative", batch)]
    return {"plain_tokens_per_s": statistics.median(plain), "speculative_tokens_per_s": statistics.median(spec),
            "speedup": statistics.median(spec) / statistics.median(plain),
            "pairwise_speedups": [s / p for s, p in zip(spec, plain)]}


def _print(r: dict, num_prompts: int) -> None:
    print(f"device: {r['device']}  model: {r['model']}  draft: {r['draft']}")
    for key in ("batch1", f"batch{num_prompts}"):
        a = r[key]
        print(f"{key:>9}: plain {a['plain_tokens_per_s']:8.1f} tok/s   speculative {a['speculative_tokens_per_s']:8.1f} tok/s"
              f"   speedup {a['speedup']:.2f}x")
    print(f"accepted length {r['accepted_length']:.2f}  draft cost {r['draft_cost_ratio']:.2f}  "
          f"verify cost {r['verify_cost_ratio']:.2f} (per round, in plain batch-1 tokens)  "
          f"greedy identical: {r['greedy_identical']}")
