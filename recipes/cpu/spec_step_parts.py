"""Where a batch-1 speculative step's time goes, against plain decoding, on the demo policy and draft
(docs/benchmarks.md, "Where the batch-1 time goes"). One process, one thread, 64 held-out `sums`
prompts one at a time, greedy, up to 96 tokens; the arms alternate (plain, spec, plain, spec) and each
part is timed by wrapping the method that runs it. A measurement probe, not a benchmark: the wrappers
cost a microsecond or two per call.

    OMP_NUM_THREADS=1 python recipes/cpu/spec_step_parts.py [--top-k 1 --depth 6 --tokens 6]
"""

import argparse
import time
from collections import defaultdict

import torch

from reasonrl.bench.spec import DEMO, SpecBenchConfig, _prompts
from reasonrl.engine import LLMEngine, cpu_forward, model_runner
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.scheduler import Scheduler
from reasonrl.engine.spec import speculator
from reasonrl.engine.spec.draft import DraftHead
from reasonrl.kernels import cpu_ops
from reasonrl.models import load_model

PARTS = [(LLMEngine, ["step", "_postprocess", "_collect_features"]),
         (model_runner.ModelRunner, ["prepare", "_verify", "_sample"]), (Scheduler, ["schedule"]),
         (speculator.Speculator, ["_draft", "_catch_up", "_grow"])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(1)
    seconds, calls = defaultdict(float), defaultdict(int)

    def timed(owner, name):
        f = getattr(owner, name)
        label = f"{getattr(owner, '__name__', 'cpu_ops')}.{name}"

        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                seconds[label] += time.perf_counter() - start
                calls[label] += 1
        setattr(owner, name, wrapper)

    for owner, names in PARTS:
        for name in names:
            timed(owner, name)
    for name in ("draft_tree_cpu", "draft_catch_up_cpu"):
        timed(cpu_ops, name)
    forward = cpu_forward.CPUForward.forward

    def forward_by_kind(self, input_ids, positions, meta, model_inputs):  # the target's forward: which rows
        start = time.perf_counter()
        try:
            return forward(self, input_ids, positions, meta, model_inputs)
        finally:
            kind = "tree" if any(m is not None for m in meta.masks or []) else \
                "decode" if input_ids.numel() == meta.num_seqs else "prompt"
            seconds[f"target forward, {kind} rows"] += time.perf_counter() - start
            calls[f"target forward, {kind} rows"] += 1
    cpu_forward.CPUForward.forward = forward_by_kind
    target = load_model(DEMO / "policy", "cpu", None)
    prompts = _prompts(SpecBenchConfig(num_prompts=64), DEMO / "policy", 64)
    opts = dict(max_model_len=max(map(len, prompts)) + 97, max_num_seqs=1, kv_cache_memory=1 << 28)
    greedy = SamplingParams(temperature=0, max_tokens=96, detokenize=False)
    for arm in ("plain", "speculative", "plain", "speculative"):
        engine = LLMEngine(target, None, EngineConfig(**opts)) if arm == "plain" else LLMEngine(
            target, None, EngineConfig(**opts, draft_top_k=args.top_k, draft_depth=args.depth,
                                       draft_tokens=args.tokens, draft_adaptive=False),
            draft=DraftHead.load(DEMO / "draft", target))
        seconds.clear(), calls.clear()
        start, tokens = time.perf_counter(), 0
        for i, prompt in enumerate(prompts):
            engine.add_request(str(i), prompt, greedy)
            while engine.requests:
                tokens += sum(len(o.outputs[0].token_ids) for o in engine.step() if o.finished)
        print(f"{arm}: {(time.perf_counter() - start) * 1e3:.1f} ms, {tokens} tokens")
        for label in sorted(seconds, key=lambda k: -seconds[k]):
            print(f"  {label:34s} {calls[label]:5d} calls {seconds[label] * 1e3:8.1f} ms "
                  f"{seconds[label] / calls[label] * 1e6:8.1f} us each")


if __name__ == "__main__":
    main()
