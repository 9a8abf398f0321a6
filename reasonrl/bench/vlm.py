"""`reasonrl bench vlm`: rollout throughput of the engine on image+text prompts against
transformers' batched `generate`, and the vision tower's images per second in each.

Workload: chat prompts with 1-4 random-noise images of varied sizes and a question, and heavy-tailed
(log-normal) response lengths, as in multimodal RL rollouts. Each request decodes greedily to its
target length (EOS ignored), so both arms produce the same useful tokens. The engine keeps
`concurrency` sequences in flight (vision tower at prefill, batched across the requests admitted
together); transformers is used the way its users batch it: left-padded batches of `concurrency`
prompts with all their images, each batch generating until its longest target. Same checkpoint,
prompts, pixel values, device, dtype and process. The vision-tower figure runs each
implementation's tower alone over every image of the workload, `concurrency` prompts' images per call.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from reasonrl.bench.common import device_name, sync
from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.models.loader import load_model, resolve_device, resolve_dtype
from reasonrl.models.qwen2_5_vl import MultimodalPrompt, VLMConfig, build_prompt
from reasonrl.models.tiny_vlm import make_vlm_checkpoint, make_vlm_tokenizer

PRESETS = {  # random checkpoints of fixed shapes (`tiny_vlm_config` sizes), so figures compare across runs
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, vision_hidden_size=32, vision_depth=2,
                 vision_heads=2),
    "small": dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, vision_hidden_size=128, vision_depth=4,
                  vision_heads=4, fullatt_block_indexes=(1, 3)),
    # the decoder of `bench engine`'s 20m preset (hidden 512, 6 layers, GQA 8/2) with a 4-block tower
    "20m": dict(hidden_size=512, num_layers=6, num_heads=8, num_kv_heads=2, vision_hidden_size=256, vision_depth=4,
                vision_heads=4, fullatt_block_indexes=(1, 3)),
}
CORPUS = ["What is in the picture? Describe the shapes, their colours and where they are.",
          "How many squares are there? Count them and answer with a number.",
          "Compare the images: which one holds more circles?"] * 20


@dataclass
class VLMBenchConfig:
    preset: Literal["tiny", "small", "20m"] = "20m"
    """Shape of the random Qwen2.5-VL checkpoint."""
    num_prompts: int = 64
    """Prompts in the workload."""
    concurrency: int = 32
    """Sequences in flight (the engine's max_num_seqs; transformers' batch size)."""
    max_images: int = 4
    """Images per prompt are drawn uniformly from 1..max_images."""
    image_side: tuple[int, int] = (56, 224)
    """Image height and width, each drawn uniformly in this range (pixels)."""
    median_tokens: int = 48
    """Median response length (log-normal)."""
    max_tokens: int = 256
    """Response length cap."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when available)."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Default: float32 on CPU, the checkpoint's (bfloat16) on GPU."""
    skip_hf: bool = False
    """No transformers comparison."""
    seed: int = 0
    """Seeds the workload and the random checkpoint."""
    repeats: int = 3
    """Runs per arm, interleaved; medians reported."""

    def __post_init__(self):
        for name in ("num_prompts", "concurrency", "max_images", "median_tokens", "max_tokens", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 28 <= self.image_side[0] <= self.image_side[1]:
            raise ValueError(f"image_side must be (low, high) with 28 <= low <= high, got {self.image_side}")


@dataclass
class Workload:
    prompts: list[MultimodalPrompt]
    targets: list[int]

    @property
    def output_tokens(self) -> int:
        return sum(self.targets)

    @property
    def num_images(self) -> int:
        return sum(p.num_images for p in self.prompts)


def make_workload(tokenizer, model, c: VLMBenchConfig) -> Workload:
    rng = np.random.default_rng(c.seed)
    prompts = []
    for i in range(c.num_prompts):
        sizes = [rng.integers(*c.image_side, 2, endpoint=True) for _ in range(int(rng.integers(1, c.max_images, endpoint=True)))]
        parts = [{"type": "image", "image": Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))} for h, w in sizes]
        parts.append({"type": "text", "text": CORPUS[i % 3]})
        prompts.append(build_prompt(tokenizer, [{"role": "user", "content": parts}], model.vlm_config, model.image_config))
    # log-normal with sigma 1: p99 is ~10x the median, the long tail of reasoning rollouts
    targets = np.exp(math.log(c.median_tokens) + rng.standard_normal(c.num_prompts)).round().clip(4, c.max_tokens)
    return Workload(prompts, [int(t) for t in targets])


def run_engine(engine: LLMEngine, w: Workload) -> float:
    engine.reset_prefix_cache()  # a repeat must prefill (and encode) again, as transformers does
    for i, (p, t) in enumerate(zip(w.prompts, w.targets)):
        engine.add_request(f"b{i}", p, SamplingParams(temperature=0, max_tokens=t, ignore_eos=True))
    sync(engine.model.device)
    start = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    sync(engine.model.device)
    return time.perf_counter() - start


