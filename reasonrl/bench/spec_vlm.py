"""`reasonrl bench spec --vlm`: speculative decoding of a vision-language model, SpecVLM's measurements.

Same process, same target, same image prompts (shapes-world VQA): plain decoding against the
EagleVLM draft (every visual token) and the SpecVLM draft (elastic visual compressor), greedy, at
each concurrency level, interleaved over repeats, median per-repeat ratios. Reported per draft: accepted length at
batch 1, speedup at each level, the draft's visual tokens and FLOPs per request, and for the
compressed draft how often its gate chose text-only on questions answerable without the image
(family `text`; target at least 80%) and on detail questions (family `detail`; target near 0%).
With batch 1 among the levels, each arm's batch-1 time split into prefill steps and the rest
(`prefill_share`, `decode_speedup`), and the draft's and verification's costs per round in plain
decode steps. `--distill-steps N` distils both drafts first. Outputs of every arm must be token-identical.
"""

from __future__ import annotations

import statistics
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from reasonrl.bench.common import device_name
from reasonrl.bench.spec import (DEMO, SpecBenchConfig, arm_order, count_rounds, decode, distill, greedy_identical,
                                  paired_ratio, prefill_timer, round_costs, shipped_draft, timed_run,
                                  tree_tokens_by_batch)
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.spec.draft import DraftHead
from reasonrl.models.loader import load_model
from reasonrl.models.qwen2_5_vl.prompt import build_prompt
from reasonrl.models.tokenizer import Tokenizer


class Arm(NamedTuple):
    name: str
    flag: str  # the CLI flag that gives its draft
    field: str  # that flag's SpecBenchConfig field
    shipped: str  # the demo VLM's draft, under reasonrl/demo
    compressor: str  # --distill-steps: the compressor mode distilled


ARMS = (Arm("eaglevlm", "--draft", "draft", "vlm_draft", "none"),
        Arm("specvlm", "--compressed-draft", "compressed_draft", "vlm_draft_compressed", "select"))


def _drafts(c: SpecBenchConfig, model_path: Path) -> dict[str, Path | None]:
    """Each arm's draft: the one given (which must exist), else the demo VLM's shipped one where the
    target is the demo VLM and it is shipped; another target's arm without a draft is left out (the
    demo's drafts were distilled for the demo's weights and width). With --distill-steps no draft
    is given (SpecBenchConfig refuses both) and `_distilled` replaces these."""
    out = {}
    for arm in ARMS:
        given = getattr(c, arm.field)
        if given is not None and not Path(given).is_dir():
            raise ValueError(f"{arm.flag} {given}: no such directory (a draft from `reasonrl distill-draft`)")
        out[arm.name] = Path(given) if given is not None else shipped_draft(model_path, "vlm", arm.shipped)
    return out


def _distilled(c: SpecBenchConfig, model_path: Path, env: str) -> dict[str, Path]:
    """--distill-steps: a fresh draft for each arm, the SpecVLM one with the compressor in select mode."""
    return {arm.name: distill(c, model_path, env, arm.compressor) for arm in ARMS}


