"""`reasonrl bench spec`: plain against speculative decoding, same prompts, same process.

Both engines share one target model; the speculative one has a draft head (by default the draft
shipped with the demo policy, distilled by `reasonrl distill-draft`). Each arm decodes the same
held-out prompts greedily at each level of `concurrency` (requests kept in flight: 1 is the
latency case speculative decoding is for, the larger ones continuous batching under load),
interleaved over `repeats` (order reversed every other one), speedups the median of the
ratios within a repeat. Outputs of the two arms must be token-identical.
The speculative engine chooses its tree size per step (engine/spec/adaptive.py) unless
`--no-adaptive`; one engine serves every level and repeat, so what it learns carries over, as it
would in a server.

Costs in the terms of SpecVLM's Eq. 2, over the batch-1 steps that ran a tree (one round each):
the draft's time proposing it and the target step's time verifying it, each divided by the plain
engine's time per token at batch 1 (these and the accepted length are taken at the lowest level
asked for, `figures_at_concurrency`, when 1 is not among them). speedup ~= kept_per_round / (draft_cost_ratio + verify_cost_ratio + bookkeeping):
`accepted_length` (EAGLE's tau) counts every token a verification accepted, `kept_per_round` only those that
reached the output (a round that runs past a stop or max_tokens keeps fewer; with short answers, 15% fewer).
These costs and each level's `speculation_time_share` come from one more run of the speculative
arm per level with timers on (`timed_run`), after the repeats; the speedups never include it.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch

from reasonrl.bench.common import device_name, sync
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.spec.draft import DraftHead
from reasonrl.models.loader import load_model
from reasonrl.models.tokenizer import Tokenizer

DEMO = Path(__file__).resolve().parents[1] / "demo"


class Decoded(NamedTuple):
    outputs: list[list[int]]
    seconds: float  # wall clock
    cpu_seconds: float  # this process's CPU time: on a CPU, the work done, less sensitive to a shared host
    tokens: int


def decode(engine: LLMEngine, prompts: list[list[int]], max_tokens: int, batch: int) -> Decoded:
    """Greedy outputs, wall and CPU seconds, and tokens, keeping at most `batch` requests in flight."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, detokenize=False)
    outputs: dict[int, list[int]] = {}
    queue = list(enumerate(prompts))
    in_flight = 0
    sync(engine.model.device)
    start, cpu = time.perf_counter(), time.process_time()
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
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    ordered = [outputs[i] for i in range(len(prompts))]
    return Decoded(ordered, seconds, cpu, sum(map(len, ordered)))


class Timer:
    """Accumulated time of one bound method (draft proposals, target steps) on one engine, over
    the calls `counts(args, kwargs, output)` accepts (default: every call). On CUDA each call is
    bracketed by two events on the stream, read once at the end: no synchronisation, so the timed
    arm keeps the overlap of host and device that the untimed arm has (a host sync around every
    call would slow the speculative arm alone)."""

    def __init__(self, obj, name: str, device: torch.device, counts=None):
        self.device, self.calls, self._seconds, self._events = device, 0, 0.0, []
        self._obj, self._name, self._own = obj, name, name in vars(obj)  # _own: an instance attribute (another timer)
        inner = self._inner = getattr(obj, name)
        cuda = device.type == "cuda"

        def timed(*args, **kwargs):
            if cuda:
                begin = torch.cuda.Event(enable_timing=True)
                begin.record(torch.cuda.current_stream(device))
            else:
                start = time.perf_counter()
            out = inner(*args, **kwargs)
            if counts is None or counts(args, kwargs, out):
                self.calls += 1
                if cuda:
                    end = torch.cuda.Event(enable_timing=True)
                    end.record(torch.cuda.current_stream(device))
                    self._events.append((begin, end))
                else:
                    self._seconds += time.perf_counter() - start
            return out

        setattr(obj, name, timed)

    @property
    def seconds(self) -> float:
        if self._events:
            sync(self.device)
            self._seconds += sum(b.elapsed_time(e) for b, e in self._events) / 1e3
            self._events.clear()
        return self._seconds

    def remove(self) -> None:
        """Put the method back (several timers on one method come off newest first)."""
        if self._own:
            setattr(self._obj, self._name, self._inner)
        else:
            delattr(self._obj, self._name)


