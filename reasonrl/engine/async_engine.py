"""`AsyncEngine`: the engine stepping in a background thread, driven from asyncio.

The server's handlers submit, abort and await requests from the event loop; one thread owns the
`LLMEngine` and runs `step()` whenever there is work. Commands cross over through a queue and are
applied between steps, so an abort takes effect before the next step (no polling interval), and a
request that finished in the step before an abort is delivered as finished, never lost.

The thread never dies of one bad step. A request that fails inside a step is failed alone by the
engine (isolation.py) and delivered with `error` set. An exception that escapes `step()` (not
attributable to a request) fails every request in flight, frees their blocks and goes on; if the
blocks cannot all be recovered the engine is marked broken and refuses work. `health()` says
whether it can serve: broken, stalled in one step, or failing every step it runs is not.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.sequence import RequestOutput

log = logging.getLogger(__name__)
FAILED_STEPS_UNHEALTHY = 3  # consecutive steps that failed requests and produced no token


class QueueFull(Exception):
    """The waiting queue cannot take the request's sequences now; try again later."""


class EngineUnavailable(Exception):
    """The engine is broken and serves nothing."""


class Observer(Protocol):
    """Told about each request's timing (e.g. metrics); called from the engine thread."""

    def first_token(self, seconds: float) -> None: ...

    def finished(self, out: RequestOutput, seconds: float, first_token_seconds: float | None,
                 new_tokens: int) -> None:
        """`new_tokens`: the most tokens one of its samples generated here (a resumed request's given
        tokens are not)."""


@dataclass
class _Stream:
    """The outputs of the requests submitted with it, for one reader. A request's output holds all of
    its tokens so far, so one the reader has not taken yet is replaced by the next instead of queued
    behind it: a reader that stops reading (a streaming client whose socket is full) holds one output
    per request, not one per step (each a copy of everything so far: memory quadratic in the length)."""
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)  # request ids, in arrival order, or exceptions
    unread: dict[str, RequestOutput] = field(default_factory=dict)  # each request's latest output not yet read

    def put(self, item) -> None:
        """From the engine thread: an output, or an exception for the reader."""
        self.loop.call_soon_threadsafe(self._put, item)

    def _put(self, item) -> None:  # on the event loop
        if isinstance(item, RequestOutput):
            queued = item.request_id in self.unread
            self.unread[item.request_id] = item
            if queued:
                return
            item = item.request_id
        self.queue.put_nowait(item)

    async def get(self) -> RequestOutput | BaseException:
        item = await self.queue.get()
        return self.unread.pop(item) if isinstance(item, str) else item


@dataclass
class _Timing:
    arrival: float
    first_token: float | None = None
    resumed: int = 0  # tokens a resumed request arrived with