def bench_spec_vlm(c: SpecBenchConfig) -> dict:
    from reasonrl.envs.registry import load_environment

    model_path = Path(c.model) if c.model else DEMO / "vlm"
    drafts = _drafts(c, model_path)  # a bad path named before the model, prompts and engines are made
    target = load_model(model_path, c.device, c.dtype)
    if getattr(target, "vlm_config", None) is None:
        raise ValueError(f"--vlm needs a vision-language model; {model_path} is not one")
    env_spec = c.env if c.env.startswith("shapes") else "shapes:"
    if c.distill_steps:
        drafts = _distilled(c, model_path, env_spec)
    tok = Tokenizer.from_dir(model_path)
    levels = sorted(set(c.concurrency))
    env = load_environment(env_spec)
    items = env.prompts(n=max(c.num_prompts, 4 * levels[-1]), seed=c.seed + 1, split="eval")
    prompts = [build_prompt(tok, p.messages, target.vlm_config, target.image_config) for p in items]
    opts = dict(max_model_len=max(len(p.input_ids) for p in prompts) + c.max_tokens + 1, max_num_seqs=levels[-1],
                kv_cache_memory=1 << 28, cpu_forward_kernel=c.cpu_forward_kernel)
    arms = {"plain": LLMEngine(target, None, EngineConfig(**opts))}
    for name, path in drafts.items():
        if path is not None:
            arms[name] = LLMEngine(target, None, EngineConfig(**opts, draft_top_k=c.draft_top_k, draft_depth=c.draft_depth,
                                                              draft_tokens=c.draft_tokens, draft_adaptive=c.adaptive,
                                                              draft_max_batch=c.draft_max_batch,
                                                              draft_compile=c.draft_compile,
                                                              cpu_draft_kernel=c.cpu_draft_kernel),
                                   draft=DraftHead.load(path, target))
    if len(arms) == 1:
        raise ValueError(f"--vlm found no draft for {model_path}: give --draft (EagleVLM) and/or --compressed-draft (SpecVLM)")
    rates, cpu_rates, outputs, batch1, shares, trees = _run(arms, prompts, c, levels)
    prefill = _prefill_runs(arms, prompts, c, outputs) if levels[0] == 1 else {}
    on_cpu = target.device.type == "cpu"
    plain = prefill.get("plain")
    result = {"device": device_name(target.device), "model": str(model_path), "concurrency": levels,
              "figures_at_concurrency": levels[0], "greedy_identical": greedy_identical(outputs, levels),
              "plain_tokens_per_s": {level: statistics.median(rates[("plain", level)]) for level in levels},
              **({"prefill_share": plain.prefill_seconds / plain.seconds} if plain else {}),
              "costs_in": "plain decode steps" if plain else f"plain tokens at {levels[0]} in flight, prefill included"}
    # a round's costs in plain decoding's time per step outside prefill (the first token of each request
    # comes from its prefill step); without batch 1, in its time per token at the lowest level
    unit_rate = (plain.decode_tokens / (plain.seconds - plain.prefill_seconds) if plain
                 else statistics.median(rates[("plain", levels[0])]))
    for name, engine in arms.items():
        if name == "plain":
            continue
        result[name] = {**_draft_figures(engine, batch1[name], prompts, items, c.max_tokens),
                        "draft": str(drafts[name]), **round_costs(trees[name], unit_rate),
                        **(_decode_figures(prefill, name) if prefill else {}),
                        "tree_tokens_by_batch": tree_tokens_by_batch(engine),
                        **{f"batch{level}_speedup": _ratio(rates, name, level) for level in levels},
                        **{f"batch{level}_speculation_time_share": shares[(name, level)] for level in levels},
                        **({f"batch{level}_cpu_speedup": _ratio(cpu_rates, name, level) for level in levels}
                           if on_cpu else {})}
    _print(result)
    return result


def _ratio(rates, name: str, level: int) -> float:
    return paired_ratio(rates[(name, level)], rates[("plain", level)])


def _run(arms: dict, prompts, c: SpecBenchConfig, levels):
    rates, cpu_rates, outputs, shares, trees = {}, {}, {}, {}, {}
    batch1 = {name: {"rounds": 0, "emitted": 0, "kept": 0} for name in arms}
    for engine in arms.values():  # warm-up
        decode(engine, prompts[:2], 8, 2)
    for r in range(c.repeats):
        for level in levels:
            work = prompts[: max(c.num_prompts, 4 * level)]
            for name, engine in arm_order(arms, r):
                before = engine.stats()
                engine.reset_prefix_cache()
                run = decode(engine, work, c.max_tokens, level)
                rates.setdefault((name, level), []).append(run.tokens / run.seconds)
                cpu_rates.setdefault((name, level), []).append(run.tokens / run.cpu_seconds)
                outputs.setdefault(f"{name}@{level}", []).append(run.outputs)
                if level == levels[0] and engine.speculator is not None:
                    count_rounds(batch1[name], before, engine.stats())
                print(f"  repeat {r + 1}/{c.repeats}  in flight {level:>3}  {name:<9} "
                      f"{run.tokens / run.seconds:8.1f} tok/s", file=sys.stderr, flush=True)
    for name, engine in arms.items():  # the drafting share, from one more run with timers (bench/spec.py `timed_run`)
        if engine.speculator is not None:
            for level in levels:
                run, overhead, timers = timed_run(engine, prompts[: max(c.num_prompts, 4 * level)], c.max_tokens, level, name)
                shares[(name, level)] = sum(overhead) / run.seconds
                outputs[f"{name}-timed@{level}"] = [run.outputs]
                if level == levels[0]:
                    trees[name] = timers
    return rates, cpu_rates, outputs, batch1, shares, trees


