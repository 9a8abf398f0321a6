"""`reasonrl bench gpu`: every GPU figure the docs leave open, in one run of at most ~10 minutes.

No GPU has been lent for long so far, so this script is ready to run in the few minutes one is:
it reuses the existing workloads (engine, kv-decode, spec, april) with shapes that fit the time,
runs each part in its own try/except under the remaining global budget (a part that fails or runs
out of time records its error and its seconds; the others still run), writes one JSON and prints
the markdown table to paste into docs/benchmarks.md.

Parts:
- engine: the engine (CUDA graphs on, and an eager arm in the same run) against transformers'
  `generate` on a Qwen2.5-0.5B-shaped random model in bf16, and batch-1 decode as a fraction of the
  HBM roofline (weight bytes / measured copy bandwidth); target >= 0.6.
- kv-decode: the Triton paged-attention (dense) and compressed-KV decode kernels at 32k context;
  target: each format within 1.1x of dense.
- spec: speculative against plain decoding at batch 1 on the demo policy and its draft.
- april: APRIL's rollout throughput over synchronous rollout; target >= 1.4x.
- kernels: every Triton kernel task's expert judged by the kernel evaluator in its GPU sandbox and
  timed against the PyTorch reference (`bench kernels`' GPU half): the sandbox's GPU mode checked
  end to end, and the experts' speedups; target: every expert passes.
- compiled (only when asked for: it compiles for minutes): the engine with `compile_decode` and
  CUDA graphs against the eager engine, smaller workload, no transformers arm.

`--smoke` runs tiny shapes on any device (CPU too): it checks the plumbing, not the figures.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable

SMOKE_NOTE = "smoke run (tiny shapes): these figures check the plumbing only"


@dataclass
class GpuBenchConfig:
    budget_s: float = 560.0
    """Global time budget in seconds; a part still running when it is spent is stopped and reports a timeout."""
    smoke: bool = False
    """Tiny shapes on any device (CPU too): checks that every part runs, not the figures."""
    parts: list[str] | None = None
    """Parts to run, in order (default: engine kv-decode spec april kernels; "compiled" adds the engine with
    compile_decode and CUDA graphs against eager, which compiles for minutes)."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""

    def __post_init__(self):
        if self.budget_s <= 0:
            raise ValueError(f"bench gpu: budget_s must be positive, got {self.budget_s}")
        unknown = [p for p in self.parts or () if p not in PARTS]
        if unknown:
            raise ValueError(f"bench gpu: unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")


class PartTimeout(BaseException):
    """The global budget ran out while a part was running. A BaseException, as KeyboardInterrupt is:
    the engine turns an Exception raised in a step into a failed request and carries on."""


def _engine(c: GpuBenchConfig) -> dict:
    from reasonrl.bench.engine import EngineBenchConfig, bench_engine

    if c.smoke:
        cfg = EngineBenchConfig(preset="tiny", num_prompts=4, concurrency=2, median_tokens=4, max_tokens=8,
                                prompt_len=(4, 8), repeats=1, device=c.device, eager_arm=True)
    else:
        cfg = EngineBenchConfig(preset="qwen2.5-0.5b", dtype="bfloat16", num_prompts=64, concurrency=32,
                                median_tokens=48, max_tokens=256, repeats=2, device=c.device, eager_arm=True)
    return bench_engine(cfg)


def _kv_decode(c: GpuBenchConfig) -> list[dict]:
    from reasonrl.bench.kv_decode import DecodeBenchConfig, bench_kv_decode

    if c.smoke:
        return bench_kv_decode(DecodeBenchConfig(context=64, batch=2, num_heads=4, num_kv_heads=2, head_dim=16,
                                                 chunk=32, iters=2, warmup=1, device=c.device))
    return bench_kv_decode(DecodeBenchConfig(context=32768, batch=8, iters=20, device=c.device))


def _spec(c: GpuBenchConfig) -> dict:
    from reasonrl.bench.spec import SpecBenchConfig, bench_spec

    if c.smoke:
        return bench_spec(SpecBenchConfig(num_prompts=2, max_tokens=8, repeats=1, draft_depth=2, device=c.device,
                                          concurrency=(1,)))
    return bench_spec(SpecBenchConfig(num_prompts=16, max_tokens=96, repeats=2, device=c.device, concurrency=(1, 32)))


