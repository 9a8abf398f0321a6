"""What `reasonrl bench spec`'s `speculation_time_share` is made of at one level: the draft's proposals
on steps that ran trees and on steps that did not, the adaptive policy's bookkeeping (`step_done`) and
the hand-over of the target's features to the draft, each as a share of the run's wall time
(docs/benchmarks.md, "A target whose weights do not fit the cache"). A level keeps `level` requests in
flight until the prompts run out, so its last steps run with fewer, and the policy may run trees
there: those steps' proposals are a tree's work, not the cost of carrying speculation where it is off.
One process, one thread, greedy, up to 96 tokens; each level runs twice (the second after the first
taught the policy). A measurement probe, not a benchmark.

    OMP_NUM_THREADS=1 python recipes/cpu/spec_share_parts.py [--model M --draft D] [--levels 1 32]
"""

import argparse
from pathlib import Path

import torch

from reasonrl.bench.spec import DEMO, SpecBenchConfig, Timer, _prompts, decode, shipped_draft
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.spec.draft import DraftHead
from reasonrl.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEMO / "policy"))
    ap.add_argument("--draft", help="the target's draft (default: the demo draft, for the demo policy only)")
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 32])
    args = ap.parse_args()
    torch.set_num_threads(1)
    c = SpecBenchConfig(model=args.model, draft=args.draft, num_prompts=args.num_prompts)
    draft = c.draft or shipped_draft(Path(c.model), "policy", "draft")  # the benchmark's own default
    if draft is None:
        ap.error(f"--model {c.model}: give its draft (--draft DIR, from `reasonrl distill-draft`)")
    target = load_model(c.model, "cpu")
    prompts = _prompts(c, Path(c.model), max(args.num_prompts, 4 * max(args.levels)))
    opts = dict(max_model_len=max(map(len, prompts)) + 97, max_num_seqs=max(args.levels), kv_cache_memory=1 << 28)
    spec = LLMEngine(target, None, EngineConfig(**opts), draft=DraftHead.load(draft, target))
    decode(spec, prompts[:2], 8, 2)  # warm-up, as the benchmark's
    for level in args.levels * 2:
        spec.reset_prefix_cache()
        timers = {"proposals with trees": Timer(spec.speculator, "propose", target.device, counts=lambda a, k, out: bool(out)),
                  "proposals without": Timer(spec.speculator, "propose", target.device, counts=lambda a, k, out: not out),
                  "policy (step_done)": Timer(spec.speculator, "step_done", target.device),
                  "features to the draft": Timer(spec, "_collect_features", target.device)}
        run = decode(spec, prompts[: max(args.num_prompts, 4 * level)], 96, level)
        for t in reversed(timers.values()):  # the newest wrapper first
            t.remove()
        parts = "  ".join(f"{name} {t.seconds / run.seconds:.2%} ({t.calls} calls)" for name, t in timers.items())
        print(f"in flight {level:>3}  {run.seconds:6.2f} s  {parts}", flush=True)


if __name__ == "__main__":
    main()
