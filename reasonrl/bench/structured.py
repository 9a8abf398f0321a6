"""`reasonrl bench structured`: what a grammar's logits mask (engine/grammar.py) costs per decode step.

The same batch of requests is decoded with and without a JSON-schema constraint, in one run,
alternating, best of `repeats` each: the difference in tokens/s is the mask's cost inside the
engine (mask computation, unpacking, matcher advance). Both decode exactly `max_tokens` tokens per
request: the unconstrained ones ignore end-of-sequence, and the schema (an array of at least 1000
records) cannot end sooner. The mask alone and the matchers' advance are also timed per step,
replaying the constrained outputs (fastest of 3 replays per step), the compile time of a fresh
schema (paid once per new schema, then cached) and of llguidance's tokenizer (once per engine).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import torch

from reasonrl.bench.common import device_name

RECORD = {"type": "object", "properties": {
    "id": {"type": "integer", "minimum": 0}, "name": {"type": "string", "maxLength": 24},
    "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
    "score": {"type": "number"}, "ok": {"type": "boolean"}},
    "required": ["id", "name", "tags", "score", "ok"], "additionalProperties": False}
SCHEMA = {"type": "array", "items": RECORD, "minItems": 1000}


@dataclass
class StructuredBenchConfig:
    model: str | None = None
    """Checkpoint directory (default: the demo policy, whose small vocabulary the result's `vocab` reports)."""
    vocab: int = 0
    """When set, instead a random tiny model with a byte-level BPE of this many tokens, trained here on
    generated words (the mask's cost grows with the vocabulary; real models have 32k-150k)."""
    requests: int = 32
    """Requests decoded at once (one batch)."""
    max_tokens: int = 64
    """Tokens each request decodes."""
    repeats: int = 3
    """Timed runs of each kind (alternating); the best of each is reported."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""

    def __post_init__(self):
        for name in ("requests", "max_tokens", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def bench_structured(cfg: StructuredBenchConfig) -> dict:
    from reasonrl.engine import LLMEngine, SamplingParams
    from reasonrl.engine.structured import StructuredOutput

    with tempfile.TemporaryDirectory() as tmp:  # the engine holds all it needs once loaded
        path = _vocab_model(cfg.vocab, tmp) if cfg.vocab else cfg.model or _demo_policy()
        engine = LLMEngine.from_pretrained(path, device=cfg.device, max_num_seqs=cfg.requests, block_size=16,
                                           max_model_len=cfg.max_tokens + 64, kv_cache_memory=1 << 27)
    path = f"random tiny qwen2, BPE of {cfg.vocab} tokens" if cfg.vocab else path
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": "List the records as JSON."}])
    setup_s = _time(lambda: engine.grammars.lltok)  # once per engine: llguidance's view of the vocabulary
    compile_s = _time(lambda: engine.grammars.compile(StructuredOutput(json=SCHEMA)))
    spec = StructuredOutput(json=SCHEMA)

    def run(constrained: bool):
        for i in range(cfg.requests):
            engine.add_request(f"r{i}", prompt, SamplingParams(max_tokens=cfg.max_tokens, seed=i, ignore_eos=True,
                                                               structured=spec if constrained else None))
        start = time.perf_counter()
        done = engine.drain()
        seconds = time.perf_counter() - start
        return sum(len(o.outputs[0].token_ids) for o in done.values()) / seconds, done

    run(False), run(True)  # warm-up
    best = {"free": 0.0, "constrained": 0.0}
    for _ in range(cfg.repeats):
        for kind in best:
            rate, done = run(kind == "constrained")
            best[kind] = max(best[kind], rate)
    mask_s, advance_s, valid = _mask_time(engine, spec, [o.outputs[0].token_ids for o in done.values()])
    step_free, step_constrained = cfg.requests / best["free"], cfg.requests / best["constrained"]
    return {"device": device_name(engine.model.device), "model": str(path), "vocab": engine.model.config.vocab_size,
            "requests": cfg.requests, "max_tokens": cfg.max_tokens,
            "free_tokens_per_s": best["free"], "constrained_tokens_per_s": best["constrained"],
            "constrained_over_free": best["constrained"] / best["free"],
            "overhead_ms_per_decode_step": 1e3 * (step_constrained - step_free),
            "mask_ms_per_step": 1e3 * mask_s, "mask_us_per_sequence": 1e6 * mask_s / cfg.requests,
            "advance_ms_per_step": 1e3 * advance_s,
            "tokenizer_setup_ms": 1e3 * setup_s, "schema_compile_ms": 1e3 * compile_s, "constrained_outputs_valid": valid}


def _mask_time(engine, spec, outputs: list[list[int]], replays: int = 3) -> tuple[float, float, bool]:
    """Seconds per decode step of `mask_logits` over the batch and of advancing its matchers, replaying
    real outputs (each step's matcher states are new, as in decoding) `replays` times with fresh
    matchers, the fastest replay of each step (this machine's noise only adds); and whether every
    output token was one the constraint allows."""
    from types import SimpleNamespace

    from reasonrl.engine.grammar import mask_logits

    logits = torch.randn(len(outputs), engine.model.config.vocab_size, device=engine.model.device)
    steps = min(len(ids) for ids in outputs)
    mask, advance, ok = [float("inf")] * steps, [float("inf")] * steps, []
    for _ in range(replays):
        seqs = [SimpleNamespace(guide=engine.grammars.guide(spec)) for _ in outputs]
        for k in range(steps):
            mask[k] = min(mask[k], _time(lambda: mask_logits(logits, seqs, engine.eos_ids, engine.grammars),
                                         engine.model.device))
            advance[k] = min(advance[k], _time(lambda: ok.extend(s.guide.advance(ids[k]) for s, ids in zip(seqs, outputs))))
    return sum(mask) / steps, sum(advance) / steps, all(ok)


def _time(fn, device=None) -> float:
    from reasonrl.bench.common import sync

    start = time.perf_counter()
    fn()
    if device is not None:
        sync(device)
    return time.perf_counter() - start


def _vocab_model(vocab: int, out: str) -> str:
    """A random tiny Qwen2 checkpoint (written in `out`) whose tokenizer has `vocab` tokens."""
    import random

    from reasonrl.models.tiny import make_checkpoint, make_tokenizer

    rng = random.Random(0)
    letters, weights = "etaoinshrdlucmfwypvbgkqjxz", [12, 9, 8, 7, 7, 6, 6, 6, 6, 4, 4, 3, 3] + [2] * 6 + [1] * 7
    words = lambda: " ".join("".join(rng.choices(letters, weights, k=rng.randint(2, 9))) for _ in range(50))
    corpus = [words() + ' {"id": 12, "name": "x", "ok": true}' for _ in range(max(2000, vocab // 4))]
    tokenizer = make_tokenizer(corpus, vocab_size=vocab)
    if tokenizer.vocab_size < vocab:
        raise ValueError(f"vocab={vocab}: the generated corpus gave only {tokenizer.vocab_size} tokens")
    return str(make_checkpoint(out, "qwen2", tokenizer, hidden_size=64))


def _demo_policy() -> str:
    from pathlib import Path

    import reasonrl.demo

    return str(Path(reasonrl.demo.__file__).parent / "policy")
