"""`reasonrl bench engine`: rollout throughput of the engine against transformers `generate`.

Workload: prompts of varied length with heavy-tailed (log-normal) response lengths, as in RL
rollouts. Each request decodes greedily to its target length (EOS ignored), so both arms produce
exactly the same useful tokens. The engine keeps `concurrency` sequences in flight with
continuous batching; transformers is used the way its users batch it: left-padded batches of
`concurrency` prompts, each batch generating until its longest target (a row that reached its
target keeps computing; only the target tokens are counted). Same model files, prompts, device,
dtype and process.

Also reported: the engine's model FLOP/s as a fraction of this machine's matmul peak (measured
here), and batch-1 decode against the memory-bandwidth roofline (weight bytes / copy bandwidth).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from reasonrl.bench.common import device_name, matmul_peak_flops, memory_bandwidth, sync
from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.models.config import ModelConfig
from reasonrl.models.loader import load_model, resolve_device, resolve_dtype
from reasonrl.models.tiny import make_checkpoint

# Random checkpoints of fixed shapes, so figures are comparable across runs and machines.
PRESETS = {
    "tiny": dict(family="qwen2", vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 max_position_embeddings=1024),
    "20m": dict(family="qwen2", vocab_size=8192, hidden_size=512, num_layers=6, num_heads=8, num_kv_heads=2,
                intermediate_size=1408, max_position_embeddings=4096),
    "qwen2.5-0.5b": dict(family="qwen2", vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14,
                         num_kv_heads=2, intermediate_size=4864, max_position_embeddings=32768),
}


@dataclass
class Workload:
    prompts: list[list[int]]
    targets: list[int]  # response tokens each prompt must produce

    @property
    def output_tokens(self) -> int:
        return sum(self.targets)


def make_workload(vocab: int, num_prompts: int, prompt_len: tuple[int, int], median_tokens: int, max_tokens: int,
                  seed: int = 0) -> Workload:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(prompt_len[0], prompt_len[1] + 1, (num_prompts,), generator=g)
    prompts = [torch.randint(0, vocab, (int(n),), generator=g).tolist() for n in lens]
    # log-normal with sigma 1: p99 is ~10x the median, the long tail of reasoning rollouts
    targets = torch.exp(math.log(median_tokens) + torch.randn(num_prompts, generator=g)).round().clamp(4, max_tokens)
    return Workload(prompts, [int(t) for t in targets])


def forward_flops(cfg: ModelConfig, new_tokens: int, context: int, logit_rows: int | None = None) -> float:
    """Matmul FLOPs of running `new_tokens` tokens at context length `context` (2 per MAC), the LM
    head on `logit_rows` of them (default all)."""
    d, hq, hkv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    per_token = cfg.num_layers * (d * hd * (2 * hq + 2 * hkv) + 3 * d * cfg.intermediate_size)
    attention = cfg.num_layers * 2 * hq * hd * context  # q.k and p.v
    head = d * cfg.vocab_size * (new_tokens if logit_rows is None else logit_rows)
    return 2.0 * (new_tokens * (per_token + attention) + head)


def workload_flops(cfg: ModelConfig, w: Workload) -> float:
    """The engine's matmul FLOPs for the workload: a prompt's logits only at its last token (the one
    sampled from), every decode token's."""
    total = 0.0
    for p, t in zip(w.prompts, w.targets):
        total += forward_flops(cfg, len(p), len(p) / 2, logit_rows=1)  # prefill, mean context len/2
        total += forward_flops(cfg, t - 1, len(p) + t / 2)  # decode (the first token came from the prefill)
    return total


def run_engine(engine: LLMEngine, w: Workload) -> float:
    engine.reset_prefix_cache()  # a repeat must prefill its prompts again, as transformers does
    for i, (p, t) in enumerate(zip(w.prompts, w.targets)):
        engine.add_request(f"b{i}", p, SamplingParams(temperature=0, max_tokens=t, ignore_eos=True))
    sync(engine.model.device)
    start = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    sync(engine.model.device)
    return time.perf_counter() - start


