"""`RemoteBackend`: rollouts on an inference server over HTTP: `reasonrl serve`, SGLang or vLLM.

Each server's routes for generate, resume, abort and weight loading are its dialect (dialects.py);
with reasonrl serve, requests go to the OpenAI-compatible completions route with reasonrl's
extensions (`resume`, `return_token_ids`, `/v1/abort`). An asyncio loop in a thread keeps them all
in flight. After each update the policy is written to `sync_dir` and the server loads it, so the
server must be able to read that directory (same machine or a shared file system).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import queue
import threading
import time
from pathlib import Path

import httpx

from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.sequence import CompletionOutput
from reasonrl.models.loader import save_model
from reasonrl.rollout.backend import Finished, RolloutBackend
from reasonrl.rollout.dialects import DIALECTS

log = logging.getLogger(__name__)
ABORT_RESEND_S = 0.5  # abort_all sends the abort again this often while requests are out
CARRIED = {"temperature", "top_p", "seed", "max_tokens", "stop_token_ids",  # what every dialect sends
           "detokenize", "skip_special_tokens", "logprobs", "speculative"}  # (the server's business, or unused)
DEFAULTS = SamplingParams()


def api_key_from_env(variable: str | None) -> str | None:
    """The key in `variable`, else in REASONRL_API_KEY (a trainer needs the server's admin key to
    push weights and abort, when the server has one)."""
    return (os.environ.get(variable) if variable else None) or os.environ.get("REASONRL_API_KEY") or None


class RemoteBackend(RolloutBackend):
    def __init__(self, base_url: str, sync_dir: str | Path | None = None, tokenizer=None, api_key: str | None = None,
                 timeout: float = 3600.0, engine: str = "reasonrl"):
        """`engine`: the server's kind, `reasonrl`, `sglang` or `vllm` (dialects.py)."""
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.dialect = DIALECTS[engine]()
        self.sync_dir, self.tokenizer = (Path(sync_dir) if sync_dir else None), tokenizer
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.results: queue.Queue = queue.Queue()
        self.in_flight: set[str] = set()
        self.abort_epoch = 0  # bumped by abort_all: samples still waiting out a 429 return unstarted
        try:
            httpx.get(f"{self.base_url}{self.dialect.health}", timeout=10).raise_for_status()
        except httpx.HTTPError as exc:
            raise ConnectionError(f"no {engine} server at {self.base_url}: {exc}") from None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="reasonrl-remote", daemon=True)
        self.thread.start()
        self.client = self._run(self._make_client(timeout))

    async def _make_client(self, timeout: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=self.headers,
                                 limits=httpx.Limits(max_connections=None))

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def _request(self, method: str, route: str, timeout: float, **kwargs) -> httpx.Response:
        r = httpx.request(method, f"{self.base_url}{route}", headers=self.headers, timeout=timeout, **kwargs)
        if r.status_code != 200:
            raise RuntimeError(f"{self.base_url}{route} answered {r.status_code}: {r.text[:300]}")
        return r

    # ---- samples ----------------------------------------------------------------------------
    def submit(self, key, prompt_ids, params, output_ids, output_logprobs) -> None:
        if not isinstance(prompt_ids, list):
            raise ValueError("remote rollouts take text prompts only for now: the completions API has no image "
                             "input (roll out a vision-language policy with the in-process engine)")
        dropped = [f.name for f in dataclasses.fields(params) if f.name not in CARRIED
                   and getattr(params, f.name) != getattr(DEFAULTS, f.name)]
        if dropped:
            raise ValueError(f"remote rollouts carry {', '.join(sorted(CARRIED))} of the sampling parameters; "
                             f"{', '.join(dropped)} would be dropped")
        route, body = self.dialect.generate(key, prompt_ids, params, output_ids, output_logprobs)
        self.in_flight.add(key)
        sample = (list(output_ids), list(output_logprobs), params.seed or 0)
        asyncio.run_coroutine_threadsafe(self._post(key, route, body, sample), self.loop)

    async def _post(self, key: str, route: str, body: dict, sample: tuple[list[int], list[float], int]) -> None:
        """One sample's request; a full server queue (429) is waited out, unless an abort comes
        first, when the sample comes back as it was submitted (finish_reason "abort"), as it does
        when a server answers an aborted request with an error. A server error (5xx) or a dropped
        connection brings it back as submitted with finish_reason "error" (APRIL resubmits it, three
        times at most); any other refusal raises."""
        ids, logprobs, seed = sample
        try:
            epoch = self.abort_epoch
            while (r := await self.client.post(route, json=body)).status_code == 429:
                await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), 30.0))
                if self.abort_epoch != epoch:
                    return self.results.put((key, CompletionOutput(0, ids, logprobs, "", "abort", seed=seed)))
            if r.status_code != 200 and self.abort_epoch != epoch:
                return self.results.put((key, CompletionOutput(0, ids, logprobs, "", "abort", seed=seed)))
            if r.status_code >= 500:  # the server failed this sample: "error", resubmitted by APRIL (april.py)
                log.warning("sample %s: %s answered %d: %s", key, route, r.status_code, r.text[:300])
                return self.results.put((key, CompletionOutput(0, ids, logprobs, "", "error", seed=seed)))
            if r.status_code != 200:
                raise RuntimeError(f"server refused sample {key}: {r.status_code} {r.text[:300]}")
            self.results.put((key, self.dialect.parse(r.json(), ids, logprobs, seed)))
        except httpx.TransportError as exc:  # the connection dropped: the same as a server error
            log.warning("sample %s: %s failed: %s: %s", key, route, type(exc).__name__, exc)
            self.results.put((key, CompletionOutput(0, ids, logprobs, "", "error", seed=seed)))
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
        """Abort every request; each in-flight HTTP response then returns with what it has. The abort is
        sent again every `ABORT_RESEND_S` while requests are out: one whose POST had left but not yet
        reached the server's engine missed the first (it ran to max_tokens, or past the timeout)."""
        if self.in_flight:
            self.abort_epoch += 1
            self._send_abort()
        out, deadline = [], time.monotonic() + timeout
        resend = time.monotonic() + ABORT_RESEND_S
        while self.in_flight and time.monotonic() < deadline:
            out += self.poll(wait=0.1)
            if self.in_flight and time.monotonic() >= resend:
                self._send_abort()
                resend = time.monotonic() + ABORT_RESEND_S
        if self.in_flight:
            raise TimeoutError(f"{len(self.in_flight)} aborted requests did not return within {timeout} s")
        return out

    def _send_abort(self) -> None:
        route, body = self.dialect.abort_all()
        try:
            self._request("POST", route, 30, json=body)
        except httpx.TransportError as exc:  # a server that is down: its requests come back failed on their own
            log.warning("%s: abort not delivered (%s); waiting for its requests to fail", self.base_url, exc)

    @property
    def num_running(self) -> int:
        return len(self.in_flight)

    # ---- weights, counters ------------------------------------------------------------------
    def sync(self, policy, version: int) -> None:
        if self.sync_dir is None:
            raise ValueError("RemoteBackend needs a sync_dir to push weights to the server")
        self.dialect.load_weights(str(self.sync_dir.resolve()), version)  # a server that takes none refuses first
        save_model(policy, self.sync_dir, self.tokenizer)
        self.load(version)

    def load(self, version: int) -> None:
        """Make the server load the weights in `sync_dir` (written by this or another backend)."""
        for route, body in self.dialect.load_weights(str(self.sync_dir.resolve()), version):
            self._request("POST", route, 600, json=body)

    def stats(self) -> dict[str, float]:
        return self._request("GET", self.dialect.stats, 30).json() if self.dialect.stats else {}

    def close(self) -> None:
        self._run(self.client.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