def _april(c: GpuBenchConfig) -> dict:
    from reasonrl.bench.april import AprilBenchConfig, bench_april

    if c.smoke:
        return bench_april(AprilBenchConfig(steps=1, prompts_per_step=2, samples_per_prompt=2, max_tokens=12,
                                            max_num_seqs=8, sft_steps=2, repeats=1, device=c.device))
    return bench_april(AprilBenchConfig(steps=8, repeats=1, device=c.device))


def _compiled(c: GpuBenchConfig) -> dict:
    from reasonrl.bench.engine import EngineBenchConfig, bench_engine

    if c.smoke:
        cfg = EngineBenchConfig(preset="tiny", num_prompts=4, concurrency=2, median_tokens=4, max_tokens=8,
                                prompt_len=(4, 8), repeats=1, device=c.device, eager_arm=True, skip_hf=True,
                                compile_decode=True)
    else:
        # concurrency 4: three buckets (1, 2, 4) to compile, each a whole 24-layer forward
        cfg = EngineBenchConfig(preset="qwen2.5-0.5b", dtype="bfloat16", num_prompts=16, concurrency=4,
                                median_tokens=48, max_tokens=128, repeats=1, device=c.device, eager_arm=True,
                                skip_hf=True, compile_decode=True)
    return bench_engine(cfg)


def _kernels(c: GpuBenchConfig) -> dict:
    from reasonrl.agents.geak.agent import resolve_tasks
    from reasonrl.bench.kernels import expert_speedups
    from reasonrl.models.loader import resolve_device

    device = "cuda" if resolve_device(c.device).type == "cuda" else "cpu"  # the evaluator picks its own GPU
    # one task at a time while more than 30 s of the part's alarm (run_part: the budget left) remain;
    # a task still running when the alarm fires is dropped, those judged before are kept
    stop = lambda: 0 < signal.getitimer(signal.ITIMER_REAL)[0] < 30  # noqa: E731
    return expert_speedups(resolve_tasks("vector_add,softmax" if c.smoke else "kernels:"), 120.0, device, stop,
                           interrupt=(PartTimeout,))


PARTS: dict[str, Callable[[GpuBenchConfig], object]] = {
    "engine": _engine, "kv-decode": _kv_decode, "spec": _spec, "april": _april, "kernels": _kernels,
    "compiled": _compiled}
DEFAULT_PARTS = ["engine", "kv-decode", "spec", "april", "kernels"]


def bench_gpu(c: GpuBenchConfig) -> dict:
    """{"device", "smoke", "budget_s", "seconds", "parts": {name: {"status": ok | error | timeout |
    skipped, "seconds", "result" or "error"}}}."""
    from reasonrl.bench.common import device_name
    from reasonrl.models.loader import resolve_device

    start = time.monotonic()
    parts = {}
    for name in c.parts or DEFAULT_PARTS:
        left = c.budget_s - (time.monotonic() - start)
        parts[name] = run_part(PARTS[name], c, left) if left > 1 else {"status": "skipped", "seconds": 0.0,
                                                                        "error": "the global time budget was spent"}
        _log(f"{name}: {parts[name]['status']} in {parts[name]['seconds']:.0f}s")
    try:
        device = device_name(resolve_device(c.device))
    except Exception as exc:  # every part's result is kept whatever the device says
        device = f"{c.device} (unavailable: {exc})"
    return {"device": device, "smoke": c.smoke, "budget_s": c.budget_s, "seconds": time.monotonic() - start,
            "parts": parts}


def run_part(fn: Callable[[GpuBenchConfig], object], c: GpuBenchConfig, seconds: float) -> dict:
    """Runs one part under an alarm of `seconds` (main thread only: elsewhere the budget is only
    checked between parts); never raises."""
    start = time.monotonic()
    alarm = threading.current_thread() is threading.main_thread()
    if alarm:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        out = {"status": "ok", "result": fn(c)}
    except PartTimeout:
        out = {"status": "timeout", "error": f"stopped after {seconds:.0f}s: the global time budget ran out"}
    except Exception as e:  # a part's failure is its own result; the other parts still run
        out = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    out["seconds"] = time.monotonic() - start
    _free_memory()
    return out


