"""Where rollouts run: the in-process engine, or a `reasonrl serve` endpoint over HTTP.

Both speak the same small protocol to the APRIL manager: `submit` a sample (optionally resumed
from its partial tokens and log-probs), `poll` for finished samples, `abort_all` to stop every
request at once and get back what each one had produced.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import httpx

from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.sequence import CompletionOutput

Finished = tuple[str, CompletionOutput]


class EngineBackend:
    def __init__(self, engine: LLMEngine):
        self.engine = engine

    def submit(self, key: str, prompt_ids: list[int], params: SamplingParams,
               output_ids: list[int], output_logprobs: list[float]) -> None:
        resume = {"output_ids": output_ids, "output_logprobs": output_logprobs} if output_ids else {}
        self.engine.add_request(key, prompt_ids, params, **resume)

    def poll(self) -> list[Finished]:
        return [(o.request_id, o.outputs[0]) for o in self.engine.step() if o.finished]

    def abort_all(self) -> list[Finished]:
        return [(o.request_id, o.outputs[0]) for o in self.engine.abort_all()]

    @property
    def num_running(self) -> int:
        return len(self.engine.scheduler.running)

    @property
    def num_in_flight(self) -> int:
        return len(self.engine.requests)


class RemoteBackend:
    """Requests go to an OpenAI-compatible server with reasonrl's extensions (`resume`,
    `return_token_ids`, `/v1/abort`); an asyncio loop in a thread keeps them all in flight."""

    def __init__(self, base_url: str, timeout: float = 3600.0):
        self.base_url = base_url.rstrip("/")
        self.results: queue.Queue = queue.Queue()
        self.in_flight: set[str] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="reasonrl-remote", daemon=True)
        self.thread.start()
        self.client = self._run(self._make_client(timeout))
        try:
            httpx.get(f"{self.base_url}/health", timeout=10).raise_for_status()
        except httpx.HTTPError as exc:
            raise ConnectionError(f"no reasonrl server at {self.base_url}: {exc}") from None

    async def _make_client(self, timeout: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=timeout, limits=httpx.Limits(max_connections=None))

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def submit(self, key, prompt_ids, params, output_ids, output_logprobs) -> None:
        body = {"prompt": prompt_ids, "max_tokens": params.max_tokens, "temperature": params.temperature,
                "top_p": params.top_p, "seed": params.seed, "logprobs": 0, "return_token_ids": True, "request_id": key,
                "stop_token_ids": params.stop_token_ids}
        if output_ids:
            body["resume"] = {"token_ids": output_ids, "logprobs": output_logprobs}
        self.in_flight.add(key)
        asyncio.run_coroutine_threadsafe(self._post(key, body), self.loop)

    async def _post(self, key: str, body: dict) -> None:
        try:
            r = await self.client.post("/v1/completions", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"server refused sample {key}: {r.status_code} {r.text[:300]}")
            c = r.json()["choices"][0]
            out = CompletionOutput(0, c["token_ids"], c["logprobs"]["token_logprobs"], c["text"], c["finish_reason"],
                                   c.get("stop_reason"), None, c.get("seed") or 0)
            self.results.put((key, out))
        except Exception as exc:  # surfaced in the trainer's thread by poll()
            self.results.put((key, exc))

    def poll(self, wait: float = 0.05) -> list[Finished]:
        items = []
        try:
            items.append(self.results.get(timeout=wait))
            while True:
                items.append(self.results.get_nowait())
        except queue.Empty:
            pass
        finished = []
        for key, out in items:
            self.in_flight.discard(key)
            if isinstance(out, Exception):
                raise out
            finished.append((key, out))
        return finished

    def abort_all(self, timeout: float = 60.0) -> list[Finished]:
        """Abort every request; each in-flight HTTP response then returns with what it has."""
        if self.in_flight:
            httpx.post(f"{self.base_url}/v1/abort", json={"all": True}, timeout=30).raise_for_status()
        out, deadline = [], time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            out += self.poll(wait=0.1)
        if self.in_flight:
            raise TimeoutError(f"{len(self.in_flight)} aborted requests did not return within {timeout} s")
        return out

    @property
    def num_running(self) -> int:
        return len(self.in_flight)

    num_in_flight = num_running

    def load_weights(self, path: str) -> None:
        httpx.post(f"{self.base_url}/v1/load_weights", json={"path": str(path)}, timeout=600).raise_for_status()

    def close(self) -> None:
        self._run(self.client.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
