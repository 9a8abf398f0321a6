"""One completion or chat request, from its body to its response.

Read the body (bounded) → prepare it in a worker (parse, template, tokenise, check) → submit all
its prompts to the engine at once (all or none; 429 when the waiting queue is full) → collect the
final outputs, or stream every step's. From the moment the body is read, a `DisconnectWatch`
aborts everything the request started as soon as its client hangs up, streaming or not. A
request the engine failed gets a 500 naming it, and its sibling prompts are aborted. One that the
server's shutdown timeout cancels answers with what its prompts have, aborted (finish_reason
"abort"), or a 503 when the engine stopped first.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Callable

from fastapi.responses import StreamingResponse
from starlette.requests import Request
from starlette.responses import Response

from reasonrl.engine.async_engine import AsyncEngine, EngineUnavailable, QueueFull
from reasonrl.engine.sampling_params import ParamError
from reasonrl.engine.sequence import RequestOutput
from reasonrl.engine.server.config import ServeConfig
from reasonrl.engine.server.errors import APIError
from reasonrl.engine.server.intake import DisconnectWatch, Offload, read_body
from reasonrl.engine.server.prepare import Job
from reasonrl.engine.server.view import View, error_event
from reasonrl.models.tokenizer import Tokenizer


RESUME_FIELDS = {"output_ids": "resume.token_ids", "output_logprobs": "resume.logprobs"}
"""The engine's names of a resumed request's inputs, as a request body spells them."""


class Generator:
    def __init__(self, engine: AsyncEngine, offload: Offload, cfg: ServeConfig, tokenizer: Tokenizer | None):
        self.engine, self.offload, self.cfg, self.tokenizer = engine, offload, cfg, tokenizer
        # every id a client may name a request in flight by -> the engine ids it stands for: the request's
        # id (all its prompts), `resp_ID` (the Responses API's object), each prompt's engine id (itself)
        self.running: dict[str, list[str]] = {}

    def engine_ids(self, request_id: str) -> list[str]:
        """The engine requests a client's id names (what /v1/abort with it stops): a request's id, as
        its response's `id` has it, names all its prompts (`ID-0`, `ID-1`, ...); any other id itself."""
        return list(self.running.get(request_id, [request_id]))

    async def __call__(self, request: Request, prepare: Callable[[bytes], Job]) -> Response:
        raw = await read_body(request, self.cfg.max_body_bytes)
        watch, names = DisconnectWatch(request), {}
        try:
            job = await self.offload.run(prepare, raw)
            watch.check()  # gone while we prepared: start nothing
            request_id, rids, param = _request_ids(job, request)
            names = self._claim(job, request_id, rids, param)
            stream = self.engine.new_stream()
            watch.on_disconnect = lambda: self._abort(rids)
            await self._submit(stream, job, rids)
            view = View(job, request_id, rids, self.cfg.model_name, self.tokenizer)
            if job.body.stream:
                response = EventStream(self._sse(stream, view, watch, names), media_type="text/event-stream")
                watch = None
                return response  # the stream owns the watch now
            outputs, cut = await self._collect(stream, rids)
            if cut:  # shutting down: the workers may be gone, and the output is partial
                return Response(json.dumps(view.response(outputs)).encode(), media_type="application/json")
            body = await self.offload.run(lambda: json.dumps(view.response(outputs)).encode())  # may be megabytes
            return Response(body, media_type="application/json")
        finally:
            if watch is not None:  # (a stream's generator owns the watch and the names)
                watch.stop()
                self._release(names)

    def _claim(self, job: Job, request_id: str, rids: list[str], param: str | None) -> dict[str, list[str]]:
        """Take the ids the request goes by; a 400 naming `param` if a request in flight has one of them."""
        names = {rid: [rid] for rid in rids} | {request_id: rids}
        if job.api == "responses":
            names[f"resp_{request_id}"] = rids
        taken = next((name for name in names if name in self.running), None)
        if taken is not None:
            raise APIError(f"request id {taken!r} is already in flight", param=param)
        self.running.update(names)
        return names

    def _release(self, names: dict[str, list[str]]) -> None:
        for name, rids in names.items():
            if self.running.get(name) is rids:
                del self.running[name]

    async def _submit(self, stream, job: Job, rids: list[str]) -> None:
        resume = job.body.resume
        resume = {"output_ids": resume.token_ids, "output_logprobs": resume.logprobs} if resume else {}
        try:
            await self.engine.submit(stream, list(zip(rids, job.prompts, job.params)), job.body.stream, **resume)
        except QueueFull as exc:
            raise APIError(f"server busy: {exc}", 429, headers={"Retry-After": str(self.cfg.retry_after_seconds)}) from None
        except EngineUnavailable as exc:
            raise APIError(str(exc), 503) from None
        except ValueError as exc:
            param = exc.param if isinstance(exc, ParamError) else None
            raise APIError(str(exc), param=RESUME_FIELDS.get(param, param)) from None

    async def _collect(self, stream, rids: list[str]) -> tuple[dict[str, RequestOutput], bool]:
        """Every prompt's final output, and whether the server's shutdown timeout cut the request."""
        outputs = Outputs(self.engine, stream, rids)
        try:
            done = {out.request_id: out async for out in outputs if out.finished}
        finally:  # failed, or cancelled: the other prompts of the request must not run for nobody
            outputs.abort()
        return done, outputs.cut

    async def _sse(self, stream, view: View, watch: DisconnectWatch, names: dict[str, list[str]]):
        outputs = Outputs(self.engine, stream, view.rids)
        try:
            try:
                async for out in outputs:
                    for chunk in view.chunks(out):
                        yield _event(chunk)
            except APIError as exc:
                rs = view.response_stream
                yield _event(rs.error(str(exc), exc.status) if rs else error_event(str(exc), exc.status))
            else:
                if view.body.stream_options and view.body.stream_options.include_usage:
                    yield _event(view.usage_chunk())
            if view.response_stream is None:  # the Responses API's stream ends with its last event
                yield "data: [DONE]\n\n"
        finally:  # client gone or done: nothing may keep running for nobody
            watch.stop()
            outputs.abort()
            self._release(names)

    def _abort(self, rids: list[str]) -> None:
        for rid in rids:
            self.engine.abort_nowait(rid)