def _free_memory() -> None:
    """What a part left behind (engines, CUDA graph pools: cycles) goes before the next part runs."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _on_alarm(signum, frame):
    raise PartTimeout()


def _log(msg: str) -> None:
    print(f"[bench gpu] {msg}", file=sys.stderr, flush=True)


def format_table(r: dict) -> str:
    """The markdown table for docs/benchmarks.md: one row per figure, with its target."""
    lines = [f"Device: {r['device']}; `reasonrl bench gpu` in {r['seconds']:.0f} s"
             + (f" ({SMOKE_NOTE})" if r["smoke"] else "") + ".", "",
             "| part | figure | value | target |", "|---|---|---|---|"]
    for name, part in r["parts"].items():
        if part["status"] != "ok":
            lines.append(f"| {name} | {part['status']} | {part.get('error', '')[:120]} | |")
            continue
        lines += [f"| {name} | {fig} | {val} | {target} |" for fig, val, target in ROWS[name](part["result"])]
    return "\n".join(lines)


def _engine_rows(e: dict) -> list[tuple[str, str, str]]:
    rows = [("engine tokens/s" + (f" ({e['decode_mode']})" if "decode_mode" in e else ""), f"{e['engine_tokens_per_s']:.0f}", ""),
            ("batch-1 decode, fraction of the memory roofline", f"{e['fraction_of_roofline']:.2f} "
             f"({e['batch1_tokens_per_s']:.0f} of {e['roofline_tokens_per_s']:.0f} tok/s)", ">= 0.6"),
            ("FLOP fraction of matmul peak", f"{e['flops_fraction_of_peak']:.3f}", ""),
            *([("batch-1 step; its forward alone (fraction of roofline)", f"{e['batch1_step_ms']:.2f} ms; "
                f"{e['batch1_forward_ms']:.2f} ms ({e['forward_fraction_of_roofline']:.2f})", "")]
              if "batch1_forward_ms" in e else []),
            ("decode mode; compile seconds", f"{e.get('decode_mode', 'eager')}; {e.get('decode_compile_seconds', 0):.0f}", "")]
    if "ratio" in e:
        rows.insert(1, ("engine / transformers generate", f"{e['ratio']:.2f}x ({e['hf_tokens_per_s']:.0f} tok/s)", ""))
    if "eager" in e:
        a = e["eager"]
        rows.append(("eager engine tokens/s; batch-1 fraction of roofline",
                     f"{a['engine_tokens_per_s']:.0f}; {a['fraction_of_roofline']:.2f}", ""))
        rows.append(("engine speedup over eager (same run)", f"{e['speedup_over_eager']:.2f}x", ""))
    return rows


def _kv_rows(rows: list[dict]) -> list[tuple[str, str, str]]:
    out = []
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        out.append((f"{r['format']} {params}".strip() + f" decode at {r['context']} ctx, batch {r['batch']}",
                    f"{r['latency_ms']:.3f} ms ({r['ratio_to_dense']:.2f}x dense)",
                    "" if r is rows[0] else "<= 1.1x dense"))
    return out


def _spec_rows(s: dict) -> list[tuple[str, str, str]]:
    return [("speculative speedup at batch 1", f"{s['batch1']['speedup']:.2f}x (accepted length "
             f"{s['accepted_length']:.2f})", ">= 1.5x (the CPU target)"),
            ("greedy outputs identical", str(s["greedy_identical"]), "True")] + \
        [(f"speculative speedup, {n} in flight (adaptive)", f"{s[f'batch{n}']['speedup']:.2f}x", ">= 1.0x")
         for n in s.get("concurrency", [])[1:]]


def _april_rows(a: dict) -> list[tuple[str, str, str]]:
    return [("APRIL / synchronous rollout throughput", f"{a['throughput_ratio']:.2f}x", ">= 1.4x")]


def _kernels_rows(k: dict) -> list[tuple[str, str, str]]:
    s, per_task = k["summary"], k["per_task"]
    failed = [f"{t}: {v['status']}" for t, v in per_task.items() if v["status"] != "passed"]
    rows = [("kernel experts passing in the GPU sandbox", f"{s.get('correct', 0)} of {s.get('tasks', 0)}", "all")]
    if s.get("geomean_speedup") is not None:
        rows.append(("experts over the PyTorch references: geomean; mean; share > 1x",
                     f"{s['geomean_speedup']:.2f}x; {s['mean_speedup_correct']:.2f}x; {s['fast_1']:.2f}", ""))
    if failed:
        first = next(v for v in per_task.values() if v["status"] != "passed")
        rows.append(("failures (first message)", "; ".join(failed[:6]) + f" ({first.get('message', '')[:100]})", ""))
    if k.get("not_run"):
        rows.append(("not judged (the budget ran out)", str(len(k["not_run"])), ""))
    return rows


ROWS = {"engine": _engine_rows, "kv-decode": _kv_rows, "spec": _spec_rows, "april": _april_rows,
        "kernels": _kernels_rows, "compiled": _engine_rows}