def _batches(w: Workload, size: int):
    for i in range(0, len(w.prompts), size):
        yield w.prompts[i:i + size], w.targets[i:i + size]


def run_transformers(hf, w: Workload, batch: int, device, dtype) -> float:
    elapsed = 0.0
    for prompts, targets in _batches(w, batch):
        width = max(len(p.input_ids) for p in prompts)
        ids = torch.tensor([[0] * (width - len(p.input_ids)) + p.input_ids for p in prompts], device=device)  # left padding
        mask = torch.tensor([[0] * (width - len(p.input_ids)) + [1] * len(p.input_ids) for p in prompts], device=device)
        pixels = torch.cat([p.pixel_values for p in prompts]).to(device, dtype)
        grid = torch.cat([p.image_grid_thw for p in prompts]).to(device)
        sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            hf.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid,
                        mm_token_type_ids=(ids == hf.config.image_token_id).int(), max_new_tokens=max(targets),
                        min_new_tokens=max(targets), do_sample=False, pad_token_id=0)
        sync(device)
        elapsed += time.perf_counter() - start
    return elapsed


@torch.no_grad()
def tower_images_per_s(encode, w: Workload, batch: int, device, dtype) -> float:
    """Images per second of `encode(pixel_values, grid)`, `batch` prompts' images per call."""
    calls = [(torch.cat([p.pixel_values for p in ps]).to(device, dtype), torch.cat([p.image_grid_thw for p in ps]).to(device))
             for ps, _ in _batches(w, batch)]
    encode(*calls[0])  # warm-up
    sync(device)
    start = time.perf_counter()
    for pixels, grid in calls:
        encode(pixels, grid)
    sync(device)
    return w.num_images / (time.perf_counter() - start)


def bench_vlm(c: VLMBenchConfig) -> dict:
    """Each arm runs `repeats` times, interleaved (engine, transformers, engine, ...) so that a slow
    spell of a shared machine hits both; tokens/s and the ratio use each arm's median time."""
    dev = resolve_device(c.device)
    with tempfile.TemporaryDirectory() as tmp:
        tok = make_vlm_tokenizer(CORPUS, vocab_size=512)
        path = make_vlm_checkpoint(Path(tmp) / c.preset, tok, seed=c.seed, std=0.05, **PRESETS[c.preset])
        dtype = resolve_dtype(c.dtype, dev, VLMConfig.from_dir(path).text)
        model = load_model(path, dev, dtype)
        w = make_workload(tok, model, c)
        longest = max(len(p.input_ids) for p in w.prompts)
        engine = LLMEngine(model, tok, EngineConfig(max_num_seqs=c.concurrency, max_model_len=longest + c.max_tokens + 8))
        run_engine(engine, Workload(w.prompts[:2], [4, 4]))  # warm-up
        warm_batches = engine.stats()["image_encode_batches"]
        hf = None if c.skip_hf else _transformers(path, dev, dtype)
        engine_runs, hf_runs = [], []
        for _ in range(c.repeats):
            engine_runs.append(run_engine(engine, w))
            if hf is not None:
                hf_runs.append(run_transformers(hf, w, c.concurrency, dev, dtype))
    engine_s = statistics.median(engine_runs)
    result = {
        "device": device_name(dev), "dtype": str(dtype).removeprefix("torch."), "preset": c.preset,
        "params": sum(p.numel() for p in model.parameters()),
        "vision_params": sum(p.numel() for p in model.visual.parameters()),
        "num_prompts": c.num_prompts, "num_images": w.num_images, "concurrency": c.concurrency,
        "image_tokens": sum(len(p.image_rows) for p in w.prompts), "prompt_tokens": sum(len(p.input_ids) for p in w.prompts),
        "output_tokens": w.output_tokens, "output_len_p50": sorted(w.targets)[len(w.targets) // 2],
        "output_len_max": max(w.targets), "engine_seconds": engine_s, "engine_seconds_per_repeat": engine_runs,
        "engine_tokens_per_s": w.output_tokens / engine_s, "preemptions": engine.stats()["preemptions"],
        "engine_vision_batches_per_run": (engine.stats()["image_encode_batches"] - warm_batches) / c.repeats,
        "tower_images_per_s": tower_images_per_s(model.encode_images, w, c.concurrency, dev, dtype),
    }
    if hf is not None:
        hf_s = statistics.median(hf_runs)
        result.update(hf_seconds=hf_s, hf_seconds_per_repeat=hf_runs, hf_tokens_per_s=w.output_tokens / hf_s,
                      ratio=hf_s / engine_s,
                      hf_tower_images_per_s=tower_images_per_s(lambda p, g: hf.model.visual(p, grid_thw=g), w,
                                                               c.concurrency, dev, dtype))
    return result


def _transformers(path: Path, device, dtype):
    import transformers

    return transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