def run_transformers(path: Path, w: Workload, batch: int, device, dtype) -> float:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    with torch.no_grad():  # untimed warm-up, as the engine arms get (a cold first generate ran 2.5x slower on a GPU)
        model.generate(input_ids=torch.tensor([w.prompts[0]], device=device), max_new_tokens=8, min_new_tokens=8,
                       do_sample=False, pad_token_id=0)
    elapsed = 0.0
    for i in range(0, len(w.prompts), batch):
        prompts, targets = w.prompts[i:i + batch], w.targets[i:i + batch]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(targets), min_new_tokens=max(targets),
                           do_sample=False, pad_token_id=0)
        sync(device)
        elapsed += time.perf_counter() - start
    return elapsed


def decode_roofline(engine: LLMEngine, tokens: int = 64, repeats: int = 5) -> dict[str, float]:
    """Batch-1 decode tokens/s (median of `repeats` requests of `tokens` tokens: one run of a
    fraction of a second swings by a quarter on a shared VM) against weight bytes / memory bandwidth."""
    model = engine.model
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = memory_bandwidth(model.device)
    engine.add_request("warm", [1, 2, 3, 4], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    runs = []
    for r in range(repeats):
        engine.add_request(f"b1-{r}", [1, 2, 3, 4], SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True))
        engine.step()  # prefill and first token
        sync(model.device)
        start, done = time.perf_counter(), None
        while engine.has_unfinished():
            done = next((o for o in engine.step() if o.finished), done)
        sync(model.device)
        made = len(done.outputs[0].token_ids) - 1 if done is not None else 0  # fewer when max_model_len cuts it
        if made < 1:
            raise ValueError(f"bench engine: the batch-1 probe generated no decode token (max_model_len "
                             f"{engine.config.max_model_len} leaves no room for {tokens} tokens)")
        runs.append(made / (time.perf_counter() - start))
    tps = statistics.median(runs)
    roofline = bandwidth / weight_bytes
    out = {"batch1_tokens_per_s": tps, "batch1_tokens_per_s_per_run": runs, "batch1_decode_tokens": made,
           "roofline_tokens_per_s": roofline,
           "fraction_of_roofline": tps / roofline, "weight_bytes": weight_bytes, "memory_bandwidth_bytes_per_s": bandwidth}
    forward_s = fast_forward_seconds(engine)
    if forward_s is not None:  # how much of a step is the model, how much the engine around it
        out.update(batch1_forward_ms=forward_s * 1e3, forward_fraction_of_roofline=1 / forward_s / roofline,
                   batch1_step_ms=1e3 / tps)
    return out


def fast_forward_seconds(engine: LLMEngine, steps: int = 50) -> float | None:
    """Seconds of one batch-1 decode forward alone through the engine's compiled or captured path
    (`engine/compiled.py`: no scheduling, sampling or host bookkeeping); None when it has none.
    Runs when no request is in flight: its dummy step writes slot 0, so the prefix cache is reset."""
    fast = engine.runner.fast
    if fast is None or engine.has_unfinished():
        return None
    for _ in range(3):
        fast.run_dummy(1)
    device = engine.model.device
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fast.run_dummy(1)
    sync(device)
    engine.reset_prefix_cache()
    return (time.perf_counter() - start) / steps


