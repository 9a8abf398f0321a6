"""`AsyncEngine`: the engine stepping in a background thread, driven from asyncio.

The server's handlers submit, abort and await requests from the event loop; one thread owns the
`LLMEngine` and runs `step()` whenever there is work. Commands cross over through a queue and are
applied between steps, so an abort takes effect before the next step (no polling interval), and a
request that finished in the step before an abort is delivered as finished, never lost.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import AsyncIterator

from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.sampling_params import SamplingParams
from reasonrl.engine.sequence import RequestOutput

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self.commands: queue.Queue = queue.Queue()
        self.streams: dict[str, _Stream] = {}
        self.thread = threading.Thread(target=self._loop, name="reasonrl-engine", daemon=True)
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self.thread.start()

    # ---- called from the event loop ---------------------------------------------------------
    def new_stream(self) -> _Stream:
        """A queue that receives the outputs of the requests submitted with it."""
        return _Stream(asyncio.get_running_loop())

    async def submit(self, stream: _Stream, request_id: str, prompt_ids: list[int], params: SamplingParams,
                     every_step: bool = False, **resume) -> None:
        """Add a request (raises ValueError for a bad one); its outputs go to `stream` (every step
        when `every_step`, else only the final one)."""
        await self._call(stream.loop, "add", request_id, prompt_ids, params, every_step, stream, resume)

    @staticmethod
    async def next_output(stream: _Stream) -> RequestOutput:
        out = await stream.queue.get()
        if isinstance(out, BaseException):
            raise out
        return out

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                       every_step: bool = False, **resume) -> AsyncIterator[RequestOutput]:
        """One request's outputs until it ends."""
        stream = self.new_stream()
        await self.submit(stream, request_id, prompt_ids, params, every_step, **resume)
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

    async def _call(self, loop, *command):
        if self.error is not None:
            raise RuntimeError(f"the engine stopped after an error: {self.error!r}")
        future = loop.create_future()
        self.commands.put((future, loop, command))
        return await future

    def shutdown(self) -> None:
        self.stopped.set()
        self.commands.put(None)
        self.thread.join(timeout=10)

    # ---- the engine thread ------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self.stopped.is_set():
                self._apply_commands(block=not self.engine.has_unfinished())
                if self.engine.has_unfinished():
                    self._deliver(self.engine.step())
        except BaseException as exc:  # a bug in the engine: fail every waiter, do not hang them
            log.exception("engine loop crashed")
            self.error = exc
            for s in self.streams.values():
                s.put(RuntimeError(f"engine error: {exc!r}"))

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

    def _do_add(self, request_id, prompt_ids, params, every_step, s: _Stream, resume):
        self.engine.add_request(request_id, prompt_ids, params, stream=every_step, **resume)
        self.streams[request_id] = s

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

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            s = self.streams.get(out.request_id)
            if s is None:
                continue
            if out.finished:
                del self.streams[out.request_id]
            s.put(out)


def _settle(future: asyncio.Future, result, exc) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