class PrefillRun(NamedTuple):
    seconds: float
    prefill_seconds: float
    decode_tokens: int  # tokens sampled outside prefill steps (each request's first comes from its prefill)


def _prefill_runs(arms: dict, prompts, c: SpecBenchConfig, outputs: dict) -> dict[str, PrefillRun]:
    """One more run of every arm at one request in flight, each with a timer on its target's prefill
    steps alone (one wrapped call a step, the same in every arm). With one request in flight a step
    carries a prefill chunk or a decode (or verification) step, never both, so the rest of the run,
    everything outside prefill steps (the host loop and request admission too, both small), is the
    decoding that speculation speeds up. The arms run in a fixed order, once each."""
    out = {}
    for name, engine in arms.items():
        engine.reset_prefix_cache()
        timer = prefill_timer(engine)
        work = prompts[: max(c.num_prompts, 4)]  # level 1's prompts
        try:
            run = decode(engine, work, c.max_tokens, 1)
        finally:
            timer.remove()
        out[name] = PrefillRun(run.seconds, timer.seconds, run.tokens - len(work))
        outputs[f"{name}-prefill@1"] = [run.outputs]
        print(f"  prefill-timed run  in flight   1  {name:<9} {run.tokens / run.seconds:8.1f} tok/s, prefill "
              f"{timer.seconds / run.seconds:.0%} of it", file=sys.stderr, flush=True)
    return out


def _decode_figures(prefill: dict[str, PrefillRun], name: str) -> dict:
    """The arm's share of its batch-1 run in prefill steps, its speedup over plain decoding on the
    rest of the run (the decode phase: drafting, the draft's catch-up on the prompt and verification
    all count there), and the same runs' end-to-end ratio (one run each: a cross-check of the
    median end-to-end speedup, noisier)."""
    plain, arm = prefill["plain"], prefill[name]
    return {"prefill_share": arm.prefill_seconds / arm.seconds,
            "decode_speedup": (plain.seconds - plain.prefill_seconds) / (arm.seconds - arm.prefill_seconds),
            "prefill_run_speedup": plain.seconds / arm.seconds}


def _draft_figures(engine: LLMEngine, batch1: dict, prompts, items, max_tokens: int) -> dict:
    """Accepted length at the first level; then what the draft does with each held-out image (visual
    tokens and FLOPs per request, and the gate's text-only rate on the `text` family, answerable
    without the image, and on the `detail` family), from one more pass with the full tree forced,
    so every request's draft reads its image: under the adaptive policy a request whose draft
    restarted past its image, or that never ran a tree, would not count."""
    spec = engine.speculator
    spec.visual_reports.clear()
    engine.reset_prefix_cache()  # every prompt prefilled afresh, as in the timed runs
    with _full_tree(engine):
        decode(engine, prompts, 8, 8)
    mine = [spec.visual_reports[str(i)] for i in range(len(items)) if str(i) in spec.visual_reports]
    rounds = max(batch1["rounds"], 1)
    out = {"accepted_length": batch1["emitted"] / rounds, "kept_per_round": batch1["kept"] / rounds,
           "visual_tokens_per_request": statistics.mean(r.visual_tokens for r in mine) if mine else 0.0,
           "draft_visual_tokens_per_request": statistics.mean(r.draft_visual_tokens for r in mine) if mine else 0.0,
           "draft_visual_gflops_per_request": statistics.mean(r.draft_visual_flops for r in mine) / 1e9 if mine else 0.0}
    if spec.draft.compressor is not None:
        for family in ("text", "detail"):
            chose = [b == "text_only" for i, p in enumerate(items) if p.metadata["family"] == family
                     and str(i) in spec.visual_reports for b in spec.visual_reports[str(i)].branches]
            out[f"text_only_rate_{family}"] = sum(chose) / len(chose) if chose else None
            out[f"gate_questions_{family}"] = len(chose)
        out["accepted_length_by_branch"], out["draft_visual_tokens_by_branch"] = _by_branch(engine, prompts, items, max_tokens)
    return out


