"""Probe (not a benchmark): where a batch-1 decode step goes on a GPU, Qwen2.5-0.5B-shaped bf16 model.

Run on a CUDA machine from the repository root: `OUT=dir PYTHONPATH=. python3 recipes/gpu/probe_decode.py`;
writes probe.json (step and forward-alone milliseconds, CUDA graphs and eager) and the profiler
tables profile_graphs.txt and profile_eager.txt to OUT. Figures in docs/benchmarks.md (GPU section).
"""
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from reasonrl.bench.engine import PRESETS, fast_forward_seconds
from reasonrl.bench.common import sync
from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.models.loader import load_model
from reasonrl.models.tiny import make_checkpoint

out = Path(os.environ.get("OUT", "/tmp"))
tmp = tempfile.mkdtemp()
path = make_checkpoint(Path(tmp) / "m", **PRESETS["qwen2.5-0.5b"], seed=0)
lm = load_model(path, "cuda", torch.bfloat16)
res = {}
for name, kw in (("graphs", {}), ("eager", {"cuda_graphs": False})):
    eng = LLMEngine(lm, None, EngineConfig(max_num_seqs=4, max_model_len=512, kv_cache_memory=1 << 30, **kw))
    eng.add_request("w", [1, 2, 3, 4], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    while eng.has_unfinished():
        eng.step()
    eng.add_request("b", [1, 2, 3, 4], SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
    eng.step()
    for _ in range(5):
        eng.step()
    sync(lm.device)
    t = time.perf_counter()
    for _ in range(40):
        eng.step()
    sync(lm.device)
    step = (time.perf_counter() - t) / 40
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            eng.step()
        sync(lm.device)
    while eng.has_unfinished():
        eng.step()
    fwd = fast_forward_seconds(eng)
    res[name] = {"step_ms": step * 1e3, "forward_ms": fwd and fwd * 1e3}
    (out / f"profile_{name}.txt").write_text(
        prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30) + "\n\n"
        + prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20))
    print(name, res[name], flush=True)
(out / "probe.json").write_text(json.dumps(res, indent=1))
