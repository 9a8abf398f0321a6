"""One completion or chat request, from its body to its response.

Read the body (bounded) → prepare it in a worker (parse, template, tokenise, check) → submit all
its prompts to the engine at once (all or none; 429 when the waiting queue is full) → collect the
final outputs, or stream every step's. From the moment the body is read, a `DisconnectWatch`
aborts everything the request started as soon as its client hangs up, streaming or not. A
request the engine failed gets a 500 naming it, and its sibling prompts are aborted.
"""

from __future__ import annotations

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
        self.groups: dict[str, list[str]] = {}  # a multi-prompt request's id -> its prompts' engine ids, while it runs

    def engine_ids(self, request_id: str) -> list[str]:
        """The engine requests a client's request id names: `id-0`, `id-1`, ... for a request with
        several prompts (what /v1/abort with that id stops), else the id itself."""
        return list(self.groups.get(request_id, [request_id]))

    async def __call__(self, request: Request, prepare: Callable[[bytes], Job]) -> Response:
        raw = await read_body(request, self.cfg.max_body_bytes)
        watch, rids = DisconnectWatch(request), []
        try:
            job = await self.offload.run(prepare, raw)
            watch.check()  # gone while we prepared: start nothing
            rids = _request_ids(job, request)
            stream = self.engine.new_stream()
            watch.on_disconnect = lambda: self._abort(rids)
            await self._submit(stream, job, rids)
            self._group(rids)  # (not before: a refused duplicate of a running request's id must not take its entry)
            view = View(job, rids, self.cfg.model_name, self.tokenizer)
            if job.body.stream:
                response, watch = StreamingResponse(self._sse(stream, view, watch), media_type="text/event-stream"), None
                return response  # the stream owns the watch now
            outputs = await self._collect(stream, rids)
            body = await self.offload.run(lambda: json.dumps(view.response(outputs)).encode())  # may be megabytes
            return Response(body, media_type="application/json")
        finally:
            if watch is not None:  # (a stream's generator owns the watch and the group)
                watch.stop()
                self._ungroup(rids)

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

    async def _collect(self, stream, rids: list[str]) -> dict[str, RequestOutput]:
        done: dict[str, RequestOutput] = {}
        try:
            while len(done) < len(rids):
                out = await self._next(stream)
                if out.finished:
                    done[out.request_id] = out
        finally:  # failed, or cancelled: the other prompts of the request must not run for nobody
            self._abort([rid for rid in rids if rid not in done])
        return done

    async def _next(self, stream) -> RequestOutput:
        try:
            out = await self.engine.next_output(stream)
        except RuntimeError as exc:  # the engine failed every request in flight
            raise APIError(str(exc), 500) from None
        if out.error:
            raise APIError(out.error, 500)
        return out

    async def _sse(self, stream, view: View, watch: DisconnectWatch):
        finished: set[str] = set()
        try:
            while len(finished) < len(view.rids):
                try:
                    out = await self._next(stream)
                except APIError as exc:
                    rs = view.response_stream
                    yield _event(rs.error(str(exc), exc.status) if rs else error_event(str(exc), exc.status))
                    break
                if out.finished:
                    finished.add(out.request_id)
                for chunk in view.chunks(out):
                    yield _event(chunk)
            else:
                if view.body.stream_options and view.body.stream_options.include_usage:
                    yield _event(view.usage_chunk())
            if view.response_stream is None:  # the Responses API's stream ends with its last event
                yield "data: [DONE]\n\n"
        finally:  # client gone (task cancelled) or done: nothing may keep running for nobody
            watch.stop()
            self._abort([rid for rid in view.rids if rid not in finished])
            self._ungroup(view.rids)

    def _group(self, rids: list[str]) -> None:
        if len(rids) > 1:
            self.groups[rids[0].rsplit("-", 1)[0]] = rids

    def _ungroup(self, rids: list[str]) -> None:
        base = rids[0].rsplit("-", 1)[0] if len(rids) > 1 else None
        if base is not None and self.groups.get(base) is rids:  # its own entry only
            del self.groups[base]

    def _abort(self, rids: list[str]) -> None:
        for rid in rids:
            self.engine.abort_nowait(rid)


def _event(data: dict) -> str:
    """One SSE event; the Responses API's typed events also name their type on an `event:` line."""
    kind = data.get("type")
    head = f"event: {kind}\n" if isinstance(kind, str) and kind.startswith(("response.", "error")) else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def _request_ids(job: Job, request: Request) -> list[str]:
    header = request.headers.get("x-request-id")
    if header is not None and not (0 < len(header) <= 256 and header.isascii() and header.isprintable() and " " not in header):
        raise APIError("the X-Request-Id header must be 1-256 printable ASCII characters without spaces",
                       param="x-request-id")
    base = job.body.request_id or header or f"{'chatcmpl' if job.chat else 'cmpl'}-{uuid.uuid4().hex}"
    return [base] if len(job.prompts) == 1 else [f"{base}-{i}" for i in range(len(job.prompts))]