@contextmanager
def _full_tree(engine: LLMEngine):
    """The configured tree every step, whatever the adaptive policy would choose."""
    policy = engine.speculator.policy
    enabled, policy.config.enabled = policy.config.enabled, False
    try:
        yield
    finally:
        policy.config.enabled = enabled


def _by_branch(engine: LLMEngine, prompts, items, max_tokens: int) -> tuple[dict, dict]:
    """Accepted length on the `text` and `detail` questions with each compressor branch forced
    (full tree, 8 in flight): what each branch's visual rows are worth to the draft, by which the
    gate's choices can be judged; and the draft visual tokens per request each branch kept."""
    spec = engine.speculator
    compressor, lengths, rows = spec.draft.compressor, {}, {}
    with _full_tree(engine):
        for family in ("text", "detail"):
            mine = [p for p, item in zip(prompts, items) if item.metadata["family"] == family]
            for branch in compressor.gated if mine else ():
                engine.reset_prefix_cache()
                spec.visual_reports.clear()
                before = engine.stats()
                with compressor.force(branch):
                    decode(engine, mine, max_tokens, 8)
                after = engine.stats()
                lengths.setdefault(family, {})[branch] = ((after["spec_emitted_tokens"] - before["spec_emitted_tokens"])
                                                          / max(after["spec_rounds"] - before["spec_rounds"], 1))
                reports = spec.visual_reports.values()
                rows.setdefault(family, {})[branch] = statistics.mean(r.draft_visual_tokens for r in reports) if reports else 0.0
    return lengths, rows


def _print(r: dict) -> None:
    prefill = f"  plain batch 1: prefill {r['prefill_share']:.0%} of the time" if "prefill_share" in r else ""
    print(f"device: {r['device']}  model: {r['model']}  greedy identical: {r['greedy_identical']}{prefill}")
    for name in ("eaglevlm", "specvlm"):
        if name in r:
            a = r[name]
            decode_phase = (f"  decode phase {a['decode_speedup']:.2f}x (prefill {a['prefill_share']:.0%} of its batch-1 time)"
                            if "decode_speedup" in a else "")
            print(f"{name}: accepted length {a['accepted_length']:.2f} (kept {a['kept_per_round']:.2f})  draft cost "
                  f"{a['draft_cost_ratio']:.2f}  verify cost {a['verify_cost_ratio']:.2f} (per round, in {r['costs_in']})"
                  f"{decode_phase}  tree tokens by batch {a['tree_tokens_by_batch']}")
            speed = "  ".join(f"{level} in flight {a[f'batch{level}_speedup']:.2f}x"
                              + (f" (CPU time {a[k]:.2f}x)" if (k := f"batch{level}_cpu_speedup") in a else "")
                              + f" [drafting and policy {a[f'batch{level}_speculation_time_share']:.1%}]"
                              for level in r["concurrency"])
            gate = "".join(f"  text-only on {f} questions {a[f'text_only_rate_{f}']:.0%} of {a[f'gate_questions_{f}']}"
                           for f in ("text", "detail") if a.get(f"text_only_rate_{f}") is not None)
            print(f"  {speed}  draft visual tokens "
                  f"{a['draft_visual_tokens_per_request']:.1f} of {a['visual_tokens_per_request']:.1f}, "
                  f"{a['draft_visual_gflops_per_request']:.4f} GFLOPs per request{gate}")
            for family, by in a.get("accepted_length_by_branch", {}).items():
                rows = a["draft_visual_tokens_by_branch"][family]
                print(f"  accepted length on {family} questions, branch forced (draft visual tokens): "
                      + "  ".join(f"{b} {v:.2f} ({rows[b]:.0f})" for b, v in by.items()))
