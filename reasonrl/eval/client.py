"""Samples from any OpenAI-compatible endpoint (vLLM, SGLang, `reasonrl serve`, hosted APIs).

One request per sample (n=1, with the sample's seed), at most `concurrency` in flight, from an
asyncio loop in a background thread; the harness reads finished samples in batches.

Failures (model output is untrusted, and so is the network):
- 5xx, 408, 429, timeouts and broken connections are retried `retries` times with exponential
  backoff and jitter: wait `uniform(d/2, d)` with `d = min(max_backoff, backoff * 2**attempt)`,
  or the server's Retry-After when it gives one (capped the same way).
- Any other 4xx is not retried. 400, 413 and 422 are *refusals* (`Failure.rejected`): the request
  itself is wrong (a prompt too long, a bad parameter). The rest (401, 402, 403, 404...) say
  something about the endpoint (a revoked key, credits run out, a model unloaded behind a proxy):
  failures like a 5xx's, never taken for the request's own fault.
- A sample that still fails becomes a `Failure`: it is not recorded, so a rerun asks again.
- A dead endpoint is one error, not one per sample: `probe()` raises `EndpointError` naming the
  URL when GET /models cannot connect; during the run, when `max(8, concurrency)` samples in a
  row have failed (samples go sample-major, so these are different problems: not one bad
  prompt), the run stops with an `EndpointError` naming the URL and the last failure. A refusal
  breaks the row: the server read the request and answered, so it is alive (a run of prompts
  too long for its context is not a dead endpoint, and a rerun asks for the same ones again).
- A server that refused at least `max(8, concurrency)` requests and answered none is likely wrong
  itself (a context shorter than every prompt plus max_tokens): `RefusedAll`, an EndpointError,
  once every request is done, so that its refusals are not taken for the requests' fault. A
  caller holding answers given under the same settings before knows better and may go on.
- A run with fewer failures ends normally and the harness reports them (IncompleteEval).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence
from urllib.parse import urlsplit

import httpx

from .jobs import Completion, Failure, Job, openai_messages, render_text

log = logging.getLogger(__name__)

Result = tuple[Job, Completion | Failure]
CONNECTIONS_PER_POOL = 16
_DONE = object()


REFUSALS = (400, 413, 422)
"""HTTP statuses that refuse the request for its content (too long, malformed): the same request
always gets the same answer, so it is the request's failure, not the endpoint's."""


class EndpointError(ConnectionError):
    """The endpoint cannot be used at all (unreachable, refusing the key, failing every request)."""


class RefusedAll(EndpointError):
    """The endpoint refused every request of a run (at least the trip count) and answered none."""


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    model: str
    api_key: str | None = None
    chat: bool = True  # POST /chat/completions with the messages; else /completions with their text
    concurrency: int = 16  # requests in flight at most
    retries: int = 5  # further attempts after a retryable failure
    backoff: float = 0.5  # seconds before the first retry; doubles per attempt
    max_backoff: float = 30.0
    timeout: float = 3600.0  # seconds per request (a long reasoning trace takes minutes)
    probe_timeout: float = 10.0  # seconds for GET /models, and to connect

    def __post_init__(self):
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {self.concurrency!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {self.retries!r}")
        if not (self.backoff >= 0 and self.max_backoff >= 0 and self.timeout > 0 and self.probe_timeout > 0):
            raise ValueError("backoff and max_backoff must be >= 0, timeout and probe_timeout > 0")


def api_root(base_url: str) -> str:
    """`http://host:8000` -> `http://host:8000/v1`; a URL with a path is used as given."""
    url = base_url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
    return url if parts.path else url + "/v1"


class OpenAIClient:
    def __init__(self, config: ClientConfig, max_tokens: int, temperature: float, top_p: float,
                 extra_body: dict | None = None):
        self.config = config
        self.root = api_root(config.base_url)
        # extra_body: server-specific request fields (e.g. vLLM's reasoning_effort), sent as they are
        self.sampling = {**(extra_body or {}), "max_tokens": max_tokens, "temperature": float(temperature),
                         "top_p": float(top_p)}
        self.headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}

    # --- before the run ------------------------------------------------------------------

    def probe(self) -> None:
        """Fail fast, with one line naming the URL, if the endpoint is down or refuses us."""
        url = f"{self.root}/models"
        try:
            r = httpx.get(url, headers=self.headers, timeout=self.config.probe_timeout)
        except httpx.TransportError as exc:
            raise EndpointError(f"cannot reach the endpoint {self.root}: {_describe(exc)}") from None
        if r.status_code in (401, 403):
            raise EndpointError(f"the endpoint {self.root} refused the API key (HTTP {r.status_code}): "
                                f"{_error_text(r)}")
        if r.status_code != 200:  # some gateways have no /models; the requests themselves will tell
            log.info("GET %s answered HTTP %d; going on without checking the model name", url, r.status_code)
            return
        try:
            served = [m["id"] for m in r.json()["data"]]
        except (ValueError, KeyError, TypeError):
            return
        if served and self.config.model not in served:
            raise ValueError(f"the endpoint {self.root} does not serve model {self.config.model!r}; "
                             f"it serves: {', '.join(map(str, served[:20]))}")

    # --- the run -------------------------------------------------------------------------

    def generate(self, jobs: Sequence[Job], wait: float = 0.5) -> Iterator[list[Result]]:
        """Finished samples in batches as they arrive (an empty batch every `wait` s of quiet).

        Raises EndpointError when `max(8, concurrency)` samples in a row failed other than by a
        refusal (samples finished before that are yielded first), or after the last batch when at
        least that many were refused and none answered. Closing the iterator cancels the rest."""
        results: queue.Queue = queue.Queue()
        loop = asyncio.new_event_loop()
        task = loop.create_task(self._run(list(jobs), results))
        thread = threading.Thread(target=_run_loop, args=(loop, task, results), name="reasonrl-eval-client",
                                  daemon=True)
        thread.start()
        trip_after = max(8, self.config.concurrency)
        failed_in_a_row, answered, refused, finished = 0, 0, 0, False
        try:
            while not finished:
                batch, finished = _drain(results, wait)
                for _, out in batch:
                    failed = isinstance(out, Failure)
                    answered += not failed  # a completion, or a subclass's result (an embedding)
                    if failed and out.rejected:
                        refused, last_refusal = refused + 1, out.error
                    failed_in_a_row = failed_in_a_row + 1 if failed and not out.rejected else 0
                    if failed_in_a_row >= trip_after:
                        last = out.error
                        _cancel(loop, task)
                        thread.join()
                        rest, _ = _drain(results, 0)
                        yield batch + rest
                        raise EndpointError(f"the endpoint {self.root} failed the last {failed_in_a_row} requests "
                                            f"in a row; the last error: {last}")
                yield batch
            if refused >= trip_after and not answered:
                raise RefusedAll(f"the endpoint {self.root} refused all {refused} requests and answered none (is its "
                                 "context too short for the prompt plus max_tokens?); the last refusal: "
                                 f"{last_refusal}")
        finally:
            if thread.is_alive():
                _cancel(loop, task)
                thread.join()

    async def _run(self, jobs: list[Job], results: queue.Queue) -> None:
        pending = iter(jobs)  # shared by the workers: each job is taken once
        workers = min(self.config.concurrency, len(jobs))
        # One httpx pool slows down past a few dozen connections (encode/httpx#3215: 64 requests in
        # flight through one pool took 4x as long as through four pools of 16), so shard the pool.
        shards = -(-workers // CONNECTIONS_PER_POOL)
        limits = httpx.Limits(max_connections=CONNECTIONS_PER_POOL, max_keepalive_connections=CONNECTIONS_PER_POOL)
        timeout = httpx.Timeout(self.config.timeout, connect=self.config.probe_timeout)
        pools = [httpx.AsyncClient(headers=self.headers, timeout=timeout, limits=limits) for _ in range(shards)]

        async def worker(http: httpx.AsyncClient):
            for job in pending:
                results.put((job, await self._request(http, job)))

        try:
            await asyncio.gather(*(worker(pools[i % shards]) for i in range(workers)))
        finally:
            for pool in pools:
                await pool.aclose()

    async def _request(self, http: httpx.AsyncClient, job: Job) -> Completion | Failure:
        url, body = self._body(job)
        for attempt in range(self.config.retries + 1):
            retry_after = None
            try:
                r = await http.post(url, json=body)
            except httpx.TransportError as exc:  # timeouts, refused or reset connections
                error = _describe(exc)
            else:
                if r.status_code == 200:
                    return self._parse(r)
                error = f"HTTP {r.status_code}: {_error_text(r)}"
                if r.status_code in REFUSALS:
                    return Failure(error, rejected=True)  # the request is wrong: asking again gives the same answer
                if r.status_code < 500 and r.status_code not in (408, 429):
                    return Failure(error)  # the endpoint's (its key, credits, models): not retried, not recorded
                retry_after = _retry_after(r)
            if attempt < self.config.retries:
                await asyncio.sleep(self._delay(attempt, retry_after))
        return Failure(error)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = self.config.max_backoff
        if retry_after is not None:
            return min(retry_after, cap)
        d = min(cap, self.config.backoff * 2 ** attempt)
        return random.uniform(d / 2, d)  # jitter: clients that failed together do not retry together

    def _body(self, job: Job) -> tuple[str, dict]:
        body = {"model": self.config.model, **self.sampling, "seed": job.seed}
        if self.config.chat:
            return f"{self.root}/chat/completions", {**body, "messages": openai_messages(job.prompt.messages)}
        return f"{self.root}/completions", {**body, "prompt": render_text(job.prompt.messages)}

    def _parse(self, r: httpx.Response) -> Completion | Failure:
        try:
            data = r.json()
            choice = data["choices"][0]
            if self.config.chat:
                message = choice["message"]
                text = message.get("content") or ""
                # vLLM's old field or its new one; a proxy may send both, one of them null
                reasoning = message.get("reasoning_content") or message.get("reasoning")
            else:
                text, reasoning = choice["text"] or "", None
            if isinstance(reasoning, str) and reasoning and isinstance(text, str):
                text = f"<think>{reasoning}</think>{text}"  # what a server's reasoning parser split off, put back
            usage = data.get("usage") or {}
            tokens, prompt_tokens = usage.get("completion_tokens"), usage.get("prompt_tokens")
            if not isinstance(text, str):
                raise TypeError("the response text is not a string")
            return Completion(text, tokens if isinstance(tokens, int) else None, choice.get("finish_reason"),
                              prompt_tokens if isinstance(prompt_tokens, int) else None)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            return Failure(f"malformed response ({exc!r}): {r.text[:200]}")


def _cancel(loop: asyncio.AbstractEventLoop, task: asyncio.Task) -> None:
    """Cancel `task` from another thread; a loop that already finished (and closed) has nothing to cancel."""
    try:
        loop.call_soon_threadsafe(task.cancel)
    except RuntimeError:  # "Event loop is closed": every job had already finished
        pass


def _run_loop(loop: asyncio.AbstractEventLoop, task: asyncio.Task, results: queue.Queue) -> None:
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    except Exception as exc:  # a bug here must surface in the caller, not hang it
        results.put((None, exc))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        results.put(_DONE)


def _drain(results: queue.Queue, wait: float) -> tuple[list[Result], bool]:
    """What is in the queue now (waiting up to `wait` s for the first item), and whether it ended."""
    batch = []
    try:
        item = results.get(timeout=wait) if wait else results.get_nowait()
        while True:
            if item is _DONE:
                return batch, True
            if item[0] is None:
                raise item[1]
            batch.append(item)
            item = results.get_nowait()
    except queue.Empty:
        return batch, False


def _describe(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"connection refused or failed ({exc})" if str(exc) else "connection refused or failed"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_text(r: httpx.Response) -> str:
    try:
        message = r.json()["error"]["message"]
        if isinstance(message, str):
            return message[:300]
    except (ValueError, KeyError, TypeError):
        pass
    return r.text[:300] or r.reason_phrase


def _retry_after(r: httpx.Response) -> float | None:
    try:
        value = float(r.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if value >= 0 else None
