"""`reasonrl bench kv`: retrieval accuracy against KV bytes per token, for every KV format.

The workload is associative recall (`recall.py`): prompts of K key -> value pairs and a query key
(195 tokens at the default 64 pairs), answered with the key's two-token value; a small Qwen2-
architecture model is trained here to solve it (cached in `model_dir`, reused when the task,
model and training settings match). Its KV shape is a preset (`SHAPES`): 8 KV heads of 64, or
32 of 128 (Llama-2-7B's, where TaDA's fp16 head-mean costs 1/32 of dense instead of 1/8). Arms,
all greedy on the same held-out items:

- dense, KIVI 2-bit, TaDA at 2 and 4 bits and at searched per-layer bits (the calibration search
  of `engine/kv/calibrate.py` within an average-bit budget, on items of a separate "calib"
  stream; the profile is saved next to the checkpoint in `kv_profiles/`): run through
  `LLMEngine`, all items submitted at once and served by continuous batching.
- SnapKV eviction alone, and SnapKV + SPARK key-channel pruning at 50% and 80%, twice: through
  `LLMEngine` (`evict_budget`, engine/eviction.py: dense, or the spark format, whose prompt blocks
  are pruned as they fill during prefill, then restored, selected and pruned again with the
  window's |Q|), and through the one-sequence harness `engine/kv/snapkv.generate_with_eviction`
  (selection and pruning on the exact prompt keys, the papers' setting), which stores the kept
  prefix in fp16. One more engine row composes all three: SnapKV + SPARK 80% with the kept keys
  and the values as 4-bit codes (TaDA).

Bytes per token. Engine rows: the slope of the format's allocated bytes (`KVFormat.storage()`,
every tensor) between two caches of different sizes, built exactly as the engine builds them,
over the tokens the extra blocks hold: the steady-state cost of a token in a full block. Fixed
costs (the full-precision staging pool of the quantized formats, one partly filled block per
running sequence) do not grow with the cache; they are reported as `fixed_bytes`, and
`engine_bytes_per_token` is the engine's own figure (`stats()["kv_bytes_per_token"]`, allocated
bytes over its capacity, staging pool included, at the benchmark's cache size). Dense storage is
sized at 16 bits, whatever dtype the model runs in (on CPU, fp32: the accuracy is that of the
exact cache). Eviction rows: bytes held at the end over the tokens whose KV was computed; in
the engine, the format's steady bytes per token times the share of computed tokens not evicted
(`stats()["kv_evicted_tokens"]`), in the harness, its tensors. Ratios are to a 16-bit dense cache, 2 * layers * kv_heads * head_dim * 2 bytes per token.

Targets (issue 6, from the papers): a TaDA row at <= 0.30 of dense bytes with at most 1 point of
accuracy lost; eviction + SPARK 80% within 5% (relative) of eviction alone while storing >= 30%
less. Rows concerned carry a `target` entry saying whether it is met.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from reasonrl.bench.common import device_name
from reasonrl.bench.recall import (RecallItem, RecallTask, TrainConfig, recall_items, recall_model_config, task_record,
                                   teacher_forced_accuracy, train_recall)
from reasonrl.engine.kv.base import dense16_bytes_per_token
from reasonrl.models.loader import load_model, resolve_device, save_model
from reasonrl.models.model import DecoderLM

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "reasonrl" / "bench_kv"
"""Trained recall models are cached in DEFAULT_MODEL_DIR / shape."""
RECORD = "recall_task.json"


@dataclass
class KVBenchConfig:
    items: int = 300
    """Held-out prompts every arm answers."""
    task: RecallTask = field(default_factory=RecallTask)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: dict = field(default_factory=lambda: dict(num_layers=2, hidden_size=64, num_heads=8, num_kv_heads=8,
                                                     head_dim=64))
    avg_bits: float = 3.0
    """Average-bit budget of the searched TaDA profile."""
    calib_items: int = 32
    budget: int = 48
    """SnapKV: prompt tokens kept per KV head and layer, besides the observation window."""
    window: int = 16
    block_size: int = 16
    max_num_seqs: int = 64
    seed: int = 0


def log(msg: str) -> None:
    print(f"[bench kv] {msg}", file=sys.stderr, flush=True)


# ---- the model ------------------------------------------------------------------------------------
def recall_model(model_dir: str | Path, cfg: KVBenchConfig, device=None) -> Path:
    """The trained recall checkpoint in `model_dir`: reused if its record matches `cfg`, else
    trained now (a few minutes on CPU) and saved there."""
    model_dir = Path(model_dir)
    mcfg = recall_model_config(cfg.task, **cfg.model)
    record = task_record(cfg.task, mcfg, cfg.train)
    saved = model_dir / RECORD
    if saved.is_file() and json.loads(saved.read_text()).get("config") == record:
        log(f"reusing the recall model in {model_dir}")
        return model_dir
    log(f"training a recall model ({mcfg.num_params() / 1e6:.2f}M parameters, {cfg.train.steps} steps) into {model_dir}")
    from reasonrl.models.tiny import init_weights

    model = init_weights(DecoderLM(mcfg), seed=cfg.train.seed).to(resolve_device(device))

    def progress(step, steps, loss, acc, pairs, seconds):
        log(f"train step {step}/{steps}: loss {loss:.3f}, held-out accuracy {acc:.2f} at {pairs} pairs ({seconds:.0f}s)")

    start = time.perf_counter()
    train_recall(model, cfg.task, cfg.train, progress)
    held_out = teacher_forced_accuracy(model, recall_items(cfg.task, 256, cfg.train.seed, split="monitor"))
    save_model(model, model_dir, word_tokenizer(cfg.task))
    saved.write_text(json.dumps({"config": record, "monitor_accuracy": held_out,
                                 "train_seconds": time.perf_counter() - start}, indent=1) + "\n")
    return model_dir


def word_tokenizer(task: RecallTask):
    """A word-level tokenizer over the task's tokens ("<bos> k3 v17 v2 ... <sep> k3"), so that the
    checkpoint is usable as it is (e.g. `reasonrl generate`)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    from reasonrl.models.tokenizer import Tokenizer

    words = task.tokens()
    tok = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(tok, None, eos_token="<eos>", bos_token="<bos>", pad_token="<pad>")