class AsyncEngine:
    def __init__(self, engine: LLMEngine, max_waiting: int | None = None, stall_seconds: float = 60.0,
                 observer: Observer | None = None):
        """`max_waiting`: sequences the waiting queue holds at most (None: no bound); a request that
        would overflow it gets `QueueFull`. `stall_seconds`: a step running longer makes `health()` fail."""
        self.engine, self.max_waiting, self.stall_seconds, self.observer = engine, max_waiting, stall_seconds, observer
        self.commands: queue.Queue = queue.Queue()
        self.streams: dict[str, _Stream] = {}
        self.timing: dict[str, _Timing] = {}
        self.awaiting_first: dict[str, _Timing] = {}  # requests without a new token yet
        self.error: BaseException | None = None  # set when the engine is broken for good
        self.failed_steps = 0
        self.beat = time.monotonic()  # the engine thread's last pass through its loop
        self.snapshot: dict = engine.stats()  # engine.stats() after the last step, read without locking
        self.rate_window: deque[tuple[float, int]] = deque(maxlen=64)
        self.thread = threading.Thread(target=self._loop, name="reasonrl-engine", daemon=True)
        self.stopped = threading.Event()
        self.thread.start()

    # ---- called from the event loop ---------------------------------------------------------
    def new_stream(self) -> _Stream:
        """A queue that receives the outputs of the requests submitted with it."""
        return _Stream(asyncio.get_running_loop())

    async def submit(self, stream: _Stream, requests: list[tuple[str, list[int], SamplingParams]],
                     every_step: bool = False, **resume) -> None:
        """Add requests (request id, prompt ids, params), all or none: ValueError for a bad one,
        QueueFull when the waiting queue cannot take them all. Their outputs go to `stream` (every
        step when `every_step`, else only the final one)."""
        await self._call(stream.loop, "add", requests, every_step, stream, resume)

    @staticmethod
    async def next_output(stream: _Stream) -> RequestOutput:
        out = await stream.get()
        if isinstance(out, BaseException):
            raise out
        return out

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                       every_step: bool = False, **resume) -> AsyncIterator[RequestOutput]:
        """One request's outputs until it ends."""
        stream = self.new_stream()
        await self.submit(stream, [(request_id, prompt_ids, params)], every_step, **resume)
        while True:
            out = await self.next_output(stream)
            yield out
            if out.finished:
                return

    def abort_nowait(self, request_id: str) -> None:
        """Abort without waiting (safe from a cancelled task, e.g. a client that disconnected)."""
        self.commands.put((None, None, ("abort", request_id)))

    async def abort(self, request_id: str) -> RequestOutput | None:
        return await self._call(asyncio.get_running_loop(), "abort", request_id)

    async def abort_all(self) -> list[RequestOutput]:
        return await self._call(asyncio.get_running_loop(), "abort_all")

    async def load_weights(self, path: str) -> None:
        await self._call(asyncio.get_running_loop(), "load_weights", path)

    async def stats(self) -> dict:
        return await self._call(asyncio.get_running_loop(), "stats")

    def health(self) -> tuple[bool, str]:
        """(whether the engine can serve, why not)."""
        if self.error is not None or not self.thread.is_alive():
            return False, self._why_unavailable()
        stalled = time.monotonic() - self.beat
        if stalled > self.stall_seconds and self.engine.has_unfinished():  # (an idle loop beats every 0.1 s)
            return False, f"the engine has been stuck in one step for {stalled:.0f} s"
        if self.failed_steps >= FAILED_STEPS_UNHEALTHY:
            return False, f"the last {self.failed_steps} engine steps failed every request they ran"
        return True, "ok"

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last few seconds."""
        window = list(self.rate_window)
        if len(window) < 2 or window[-1][0] <= window[0][0]:
            return 0.0
        return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])

    async def _call(self, loop, *command):
        if self.error is not None or not self.thread.is_alive():
            raise EngineUnavailable(self._why_unavailable())
        future = loop.create_future()
        self.commands.put((future, loop, command))
        return await future

    def shutdown(self) -> None:
        """Stop the engine thread; requests still in flight and commands not yet applied fail with
        `EngineUnavailable` (their awaiters are released, never left waiting)."""
        self.stopped.set()
        self.commands.put(None)
        self.thread.join(timeout=10)
        self._fail_commands()  # any that arrived while the thread was ending

    # ---- the engine thread ------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self.stopped.is_set():
                self.beat = time.monotonic()
                try:
                    self._apply_commands(block=not self.engine.has_unfinished())
                    if self.engine.has_unfinished():
                        before = self.engine.num_generated_tokens
                        outputs = self.engine.step()
                        self._after_step(outputs, produced=self.engine.num_generated_tokens > before)
                    self._publish()
                except Exception as exc:  # not one request's fault: fail them all, keep serving
                    self._recover(exc)
        except BaseException as exc:  # the thread is ending: fail every waiter, do not hang them
            log.exception("engine thread died")
            self.error = exc
            self._fail_streams(f"the engine thread died: {exc!r}")
            self._fail_commands()
            return
        self.error = EngineUnavailable("the engine was shut down")
        self._fail_streams("the engine was shut down", EngineUnavailable)
        self._fail_commands()

    def _fail_commands(self) -> None:
        """Settle every command still queued with the reason the engine serves no more."""
        while True:
            try:
                item = self.commands.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[0] is not None:
                future, loop, _ = item
                loop.call_soon_threadsafe(_settle, future, None, EngineUnavailable(self._why_unavailable()))

    def _why_unavailable(self) -> str:
        if isinstance(self.error, EngineUnavailable):  # shut down
            return str(self.error)
        return f"the engine is broken: {self.error!r}"

    def _apply_commands(self, block: bool) -> None:
        while True:
            try:
                item = self.commands.get(block=block, timeout=0.1 if block else None)
            except queue.Empty:
                return
            if item is None:
                return
            future, loop, (name, *args) = item
            try:
                result, exc = getattr(self, f"_do_{name}")(*args), None
            except Exception as e:
                result, exc = None, e
            if future is not None:
                loop.call_soon_threadsafe(_settle, future, result, exc)
            block = False

    def _do_add(self, requests, every_step, s: _Stream, resume):
        new = sum(params.n for _, _, params in requests)
        waiting = int(self.engine.stats()["waiting"])
        if self.max_waiting is not None and waiting + new > self.max_waiting:
            raise QueueFull(f"the waiting queue holds {waiting} sequences; {new} more would pass its bound "
                            f"of {self.max_waiting}")
        added = []
        try:
            for rid, prompt_ids, params in requests:
                self.engine.add_request(rid, prompt_ids, params, stream=every_step, **resume)
                added.append(rid)
        except Exception:
            for rid in added:  # (one that finished at once is dropped with its output: no stream has it)
                self.engine.abort(rid)
            raise
        now = time.monotonic()
        resumed = len(resume.get("output_ids") or ())
        for rid in added:
            self.streams[rid] = s
            self.timing[rid] = self.awaiting_first[rid] = _Timing(now, resumed=resumed)

    def _do_abort(self, request_id):
        out = self.engine.abort(request_id)
        if out is not None:
            self._deliver([out])
        return out

    def _do_abort_all(self):
        outs = self.engine.abort_all()
        self._deliver(outs)
        return outs

    def _do_load_weights(self, path):
        self.engine.load_weights(path)

    def _do_stats(self):
        return self.engine.stats()

    def _after_step(self, outputs: list[RequestOutput], produced: bool) -> None:
        if produced:
            self._note_first_tokens()
        self._deliver(outputs)
        if any(o.error for o in outputs) and not produced:
            self.failed_steps += 1
        elif produced:
            self.failed_steps = 0

    def _note_first_tokens(self) -> None:
        now = time.monotonic()
        for rid, t in list(self.awaiting_first.items()):
            request = self.engine.requests.get(rid)
            seqs = request.seqs if request is not None else []
            if any(len(s.output_ids) > s.num_resumed for s in seqs):
                t.first_token = now
                del self.awaiting_first[rid]
                if self.observer is not None:
                    self.observer.first_token(now - t.arrival)

    def _recover(self, exc: Exception) -> None:
        log.exception("engine step failed; failing every request in flight")
        self.failed_steps += 1
        self._fail_streams(f"engine error while serving this request: {exc!r}")
        self.engine.abort_all()
        self.engine.reset_prefix_cache()  # what the failed step wrote cannot be trusted
        stats = self.engine.stats()
        if stats["kv_blocks_used"] or stats["running"] or stats["waiting"]:
            self.error = RuntimeError(f"after {exc!r}, {stats['kv_blocks_used']} KV blocks could not be freed")

    def _fail_streams(self, message: str, kind: type[Exception] = RuntimeError) -> None:
        for rid, s in self.streams.items():
            s.put(kind(f"request {rid!r}: {message}"))
        self.streams.clear()
        self.timing.clear()
        self.awaiting_first.clear()

    def _publish(self) -> None:
        self.snapshot = self.engine.stats()
        now = time.monotonic()
        if not self.rate_window or now - self.rate_window[-1][0] >= 0.25:  # 64 samples: the last ~16 s
            self.rate_window.append((now, self.engine.num_generated_tokens))

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            s = self.streams.get(out.request_id)
            if s is None:
                continue
            if out.finished:
                del self.streams[out.request_id]
                self._finished(out)
            s.put(out)

    def _finished(self, out: RequestOutput) -> None:
        t = self.timing.pop(out.request_id, None)
        self.awaiting_first.pop(out.request_id, None)
        if t is None or self.observer is None:
            return
        now = time.monotonic()
        new_tokens = max((len(o.token_ids) - t.resumed for o in out.outputs), default=0)
        if t.first_token is None and new_tokens > 0 and not out.error:
            t.first_token = now  # its first token came in the step that finished it
            self.observer.first_token(now - t.arrival)
        self.observer.finished(out, now - t.arrival, None if t.first_token is None else t.first_token - t.arrival,
                               new_tokens)


def _settle(future: asyncio.Future, result, exc) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