class Outputs:
    """The engine's outputs for a request's prompts, until each has finished (a failure is an
    APIError). The server's shutdown timeout cancels the request's task: its prompts left are then
    aborted, and their partial outputs still come (the app has the engine apply aborts before it
    stops), so the client gets its answer, finish_reason "abort"; `cut` says so."""

    def __init__(self, engine: AsyncEngine, stream, rids: list[str]):
        self.engine, self.stream, self.rids = engine, stream, rids
        self.finished: set[str] = set()
        self.cut = False

    async def __aiter__(self):
        while len(self.finished) < len(self.rids):
            try:
                out = await self._next()
            except asyncio.CancelledError:
                if self.cut:  # cancelled again: no time is left for outputs
                    raise APIError("the server shut down before this request finished", 503) from None
                self.cut = True
                asyncio.current_task().uncancel()  # answered, not ended, by this cancellation
                self.abort()
                continue
            if out.finished:
                self.finished.add(out.request_id)
            yield out

    def abort(self) -> None:
        """Abort the prompts that have not finished."""
        for rid in self.rids:
            if rid not in self.finished:
                self.engine.abort_nowait(rid)

    async def _next(self) -> RequestOutput:
        try:
            out = await self.engine.next_output(self.stream)
        except EngineUnavailable as exc:  # shut down, or broken
            raise APIError(str(exc), 503) from None
        except RuntimeError as exc:  # the engine failed every request in flight
            raise APIError(str(exc), 500) from None
        if out.error:
            raise APIError(out.error, 500)
        return out


class EventStream(StreamingResponse):
    """Server-sent events, sent from the request's own task, without starlette's disconnect listener
    beside it (the request's DisconnectWatch aborts its engine requests when the client hangs up, and
    the stream then ends by itself): a shutdown timeout's cancellation reaches the events' generator,
    which answers it (`Outputs`), instead of the listener, which left a traceback."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:  # cut while waiting on a client that reads nothing: its connection closes
            asyncio.current_task().uncancel()


def _event(data: dict) -> str:
    """One SSE event; the Responses API's typed events also name their type on an `event:` line."""
    kind = data.get("type")
    head = f"event: {kind}\n" if isinstance(kind, str) and kind.startswith(("response.", "error")) else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def _request_ids(job: Job, request: Request) -> tuple[str, list[str], str | None]:
    """The request's id, its prompts' engine ids (`ID-0`, `ID-1`, ... for several; else the id), and
    the parameter that set the id (None: a fresh one)."""
    header = request.headers.get("x-request-id")
    if header is not None and not (0 < len(header) <= 256 and header.isascii() and header.isprintable() and " " not in header):
        raise APIError("the X-Request-Id header must be 1-256 printable ASCII characters without spaces",
                       param="x-request-id")
    param = "request_id" if job.body.request_id else "x-request-id" if header is not None else None
    base = job.body.request_id or header or f"{'chatcmpl' if job.chat else 'cmpl'}-{uuid.uuid4().hex}"
    rids = [base] if len(job.prompts) == 1 else [f"{base}-{i}" for i in range(len(job.prompts))]
    return base, rids, param