# ---- arms -----------------------------------------------------------------------------------------
def engine_accuracy(model: DecoderLM, items: list[RecallItem], kv_format: str, kv_options: dict, cfg: KVBenchConfig,
                    evict: bool = False) -> tuple[float, dict]:
    """All items through one `LLMEngine` (greedy, continuous batching; with `evict`, SnapKV eviction
    of `cfg.budget` + `cfg.window` prompt tokens) -> (accuracy, the engine's stats at the end)."""
    from reasonrl.engine import LLMEngine, SamplingParams
    from reasonrl.engine.config import EngineConfig

    longest = max(len(it.prompt_ids) + len(it.answer_ids) for it in items)
    per_seq = -(-longest // cfg.block_size) * cfg.block_size
    engine = LLMEngine(model, None, EngineConfig(
        kv_format=kv_format, kv_options=kv_options, max_num_seqs=cfg.max_num_seqs, block_size=cfg.block_size,
        max_model_len=longest + 1, kv_cache_memory=dense_bytes(model, per_seq * cfg.max_num_seqs),
        max_num_batched_tokens=max(4096, longest), evict_budget=cfg.budget if evict else None, evict_window=cfg.window))
    params = SamplingParams(temperature=0, max_tokens=len(items[0].answer_ids), ignore_eos=True)
    for i, it in enumerate(items):
        engine.add_request(str(i), it.prompt_ids, params)
    done = engine.drain()
    stats = engine.stats()
    if stats["preemptions"]:  # the cache is sized for every sequence at once; a preempted one is evicted
        # again when re-prefilled, and kv_evicted_tokens (the eviction rows' bytes) counts it twice
        raise RuntimeError(f"bench kv: the {kv_format} engine preempted {stats['preemptions']} sequences; "
                           "its byte figures would count re-evictions twice")
    correct = sum(done[str(i)].outputs[0].token_ids == it.answer_ids for i, it in enumerate(items))
    return correct / len(items), stats


def dense_bytes(model: DecoderLM, tokens: int) -> int:
    """Bytes a dense cache of the model's dtype needs for `tokens` tokens: the engine's cache size
    for every format (a compressed one then simply has room for more blocks)."""
    c = model.config
    return 2 * c.num_layers * c.num_kv_heads * c.head_dim * model.dtype.itemsize * tokens


def steady_bytes_per_token(model: DecoderLM, kv_format: str, kv_options: dict, cfg: KVBenchConfig,
                           sizes: tuple[int, int] = (64, 128)) -> tuple[float, int]:
    """Allocated bytes per extra token between two caches of `sizes` blocks (the cost of a token
    in a full block) and the fixed bytes left over (staging pools). Storage dtype: 16-bit."""
    from reasonrl.engine.kv import get_format

    fmt, allocated = get_format(kv_format), []
    for n in sizes:
        kv = fmt(model.config, n, cfg.block_size, torch.device("cpu"), torch.float16, cfg.max_num_seqs, **kv_options)
        kv.allocate()
        allocated.append(kv.allocated_bytes)
        kv.release()
    per_block = (allocated[1] - allocated[0]) / (sizes[1] - sizes[0])
    return per_block / cfg.block_size, int(allocated[0] - per_block * sizes[0])


def eviction_accuracy(model: DecoderLM, items: list[RecallItem], budget: int, window: int, key_ratio: float
                      ) -> tuple[float, float]:
    """SnapKV (+ SPARK when key_ratio > 0), one item at a time -> (accuracy, mean bytes per token)."""
    from reasonrl.engine.kv.snapkv import generate_with_eviction

    correct, stored = 0, 0.0
    for it in items:
        ids, nbytes = generate_with_eviction(model, it.prompt_ids, len(it.answer_ids), budget, window, key_ratio,
                                             store_dtype=torch.float16)
        correct += ids == it.answer_ids
        stored += nbytes
    return correct / len(items), stored / len(items)


def tada_profile(model: DecoderLM, model_dir: Path, cfg: KVBenchConfig) -> tuple[Path, list[int]]:
    """Per-layer TaDA bits within `avg_bits`, by the greedy KL search on calibration items (their
    prompts prefilled, their answers teacher-forced), saved as a profile next to the checkpoint."""
    from reasonrl.engine.kv.calibrate import profile_path, save_profile, search_bits

    calib = recall_items(cfg.task, cfg.calib_items, cfg.seed, split="calib")
    name = f"recall-avg{cfg.avg_bits:g}"
    result = search_bits(model, [it.prompt_ids + it.answer_ids for it in calib], cfg.avg_bits, "greedy",
                         seed=cfg.seed, prompt_len=len(calib[0].prompt_ids), block_size=cfg.block_size)
    save_profile(model_dir, name, result)
    log(f"TaDA profile {name}: bits {result.bits} (KL {result.kl:.4f})")
    return profile_path(model_dir, name), result.bits


def engine_arms(model: DecoderLM, model_dir: Path, cfg: KVBenchConfig) -> list[tuple[str, dict, dict]]:
    """(format, kv_options, params to report) of the engine rows."""
    profile, bits = tada_profile(model, model_dir, cfg)
    return [("dense", {}, {}),
            ("kivi", {"k_bits": 2, "v_bits": 2}, {"k_bits": 2, "v_bits": 2}),
            ("tada", {"bits": 2}, {"bits": 2}),
            ("tada", {"bits": 4}, {"bits": 4}),
            ("tada", {"profile": str(profile)}, {"profile": profile.stem, "bits": bits, "avg_bits": cfg.avg_bits}),
            ("spark", {"key_ratio": 0.5}, {"key_ratio": 0.5}),  # every token pruned, no eviction
            ("spark", {"key_ratio": 0.5, "bits": 4}, {"key_ratio": 0.5, "bits": 4})]  # composed with TaDA


# ---- the benchmark --------------------------------------------------------------------------------
def bench_kv(model_dir: str | Path | None = None, cfg: KVBenchConfig | None = None, device=None) -> list[dict]:
    """Rows {format, params, bytes_per_token, bytes_per_token_ratio, accuracy, n, ...}, one per arm."""
    cfg = cfg or KVBenchConfig()
    model_dir = Path(model_dir or DEFAULT_MODEL_DIR / shape_name(cfg))
    recall_model(model_dir, cfg, device)
    model = load_model(model_dir, device, torch.float32)
    items = recall_items(cfg.task, cfg.items, cfg.seed)
    c = model.config
    dense16 = dense16_bytes_per_token(c)
    rows = []
    for fmt, options, params in engine_arms(model, model_dir, cfg):
        start = time.perf_counter()
        acc, stats = engine_accuracy(model, items, fmt, options, cfg)
        bpt, fixed = steady_bytes_per_token(model, fmt, options, cfg)
        rows.append(row(fmt, params, bpt, dense16, acc, len(items), fixed_bytes=fixed,
                        engine_bytes_per_token=stats["kv_bytes_per_token"], path="engine"))
        log(f"{fmt} {params}: accuracy {acc:.3f}, {bpt / dense16:.3f} of dense ({time.perf_counter() - start:.0f}s)")
    computed = sum(len(it.prompt_ids) + len(it.answer_ids) - 1 for it in items)  # tokens whose KV is computed
    for name, ratio, bits in (("snapkv", 0.0, None), ("snapkv+spark", 0.5, None), ("snapkv+spark", 0.8, None),
                              ("snapkv+spark", 0.8, 4)):
        params = {"budget": cfg.budget, "window": cfg.window, **({"key_ratio": ratio} if ratio else {}),
                  **({"bits": bits} if bits else {})}
        kept = min(1.0, (cfg.budget + cfg.window) / len(items[0].prompt_ids))
        start = time.perf_counter()
        fmt, options = ("spark", {k: params[k] for k in ("key_ratio", "bits") if k in params}) if ratio else ("dense", {})
        acc, stats = engine_accuracy(model, items, fmt, options, cfg, evict=True)
        bpt, fixed = steady_bytes_per_token(model, fmt, options, cfg)
        held = 1 - stats["kv_evicted_tokens"] / computed  # share of computed tokens whose KV stays
        rows.append(row(name, params, bpt * held, dense16, acc, len(items), fixed_bytes=fixed, path="engine",
                        prompt_kept=kept))
        log(f"{name} {params} (engine): accuracy {acc:.3f}, {bpt * held / dense16:.3f} of dense "
            f"({time.perf_counter() - start:.0f}s)")
        if bits:  # the harness stores the kept prefix in fp16 only
            continue
        start = time.perf_counter()
        acc, bpt = eviction_accuracy(model, items, cfg.budget, cfg.window, ratio)
        rows.append(row(name, params, bpt, dense16, acc, len(items), path="eviction harness", prompt_kept=kept))
        log(f"{name} {params} (harness): accuracy {acc:.3f}, {bpt / dense16:.3f} of dense "
            f"({time.perf_counter() - start:.0f}s)")
    check_targets(rows)
    for r in rows:
        r.update(device=device_name(model.device), prompt_tokens=len(items[0].prompt_ids), model_shape=shape_name(cfg))
    return rows


def shape_name(cfg: KVBenchConfig) -> str:
    """"KVHEADSxHEADDIM" of the recall model."""
    return f"{cfg.model.get('num_kv_heads', 8)}x{cfg.model.get('head_dim', 64)}"


def row(fmt: str, params: dict, bytes_per_token: float, dense16: int, accuracy: float, n: int, **extra) -> dict:
    return {"format": fmt, "params": params, "bytes_per_token": bytes_per_token,
            "bytes_per_token_ratio": bytes_per_token / dense16, "accuracy": accuracy, "n": n, **extra}


def check_targets(rows: list[dict]) -> None:
    """Adds `target` to the TaDA rows and to eviction + SPARK 80%: the issue's targets, met or not,
    or None (undetermined) where the baseline scores 0: nothing can be lost against it."""
    dense = next(r for r in rows if r["format"] == "dense")
    for r in rows:
        if r["format"] == "tada":
            lost = (dense["accuracy"] - r["accuracy"]) * 100
            r["target"] = {"rule": "<= 0.30 of dense bytes and <= 1 point of accuracy lost", "points_lost": lost,
                           "met": r["bytes_per_token_ratio"] <= 0.30 and lost <= 1.0 if dense["accuracy"] else None}
    for r in rows:
        evict = next((e for e in rows if e["format"] == "snapkv" and e["path"] == r["path"]), None)
        if evict and r["format"] == "snapkv+spark" and r["params"].get("key_ratio") == 0.8 and "bits" not in r["params"]:
            rel_loss = 1 - r["accuracy"] / evict["accuracy"] if evict["accuracy"] else None
            saved = 1 - r["bytes_per_token"] / evict["bytes_per_token"]
            r["target"] = {"rule": "<= 5% relative accuracy loss vs eviction alone, >= 30% fewer bytes",
                           "relative_loss": rel_loss, "bytes_saved": saved,
                           "met": None if rel_loss is None else rel_loss <= 0.05 and saved >= 0.30}


def _verdict(met: bool | None) -> str:
    return "undetermined (the baseline scores 0)" if met is None else "met" if met else "NOT met"


def format_table(rows: list[dict]) -> str:
    lines = [f"{'format':<14}{'params':<50}{'path':<18}{'bytes/token':>12}{'ratio':>8}{'accuracy':>10}  target",
             "-" * 124]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        target = "" if "target" not in r else _verdict(r["target"]["met"])
        lines.append(f"{r['format']:<14}{params:<50}{r['path']:<18}{r['bytes_per_token']:>12.1f}"
                     f"{r['bytes_per_token_ratio']:>8.3f}{r['accuracy']:>10.3f}  {target}")
    return "\n".join(lines + [""] + summary(rows))


def summary(rows: list[dict]) -> list[str]:
    """One line per target of the issue: met or not, and by which row."""
    tada = [r for r in rows if r["format"] == "tada"]
    met = [r for r in tada if r["target"]["met"]]
    undetermined = bool(tada) and tada[0]["target"]["met"] is None
    out = ["TaDA target (<= 0.30 of dense bytes, <= 1 point lost): " + (
        _verdict(None) if undetermined else f"met by {met[0]['params']}" if met else "NOT met: " + "; ".join(
            f"{r['params'].get('bits')} bits at {r['bytes_per_token_ratio']:.3f} lose "
            f"{r['target']['points_lost']:.1f} points" for r in tada))]
    for spark in (r for r in rows if "target" in r and r["format"] == "snapkv+spark"):
        t = spark["target"]
        out.append(f"SPARK 80% target, {spark['path']} (<= 5% relative loss vs eviction, >= 30% fewer bytes): "
                   f"{_verdict(t['met'])}" + ("" if t["relative_loss"] is None else
                                             f" ({t['relative_loss']:.1%} loss, {t['bytes_saved']:.1%} fewer bytes)"))
    return out


SHAPES = {
    # the default: 8 KV heads of 64, 195-token prompts; TaDA's 16-bit head-mean alone is 1/8 of dense
    "8x64": {},
    # the KV shape of Llama-2-7B (32 KV heads of 128), where TaDA's head-mean costs 1/32 and 4-bit
    # deviations fit under 0.30 of dense. Attention 8x wider: shorter prompts (99 tokens) and
    # bf16-autocast training keep it to 47 min on a shared 2-core CPU (measured)
    "32x128": {"model": dict(num_layers=2, hidden_size=64, num_heads=32, num_kv_heads=32, head_dim=128),
               "task": RecallTask(pairs=32), "train": TrainConfig(steps=600, bf16=True)},
}


@dataclass
class KVBenchJob:
    model_dir: str | None = None
    """The trained recall model's directory, reused when its settings match (default:
    ~/.cache/reasonrl/bench_kv/SHAPE)."""
    model_shape: Literal["8x64", "32x128"] = "8x64"
    """KV heads x head dim of the recall model: 8x64 (195-token prompts, ~9 min of training on this
    CPU) or 32x128, Llama-2-7B's KV shape (99-token prompts, ~47 min)."""
    items: int | None = None
    """Held-out recall prompts per arm (default: KVBenchConfig's, 300)."""
    train_steps: int | None = None
    """Training steps of the recall model (default: the shape's, 800 or 600)."""
    seed: int = 0
    """Seed of the items and the training."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""

    def config(self) -> KVBenchConfig:
        return config_from_args(self.items, self.train_steps, self.seed, self.model_shape)


def run_job(job: KVBenchJob) -> list[dict]:
    """`reasonrl bench kv`: the rows for a job's model directory, shape and settings."""
    return bench_kv(job.model_dir, job.config(), job.device)


def config_from_args(items: int | None = None, train_steps: int | None = None, seed: int = 0, shape: str = "8x64",
                     **overrides) -> KVBenchConfig:
    if shape not in SHAPES:
        raise ValueError(f"unknown recall model shape {shape!r}; known: {', '.join(SHAPES)}")
    cfg = KVBenchConfig(seed=seed, **{**SHAPES[shape], **overrides})
    if items is not None:
        cfg.items = items
    cfg.train = replace(cfg.train, seed=seed, **({} if train_steps is None else {"steps": train_steps}))  # a copy
    return cfg