@dataclass
class EngineBenchConfig:
    model: str | None = None
    """Checkpoint directory (default: a random checkpoint of --preset)."""
    preset: Literal["tiny", "20m", "qwen2.5-0.5b"] = "20m"
    """Shape of the random checkpoint made when no --model is given."""
    num_prompts: int = 128
    """Prompts in the workload."""
    concurrency: int = 64
    """Sequences in flight (the engine's max_num_seqs; transformers' batch size)."""
    median_tokens: int = 48
    """Median response length (log-normal)."""
    max_tokens: int = 384
    """Response length cap."""
    prompt_len: tuple[int, int] = (16, 128)
    """Prompt lengths, drawn uniformly in this range."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Default: float32 on CPU, the checkpoint's on GPU."""
    skip_hf: bool = False
    """No transformers comparison."""
    seed: int = 0
    """Seeds the workload and the random checkpoint."""
    repeats: int = 3
    """Runs per arm, interleaved; medians reported."""
    compile_decode: bool = False
    """The engine's compile_decode (torch.compile of the decode forward, engine/compiled.py)."""
    cuda_graphs: bool = True
    """The engine's cuda_graphs (CUDA: decode captured in CUDA graphs)."""
    eager_arm: bool = False
    """Also run an engine with compile_decode and cuda_graphs off, interleaved in the same run
    (reported under "eager", with the speedup over it)."""
    column_major_weights: bool = True
    """The engine's column_major_weights (CPU: wide weight matrices stored column-major)."""
    split_small_matmuls: bool = True
    """The engine's split_small_matmuls (CPU: products of a few rows split over threads)."""
    cpu_linear_kernel: bool = True
    """The engine's cpu_linear_kernel (CPU, fp32: products of a few rows in C++)."""
    plain_linear_arm: bool = False
    """Also run an engine with column_major_weights, split_small_matmuls and cpu_linear_kernel off, on
    its own copy of the model, interleaved in the same run (reported under "plain_linear", with the
    speedup over it)."""
    split_linear_arm: bool = False
    """Also run an engine with cpu_linear_kernel off (small products split over threads as torch.bmm
    slices instead), on its own copy of the model, interleaved in the same run (reported under
    "split_linear", with the speedup over it)."""
    cpu_decode_kernel: bool = True
    """The engine's cpu_decode_kernel (CPU, fp32: decode attention in C++ over the blocks in place)."""
    gather_attention_arm: bool = False
    """Also run an engine with cpu_decode_kernel off (decode attention gathers, then SDPA), same
    model, interleaved in the same run (reported under "gather_attention", with the speedup over it)."""
    cpu_forward_kernel: bool = True
    """The engine's cpu_forward_kernel (CPU, fp32: decode steps' whole forward in one C++ call)."""
    python_forward_arm: bool = False
    """Also run an engine with cpu_forward_kernel off (every layer's operations from Python), same
    model, interleaved in the same run (reported under "python_forward", with the speedup over it)."""

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
        for name in ("num_prompts", "concurrency", "median_tokens", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if len(self.prompt_len) != 2 or not 1 <= self.prompt_len[0] <= self.prompt_len[1]:
            raise ValueError(f"prompt_len must be two lengths, shortest first, each at least 1; got {list(self.prompt_len)}")


def _engine(lm, c: EngineBenchConfig, compile_decode: bool, cuda_graphs: bool, cpu_linear: bool = True,
            cpu_kernel: bool = True, linear_kernel: bool = True, forward_kernel: bool = True) -> LLMEngine:
    """An engine for the workload, warmed up (compiles and captures happen here, untimed). With a
    second arm on CUDA every engine gets a fixed KV budget, as the first would otherwise take the
    device's free memory. `cpu_linear` (`cpu_kernel`, `linear_kernel`) False turns the CPU weight
    options (the CPU decode attention kernel, the small-product kernel, the C++ forward) off whatever
    `c` says."""
    fixed = lm.device.type == "cuda" and (c.eager_arm or c.plain_linear_arm or c.gather_attention_arm
                                          or c.split_linear_arm or c.python_forward_arm)
    engine = LLMEngine(lm, None, EngineConfig(max_num_seqs=c.concurrency, max_model_len=c.prompt_len[1] + c.max_tokens + 8,
                                              compile_decode=compile_decode, cuda_graphs=cuda_graphs,
                                              column_major_weights=cpu_linear and c.column_major_weights,
                                              split_small_matmuls=cpu_linear and c.split_small_matmuls,
                                              cpu_decode_kernel=cpu_kernel and c.cpu_decode_kernel,
                                              cpu_linear_kernel=cpu_linear and linear_kernel and c.cpu_linear_kernel,
                                              cpu_forward_kernel=forward_kernel and c.cpu_forward_kernel,
                                              kv_cache_memory=4 << 30 if fixed else None))
    run_engine(engine, make_workload(lm.config.vocab_size, c.concurrency, (8, 16), 8, 8, c.seed + 1))  # warm-up
    return engine


def bench_engine(c: EngineBenchConfig) -> dict:
    """Each arm runs `repeats` times, interleaved (engine, transformers, engine, ...) so that a slow
    spell of a shared machine hits both; tokens/s and the ratio use each arm's median time."""
    dev = resolve_device(c.device)
    tmp = None
    model = c.model
    if model is None:
        tmp = tempfile.TemporaryDirectory()
        model = make_checkpoint(Path(tmp.name) / c.preset, **PRESETS[c.preset], seed=c.seed)
    model = Path(model)
    torch_dtype = resolve_dtype(c.dtype, dev, ModelConfig.from_dir(model))
    lm = load_model(model, dev, torch_dtype)
    cfg = lm.config
    w = make_workload(cfg.vocab_size, c.num_prompts, c.prompt_len, c.median_tokens, c.max_tokens, c.seed)
    arms = {"engine": _engine(lm, c, c.compile_decode, c.cuda_graphs)}
    if c.eager_arm:  # the same model: compiling and capturing leave the weights as they are
        arms["eager"] = _engine(lm, c, False, False)
    if c.plain_linear_arm:  # its own copy: layout and linear class belong to the model itself
        arms["plain_linear"] = _engine(load_model(model, dev, torch_dtype), c, c.compile_decode, c.cuda_graphs, False)
    if c.gather_attention_arm:  # the same model: the kernel reads the cache, not the weights
        arms["gather_attention"] = _engine(lm, c, c.compile_decode, c.cuda_graphs, cpu_kernel=False)
    if c.split_linear_arm:  # its own copy: the linear modules' switches are the model's own
        arms["split_linear"] = _engine(load_model(model, dev, torch_dtype), c, c.compile_decode, c.cuda_graphs,
                                       linear_kernel=False)
    if c.python_forward_arm:  # the same model: the C++ forward reads the weights in place
        arms["python_forward"] = _engine(lm, c, c.compile_decode, c.cuda_graphs, forward_kernel=False)
    runs: dict[str, list[float]] = {name: [] for name in arms}
    hf_runs = []
    for _ in range(c.repeats):
        for name, arm in arms.items():
            runs[name].append(run_engine(arm, w))
        if not c.skip_hf:
            hf_runs.append(run_transformers(model, w, c.concurrency, dev, torch_dtype))
    engine, engine_runs = arms["engine"], runs["engine"]
    engine_s = statistics.median(engine_runs)
    flops = workload_flops(cfg, w)
    peak = matmul_peak_flops(dev, torch_dtype)
    result = {
        "device": device_name(dev), "dtype": str(torch_dtype).removeprefix("torch."),
        "model": str(model if tmp is None else c.preset), "params": sum(p.numel() for p in lm.parameters()),
        "num_prompts": c.num_prompts, "concurrency": c.concurrency,
        "output_tokens": w.output_tokens, "output_len_p50": sorted(w.targets)[len(w.targets) // 2],
        "output_len_max": max(w.targets), "engine_seconds": engine_s, "engine_tokens_per_s": w.output_tokens / engine_s,
        "engine_flops_per_s": flops / engine_s, "peak_matmul_flops_per_s": peak,
        "flops_fraction_of_peak": flops / engine_s / peak, "preemptions": engine.stats()["preemptions"],
        "decode_mode": engine.stats().get("decode_mode", "eager"),
        "cpu_decode_kernel": engine.stats()["cpu_decode_kernel"],
        "cpu_linear_kernel": engine.stats()["cpu_linear_kernel"],
        "cpu_forward_kernel": "cpu_forward_steps" in engine.stats(),
        "decode_compile_seconds": engine.stats().get("decode_compile_seconds", 0.0),
    }
    result["engine_seconds_per_repeat"] = engine_runs
    result.update(decode_roofline(engine))
    for name in ("eager", "plain_linear", "gather_attention", "split_linear", "python_forward"):
        if name in arms:
            arm_s = statistics.median(runs[name])
            result[name] = {"engine_seconds": arm_s, "engine_seconds_per_repeat": runs[name],
                            "engine_tokens_per_s": w.output_tokens / arm_s, **decode_roofline(arms[name])}
            result[f"speedup_over_{name}"] = arm_s / engine_s
    if not c.skip_hf:
        hf_s = statistics.median(hf_runs)
        result.update(hf_seconds=hf_s, hf_seconds_per_repeat=hf_runs, hf_tokens_per_s=w.output_tokens / hf_s,
                      ratio=hf_s / engine_s)
    if tmp is not None:
        tmp.cleanup()
    return result
