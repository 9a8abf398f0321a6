"""The kernel agent end to end over HTTP against `reasonrl serve` (in-process, 127.0.0.1) with a
tiny random model: its answers are garbage, and the agent must get through every iteration,
log every call, candidate and verdict, and summarize. (The loop's logic is tested with doubles.)"""

import json
import threading
import time

import uvicorn

from reasonrl.agents.geak import AgentConfig, run_agent
from reasonrl.engine import LLMEngine
from reasonrl.engine.config import EngineConfig
from reasonrl.engine.server import ServeConfig, create_app
from reasonrl.envs.kernels.evaluate import EvaluatorConfig, KernelEvaluator, SandboxLimits
from reasonrl.models import Tokenizer, load_model
from reasonrl.models.tiny import make_checkpoint, make_tokenizer

CORPUS = ["import torch, triton\n@triton.jit\ndef kernel(x_ptr, n, BLOCK: tl.constexpr):\n    pass\n",
          "Add two tensors elementwise. Reverse each row of a 2-D tensor."] * 20


def test_agent_survives_a_garbage_model_over_http(tmp_path):
    # its own checkpoint: the session's hf_checkpoint fixture seeds by creation order, which other tests rely on
    path = make_checkpoint(tmp_path / "tiny", "qwen2", make_tokenizer(CORPUS, vocab_size=300), hidden_size=64,
                           num_layers=2, max_position_embeddings=8192)
    engine = LLMEngine(load_model(path, "cpu"), Tokenizer.from_dir(path),
                       EngineConfig(kv_cache_memory=64 << 20, block_size=16, max_model_len=8192))
    server = uvicorn.Server(uvicorn.Config(create_app(engine, ServeConfig(served_model_name="tiny")),
                                           host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1"
    config = AgentConfig(endpoint=url, model="tiny", out=str(tmp_path / "run"), tasks="vector_add,flip",
                         iterations=2, parallel=2, max_tokens=24, temperature=1.0, one_shot="none",
                         concurrency=4, retries=1, request_timeout=120.0)
    try:
        with KernelEvaluator(EvaluatorConfig(workers=2), SandboxLimits(timeout=20.0)) as evaluator:
            summary = run_agent(config, evaluator=evaluator, progress=False)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    calls = [json.loads(line) for line in (tmp_path / "run" / "calls.jsonl").read_text().splitlines()]
    candidates = [json.loads(line) for line in (tmp_path / "run" / "candidates.jsonl").read_text().splitlines()]
    assert len(calls) == 2 * 2 * 2 * 2  # tasks x trajectories x iterations x (generate, reflect)
    assert all(isinstance(c["text"], str) and c["error"] is None for c in calls)  # the server answered every call
    assert all(isinstance(c["tokens"], int) and c["tokens"] <= 24 for c in calls)
    assert len(candidates) == 8 and all(c["verdict"]["status"] != "passed" for c in candidates)
    assert summary["solved"] == 0 and summary["cost"]["calls"] == 16 and summary["cost"]["unparsable_rate"] == 1.0
    assert (tmp_path / "run" / "summary.md").exists()
