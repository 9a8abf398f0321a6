"""`reasonrl bench serve`: the server's throughput and latency under a concurrent load, clean and
with bad requests mixed in, in one run (issue 14: at least 0.95x the clean throughput, and no good
request fails).

A server runs in this process (uvicorn on 127.0.0.1, a free port) over a small model (the demo
policy by default). `concurrency` client connections keep requests in flight. Good requests are
streamed chat completions, greedy with a fixed length (EOS ignored), so both arms make exactly the
same tokens and every good output can be compared between the arms. The mixed arm sends the same
good requests plus bad ones (`bad_fraction` of all its requests, interleaved): out-of-range
numbers, malformed and non-finite JSON, lone surrogates, deep nesting, unknown token ids, a text
longer than the context, coercions. A warm-up pass of the good requests comes first, so every arm
finds the same prompts in the prefix cache. The arms alternate `rounds` times so a slow spell of a
shared machine hits both; throughput is good output tokens over wall time, summed over rounds.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from reasonrl.bench.common import device_name
from reasonrl.config import positive_ints

BAD_BODIES: list[bytes] = [
    b'{"messages": [{"role": "user", "content": "hi"}], "seed": 18446744073709551616}',
    b'{"messages": [{"role": "user", "content": "hi"}], "top_k": 9223372036854775808}',
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e-30}',
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
    b'{"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": {"add_generation_prompt": 1}}',
    b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"messages": [{"role": "user", "content": "' + b"x" * 200_000 + b'"}]}',
    b"{not json",
]


@dataclass
class ServeBenchConfig:
    model: str | None = None
    """Checkpoint directory to serve; None: the demo policy (reasonrl/demo/policy)."""
    num_requests: int = 128
    """Good requests per arm and round."""
    concurrency: int = 32
    """Client connections keeping requests in flight."""
    bad_fraction: float = 0.1
    """Share of the mixed arm's requests that are bad."""
    max_tokens: int = 32
    """Tokens each good request generates (greedy, EOS ignored)."""
    rounds: int = 2
    """Clean and mixed arms alternate this many times."""
    max_num_seqs: int = 64
    """The engine's batch size."""
    device: str | None = None
    """Engine device; None: CUDA if available, else CPU."""

    def __post_init__(self):
        positive_ints(self, ("num_requests", "concurrency", "max_tokens", "rounds", "max_num_seqs"), "bench serve: ")
        if not 0 <= self.bad_fraction < 1:
            raise ValueError(f"bench serve: bad_fraction must be in [0, 1), got {self.bad_fraction!r}")


def bench_serve(cfg: ServeBenchConfig) -> dict:
    from reasonrl.engine import LLMEngine
    from reasonrl.engine.server import ServeConfig, create_app

    path = Path(cfg.model) if cfg.model else Path(__file__).resolve().parent.parent / "demo" / "policy"
    engine = LLMEngine.from_pretrained(path, device=cfg.device, max_num_seqs=cfg.max_num_seqs)
    app = create_app(engine, ServeConfig(served_model_name="bench", max_waiting_sequences=None))
    server, thread, url = _start(app)
    try:
        good = [_chat_body(i, cfg.max_tokens) for i in range(cfg.num_requests)]
        num_bad = round(cfg.num_requests * cfg.bad_fraction / (1 - cfg.bad_fraction))
        asyncio.run(_load(url, good, [], cfg.concurrency))  # warm-up: every arm finds the same prefix cache
        arms = {"clean": [], "mixed": []}
        for _ in range(cfg.rounds):
            arms["clean"].append(asyncio.run(_load(url, good, [], cfg.concurrency)))
            arms["mixed"].append(asyncio.run(_load(url, good, _bad(num_bad), cfg.concurrency)))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    result = {"device": device_name(engine.model.device), "model": str(path), "config": asdict(cfg),
              "bad_requests_per_round": num_bad, **{arm: _summary(runs) for arm, runs in arms.items()}}
    clean_outputs = arms["clean"][0]["outputs"]
    result["outputs_identical"] = all(run["outputs"] == clean_outputs for runs in arms.values() for run in runs)
    result["throughput_ratio"] = result["mixed"]["tokens_per_s"] / result["clean"]["tokens_per_s"]
    result["failed_good_requests"] = result["clean"]["failed_good"] + result["mixed"]["failed_good"]
    result["meets_target"] = (result["throughput_ratio"] >= 0.95 and result["failed_good_requests"] == 0
                              and result["mixed"]["bad_not_4xx"] == 0 and result["outputs_identical"])
    return result


def _chat_body(i: int, max_tokens: int) -> dict:
    question = f"What is {i % 50} + {(7 * i) % 50}?"
    return {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}, "return_token_ids": True}


def _bad(n: int) -> list[bytes]:
    return [BAD_BODIES[i % len(BAD_BODIES)] for i in range(n)]


def _start(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


async def _load(url: str, good: list[dict], bad: list[bytes], concurrency: int) -> dict:
    """Sends every request (bad ones spread evenly among the good) over `concurrency` connections."""
    jobs: list[tuple[int, dict | bytes]] = [(i, body) for i, body in enumerate(good)]
    for k, body in enumerate(bad):
        jobs.insert((k + 1) * len(jobs) // (len(bad) + 1), (-1, body))
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    run = {"outputs": [None] * len(good), "ttft": [], "latency": [], "tokens": 0, "failed_good": 0, "bad_not_4xx": 0}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(_worker(client, queue, run) for _ in range(concurrency)))
        run["seconds"] = time.perf_counter() - start
    return run


async def _worker(client: httpx.AsyncClient, queue: asyncio.Queue, run: dict) -> None:
    while not queue.empty():
        index, body = queue.get_nowait()
        if index < 0:
            r = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
            run["bad_not_4xx"] += not 400 <= r.status_code < 500
            continue
        await _good(client, index, body, run)


async def _good(client: httpx.AsyncClient, index: int, body: dict, run: dict) -> None:
    start, first, tokens = time.perf_counter(), None, []
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                run["failed_good"] += 1
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    run["failed_good"] += 1
                    return
                for choice in chunk["choices"]:
                    first = first or time.perf_counter()
                    tokens += choice.get("token_ids", [])
    except httpx.HTTPError:
        run["failed_good"] += 1
        return
    end = time.perf_counter()
    run["outputs"][index] = tokens
    run["tokens"] += len(tokens)
    run["ttft"].append(first - start)
    run["latency"].append(end - start)


def _summary(runs: list[dict]) -> dict:
    seconds = sum(r["seconds"] for r in runs)
    ttft = sorted(x for r in runs for x in r["ttft"])
    latency = sorted(x for r in runs for x in r["latency"])
    return {"tokens_per_s": sum(r["tokens"] for r in runs) / seconds, "seconds_per_round": [r["seconds"] for r in runs],
            "good_requests": sum(len(r["latency"]) for r in runs), "failed_good": sum(r["failed_good"] for r in runs),
            "bad_not_4xx": sum(r["bad_not_4xx"] for r in runs),
            "ttft_s": _percentiles(ttft), "latency_s": _percentiles(latency)}


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {"p50": q[49], "p90": q[89], "p99": q[98], "mean": statistics.fmean(values)}