@dataclass
class SpecBenchConfig:
    model: str | None = None
    """Target checkpoint (default: the demo policy)."""
    draft: str | None = None
    """Draft checkpoint (default: the demo policy's shipped draft, for the demo policy; with --vlm the
    EagleVLM draft, the demo VLM's for the demo VLM)."""
    distill_steps: int = 0
    """Distill a fresh draft for --model first, for this many steps (0: use --draft); with --vlm an
    EagleVLM and a SpecVLM draft (the compressor in `select` mode), on --env's image prompts."""
    env: str = "sums:"
    """Environment whose held-out prompts are decoded."""
    num_prompts: int = 32
    """Prompts decoded at each concurrency level (at least 4x the level, so most steps run at it)."""
    concurrency: tuple[int, ...] = (1, 8, 32, 64)
    """Requests kept in flight, one measurement each."""
    adaptive: bool = True
    """Let the speculative engine choose each step's tree size (off: the full tree every step)."""
    draft_max_batch: int | None = None
    """The speculative engine never drafts with more sequences decoding than this (0: never at all,
    which measures what a loaded draft costs when speculation is off); None: the policy decides."""
    draft_compile: bool = False
    """Compile the draft's tree step (EngineConfig.draft_compile); its seconds are reported."""
    cpu_draft_kernel: bool = True
    """The speculative engine's cpu_draft_kernel (CPU, fp32: tree growth and catch-ups in C++);
    off measures the draft as PyTorch runs it."""
    cpu_forward_kernel: bool = True
    """Both engines' cpu_forward_kernel (CPU, fp32: decode and verification steps' forward in C++)."""
    vlm: bool = False
    """Benchmark a vision-language model on shapes-world image prompts instead (bench/spec_vlm.py):
    --model (default: the demo VLM), --draft the EagleVLM draft, --compressed-draft the SpecVLM one."""
    compressed_draft: str | None = None
    """--vlm: a draft with the elastic visual compressor (default: the demo VLM's, if shipped, for the
    demo VLM; another target's SpecVLM arm runs only with this given)."""
    max_tokens: int = 96
    """Response length cap (greedy)."""
    draft_top_k: int = 8
    """Draft tree: children per expanded node."""
    draft_depth: int = 6
    """Draft tree: deepest draft token."""
    draft_tokens: int = 32
    """Draft tree: draft tokens verified per step."""
    repeats: int = 3
    """Runs per arm, interleaved (order reversed every other repeat); speedups: median of the per-repeat ratios."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Default: float32 on CPU, the checkpoint's on GPU."""
    seed: int = 0
    """Seeds the prompts (and the distillation)."""

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError(f"--repeats must be at least 1, got {self.repeats}")
        if self.draft_max_batch is not None and self.draft_max_batch < 0:
            raise ValueError(f"--draft-max-batch must be at least 0, got {self.draft_max_batch}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"--concurrency needs levels of at least 1, got {self.concurrency}")
        if self.model is not None and not self.model.strip():  # "" would silently mean the demo model
            raise ValueError("--model is empty: give a checkpoint directory, or leave the flag out for the demo model")
        if self.distill_steps < 0:
            raise ValueError(f"--distill-steps must be at least 0, got {self.distill_steps}")
        for flag, value in (("--draft", self.draft), ("--compressed-draft", self.compressed_draft)):
            if value is not None and not value.strip():  # "" is the current directory to a Path
                raise ValueError(f"{flag} is empty: give a draft directory, or leave the flag out")
            if value is not None and self.distill_steps:
                raise ValueError(f"{flag} and --distill-steps both choose a draft: give one of them")


def bench_spec(c: SpecBenchConfig) -> dict:
    if c.vlm:
        from reasonrl.bench.spec_vlm import bench_spec_vlm

        return bench_spec_vlm(c)
    model_path = Path(c.model) if c.model else DEMO / "policy"
    draft_path = _draft_path(c, model_path)
    target = load_model(model_path, c.device, c.dtype)
    levels = sorted(set(c.concurrency))
    prompts = _prompts(c, model_path, max(c.num_prompts, 4 * levels[-1]))
    opts = dict(max_model_len=max(map(len, prompts)) + c.max_tokens + 1, max_num_seqs=levels[-1],
                kv_cache_memory=1 << 28,  # fixed: on CUDA the first engine would otherwise take the free memory
                cpu_forward_kernel=c.cpu_forward_kernel)
    plain = LLMEngine(target, None, EngineConfig(**opts))
    spec = LLMEngine(target, None, EngineConfig(**opts, draft_top_k=c.draft_top_k, draft_depth=c.draft_depth,
                                                draft_tokens=c.draft_tokens, draft_adaptive=c.adaptive,
                                                draft_max_batch=c.draft_max_batch, draft_compile=c.draft_compile,
                                                cpu_draft_kernel=c.cpu_draft_kernel),
                     draft=DraftHead.load(draft_path, target))
    arms = {"plain": plain, "speculative": spec}
    for engine in arms.values():  # warm-up
        decode(engine, prompts[:2], 8, 2)
    rates: dict[tuple[str, int], list[float]] = {}
    cpu_rates: dict[tuple[str, int], list[float]] = {}
    outputs: dict[str, list[list[list[int]]]] = {}  # "arm@level" -> every repeat's outputs
    batch1 = {"rounds": 0, "emitted": 0, "kept": 0}
    for r in range(c.repeats):
        for level in levels:
            work = prompts[: max(c.num_prompts, 4 * level)]
            for name, engine in arm_order(arms, r):
                before = spec.stats() if name == "speculative" and level == levels[0] else None
                engine.reset_prefix_cache()
                run = decode(engine, work, c.max_tokens, level)
                rates.setdefault((name, level), []).append(run.tokens / run.seconds)
                cpu_rates.setdefault((name, level), []).append(run.tokens / run.cpu_seconds)
                outputs.setdefault(f"{name}@{level}", []).append(run.outputs)
                if before is not None:
                    count_rounds(batch1, before, spec.stats())
                print(f"  repeat {r + 1}/{c.repeats}  in flight {level:>3}  {name:<11} "
                      f"{run.tokens / run.seconds:8.1f} tok/s", file=sys.stderr, flush=True)
    shares = {}
    for level in levels:
        run, overhead, timers = timed_run(spec, prompts[: max(c.num_prompts, 4 * level)], c.max_tokens, level)
        shares[level] = sum(overhead) / run.seconds
        outputs[f"timed@{level}"] = [run.outputs]
        if level == levels[0]:  # the acceptance and cost figures: at batch 1, or the fewest requests asked for
            costs = round_costs(timers, statistics.median(rates[("plain", level)]))
    on_cpu = target.device.type == "cpu"
    rounds = max(batch1["rounds"], 1)
    result = {
        "device": device_name(target.device), "dtype": str(target.dtype).removeprefix("torch."),
        "model": str(model_path), "draft": str(draft_path), "prompts": c.num_prompts, "max_tokens": c.max_tokens,
        "tree": {"top_k": c.draft_top_k, "depth": c.draft_depth, "tokens": c.draft_tokens}, "adaptive": c.adaptive,
        "repeats": c.repeats, "concurrency": levels,
        "accepted_length": batch1["emitted"] / rounds, "kept_per_round": batch1["kept"] / rounds,
        "figures_at_concurrency": levels[0],
        "speedup": paired_ratio(rates[("speculative", levels[0])], rates[("plain", levels[0])]),
        "greedy_identical": greedy_identical(outputs, levels),
        **{f"batch{level}": {**_arm(rates, level, cpu_rates if on_cpu else None),
                             "speculation_time_share": shares[level]} for level in levels},
        "tree_steps_at_batch1": costs["tree_steps"],
        "draft_compile_seconds": spec.stats()["spec_draft_compile_seconds"],
        "draft_kernel": spec.stats()["spec_draft_kernel"],
        "forward_kernel": "cpu_forward_steps" in spec.stats(),
        "draft_cost_ratio": costs["draft_cost_ratio"], "verify_cost_ratio": costs["verify_cost_ratio"],
        "tree_tokens_by_batch": tree_tokens_by_batch(spec),
    }
    _print(result, levels)
    return result


def _draft_path(c: SpecBenchConfig, model_path: Path) -> Path:
    if c.distill_steps:
        return distill(c, model_path, c.env)
    if c.draft is not None:
        return Path(c.draft)
    shipped = shipped_draft(model_path, "policy", "draft")
    if shipped is None:
        raise ValueError(f"--model {model_path}: give its draft (--draft DIR, from `reasonrl distill-draft`) or "
                         "--distill-steps N to distill one first")
    return shipped


def distill(c: SpecBenchConfig, model_path: Path, env: str, compressor: str = "none") -> Path:
    """A fresh draft for the target, `c.distill_steps` steps of `reasonrl distill-draft` on `env`'s
    prompts, in a new temporary directory (left in place; its path is the result's `draft`). The
    training prompts are the ones the steps use (image prompts hold their pixels: 2048 of them,
    the command's default, would be gigabytes for a short run)."""
    from reasonrl.engine.spec.distill import DistillConfig, DistillJob, run_distill

    cfg = DistillConfig(steps=c.distill_steps, seed=c.seed)
    job = DistillJob(str(model_path), str(Path(tempfile.mkdtemp()) / "draft"), env=env, device=c.device, dtype=c.dtype,
                     compressor=compressor, num_prompts=min(DistillJob.num_prompts, cfg.steps * cfg.prompts_per_step))
    return run_distill(job, cfg)


def shipped_draft(model_path: Path, demo_model: str, draft: str) -> Path | None:
    """The demo's shipped draft `draft` where `model_path` is the demo model `demo_model` (both under
    reasonrl/demo) and the draft is shipped; None for any other target: a draft fits the weights and
    width it was distilled for."""
    path = DEMO / draft
    return path if Path(model_path).resolve() == (DEMO / demo_model).resolve() and path.is_dir() else None


def _prompts(c: SpecBenchConfig, model_path: Path, n: int) -> list[list[int]]:
    from reasonrl.envs.registry import load_environment

    env = load_environment(c.env if ":" in c.env else c.env + ":")
    tok = Tokenizer.from_dir(model_path)
    return [tok.apply_chat_template(p.messages, add_generation_prompt=True)
            for p in env.prompts(n=n, seed=c.seed + 1, split="eval")]


def timed_run(engine: LLMEngine, prompts: list, max_tokens: int, level: int,
              name: str = "speculative") -> tuple[Decoded, list[float], list[tuple[float, int]]]:
    """One more run of a speculative engine at `level`, with timers on: the run, the seconds of each
    `speculation_timers` timer, and (seconds, calls) of each `tree_step_timers` one. Apart from the
    timed repeats: the timers' own Python (five wrapped calls a step) cost the speculative arm alone
    about 5% of a batch-1 step of the demo policy when they ran on every repeat. One run, so its
    shares move more from run to run than a median over repeats would."""
    overhead: tuple[Timer, ...] = ()
    trees: tuple[Timer, ...] = ()
    engine.reset_prefix_cache()
    try:
        overhead = speculation_timers(engine)
        trees = tree_step_timers(engine)
        run = decode(engine, prompts, max_tokens, level)
    finally:
        for t in reversed((*overhead, *trees)):  # the newest wrapper first
            t.remove()
    print(f"  timed run   in flight {level:>3}  {name:<11} {run.tokens / run.seconds:8.1f} tok/s (timers on: "
          f"not in the speedup)", file=sys.stderr, flush=True)
    return run, [t.seconds for t in overhead], [(t.seconds, t.calls) for t in trees]


def tree_tokens_by_batch(engine: LLMEngine) -> dict[str, int]:
    """The tree size the adaptive policy settled on per batch-size bucket (0: no tree)."""
    prefix = "spec_tree_tokens_at_batch_"
    return {k.removeprefix(prefix): v for k, v in engine.stats().items() if k.startswith(prefix)}


def count_rounds(into: dict, before: dict, after: dict) -> None:
    """Add the verification rounds, the tokens they accepted and those kept in outputs between two
    `stats()` of a speculative engine to `into` (keys rounds, emitted, kept)."""
    for key, stat in (("rounds", "spec_rounds"), ("emitted", "spec_emitted_tokens"), ("kept", "spec_kept_tokens")):
        into[key] += after[stat] - before[stat]


def round_costs(trees: list[tuple[float, int]], plain_tokens_per_s: float) -> dict:
    """SpecVLM's Eq. 2 terms from `timed_run`'s `tree_step_timers`: the draft's and the target step's
    seconds per step that ran a tree (one verification round), in plain decoding's seconds per token."""
    (draft_s, _), (verify_s, steps) = trees
    per_step = plain_tokens_per_s / max(steps, 1)
    return {"tree_steps": steps, "draft_cost_ratio": draft_s * per_step, "verify_cost_ratio": verify_s * per_step}


def prefill_timer(engine: LLMEngine) -> Timer:
    """The target's steps that carry prompt tokens, or several tokens of one sequence (a re-prefill
    after preemption), but no verification (a tree's rows count as one scheduled token): a
    vision-language model's tower runs in them. At one request in flight, the prefill's time.
    (`counts` reads `num_computed` before the step's results advance it.)"""
    return Timer(engine.runner, "run", engine.model.device,
                 counts=lambda args, kwargs, out: any(n > 1 or seq.num_computed < len(seq.prompt_ids) for seq, n in args[0]))


def tree_step_timers(engine: LLMEngine) -> tuple[Timer, Timer]:
    """The draft's proposals and the target's steps, counted only for steps that ran trees: with
    the adaptive policy most steps may run none, and their time is not a tree's cost."""
    device = engine.model.device
    return (Timer(engine.speculator, "propose", device, counts=lambda args, kwargs, trees: bool(trees)),
            Timer(engine.runner, "run", device, counts=lambda args, kwargs, out: bool(out.verdicts)))


def speculation_timers(engine: LLMEngine) -> tuple[Timer, ...]:
    """Timers on all a speculative engine adds to a step besides verification's extra rows:
    drafting (`propose`), the adaptive policy (`step_done`) and the hand-over of the target's
    features to the draft. Their sum over a run's seconds is `speculation_time_share`."""
    device = engine.model.device
    return (Timer(engine.speculator, "propose", device), Timer(engine.speculator, "step_done", device),
            Timer(engine, "_collect_features", device))


def greedy_identical(outputs: dict[str, list[list[list[int]]]], levels: list[int]) -> bool:
    """Every repeat of every arm at a level gives plain decoding's first repeat's tokens there, and
    plain decoding gives the same tokens at every level on the prompts the levels share (a level
    decodes at least 4 prompts per request in flight, so the sets differ)."""
    plain = {level: outputs[f"plain@{level}"][0] for level in levels}
    same_arms = all(run == plain[int(key.split("@")[1])] for key, runs in outputs.items() for run in runs)
    first = plain[levels[0]]
    return same_arms and all(plain[level][:len(first)] == first[:len(plain[level])] for level in levels)


def arm_order(arms: dict, repeat: int) -> list:
    """The arms in their order on even repeats, reversed on odd ones: a drift of the machine
    within a repeat does not always favour the same arm."""
    items = list(arms.items())
    return items[::-1] if repeat % 2 else items


def paired_ratio(a: list[float], b: list[float]) -> float:
    """The median over repeats of a's rate over b's in the same repeat. The arms of one repeat
    run back to back; the machine drifts more between repeats (10-30% here) than within one, so
    this is steadier than a ratio of medians."""
    return statistics.median(x / y for x, y in zip(a, b))


def _arm(rates, batch: int, cpu_rates=None) -> dict:
    """Medians of each arm's tokens per second, their ratio, and the ratio per repeat; on a CPU also
    the ratio of tokens per CPU-second (the work each arm did, which a busy host disturbs less)."""
    plain, spec = rates[("plain", batch)], rates[("speculative", batch)]
    out = {"plain_tokens_per_s": statistics.median(plain), "speculative_tokens_per_s": statistics.median(spec),
           "speedup": paired_ratio(spec, plain), "pairwise_speedups": [s / p for s, p in zip(spec, plain)]}
    if cpu_rates is not None:
        out["cpu_speedup"] = paired_ratio(cpu_rates[("speculative", batch)], cpu_rates[("plain", batch)])
    return out


def _print(r: dict, levels: list[int]) -> None:
    print(f"device: {r['device']}  model: {r['model']}  draft: {r['draft']}  adaptive: {r['adaptive']}")
    for level in levels:
        a = r[f"batch{level}"]
        cpu = f"   in CPU time {a['cpu_speedup']:.2f}x" if "cpu_speedup" in a else ""
        print(f"{level:>3} in flight: plain {a['plain_tokens_per_s']:8.1f} tok/s   speculative "
              f"{a['speculative_tokens_per_s']:8.1f} tok/s   speedup {a['speedup']:.2f}x{cpu}   "
              f"drafting and policy {a['speculation_time_share']:.1%} of the time")
    print(f"accepted length {r['accepted_length']:.2f} (kept {r['kept_per_round']:.2f})  draft cost {r['draft_cost_ratio']:.2f}  "
          f"verify cost {r['verify_cost_ratio']:.2f} (per round, in plain batch-1 tokens)  "
          f"greedy identical: {r['greedy_identical']}  tree tokens by batch: {r['tree_tokens_by_batch']}")
