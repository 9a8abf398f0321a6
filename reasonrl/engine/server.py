"""`reasonrl serve`: an OpenAI-compatible HTTP server over the engine.

Endpoints: GET /v1/models, GET /health, GET /v1/stats, POST /v1/completions,
POST /v1/chat/completions (both with SSE streaming), POST /v1/abort ({"request_id": ...} or
{"all": true}), which returns the partial outputs (the aborted requests' own responses end with
finish_reason "abort"), and POST /v1/load_weights ({"path": checkpoint dir}) for trainers that
push new weights. Bad input gets a 400 with an OpenAI-style JSON error naming the problem.
A client that disconnects has its request aborted and its KV blocks freed.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from reasonrl.engine.async_engine import AsyncEngine
from reasonrl.engine.protocol import AbortRequest, ChatRequest, CompletionRequest, LoadWeightsRequest
from reasonrl.engine.sequence import CompletionOutput, RequestOutput


class APIError(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


def error_response(message: str, status: int = 400, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


def create_app(engine: AsyncEngine, model_name: str) -> FastAPI:
    app = FastAPI(title="reasonrl", docs_url=None, redoc_url=None)
    core = engine.engine
    tokenizer, max_len = core.tokenizer, core.max_model_len

    @app.exception_handler(APIError)
    async def _api_error(_, exc: APIError):
        return error_response(str(exc), exc.status, exc.param)

    @app.exception_handler(Exception)
    async def _crash(_, exc: Exception):
        return error_response(f"internal error: {exc!r}", 500)

    @app.get("/health")
    async def health():
        return {"status": "ok" if engine.error is None else "error"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "reasonrl",
                                            "max_model_len": max_len}]}

    @app.get("/v1/stats")
    async def stats():
        return await engine.stats()

    @app.post("/v1/abort")
    async def abort(request: Request):
        body = await _parse(request, AbortRequest)
        outs = await engine.abort_all() if body.all else [o for o in [await engine.abort(body.request_id)] if o]
        return {"aborted": [_abort_record(o) for o in outs]}

    @app.post("/v1/load_weights")
    async def load_weights(request: Request):
        body = await _parse(request, LoadWeightsRequest)
        try:
            await engine.load_weights(body.path)
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            raise APIError(str(exc), param="path") from None
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _parse(request, CompletionRequest)
        prompts = [_encode(p) for p in body.prompts()]
        return await _serve(request, body, prompts, body.max_tokens, body.logprobs or 0, chat=False,
                            want_logprobs=body.logprobs is not None)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await _parse(request, ChatRequest)
        if tokenizer is None or not tokenizer.chat_template:
            raise APIError("this model has no chat template; use /v1/completions")
        try:
            messages = [{**m.model_dump(exclude_none=True), "content": m.text()} for m in body.messages]
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **body.chat_template_kwargs)
        except ValueError as exc:
            raise APIError(str(exc), param="messages") from None
        max_tokens = body.max_completion_tokens or body.max_tokens or max(1, max_len - len(prompt))
        return await _serve(request, body, [prompt], max_tokens, (body.top_logprobs or 0) if body.logprobs else 0,
                            chat=True, want_logprobs=body.logprobs)

    def _encode(prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        if tokenizer is None:
            raise APIError("this model has no tokenizer: send token ids as the prompt", param="prompt")
        return tokenizer.encode(prompt)

    async def _serve(request, body, prompts, max_tokens, logprobs, chat, want_logprobs):
        _check_model(body.model, model_name)
        for p in prompts:
            if len(p) + max_tokens > max_len:
                raise APIError(f"prompt ({len(p)} tokens) plus max_tokens ({max_tokens}) exceeds the context "
                               f"length {max_len}", param="max_tokens")
        try:
            params = body.sampling_params(max_tokens, logprobs)
        except ValueError as exc:
            raise APIError(str(exc)) from None
        base = body.request_id or request.headers.get("x-request-id") or f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        rids = [base] if len(prompts) == 1 else [f"{base}-{i}" for i in range(len(prompts))]
        resume = {"output_ids": body.resume.token_ids, "output_logprobs": body.resume.logprobs} if body.resume else {}
        stream = engine.new_stream()
        submitted = []
        try:
            for rid, p in zip(rids, prompts):
                await engine.submit(stream, rid, p, params, every_step=body.stream, **resume)
                submitted.append(rid)
        except ValueError as exc:
            for rid in submitted:
                engine.abort_nowait(rid)
            raise APIError(str(exc)) from None
        view = _View(body, rids, prompts, chat, want_logprobs, model_name, tokenizer)
        if body.stream:
            return StreamingResponse(_sse(stream, view), media_type="text/event-stream")
        outputs = await _collect(request, stream, rids)
        return view.response(outputs)

    async def _collect(request: Request, stream, rids) -> dict[str, RequestOutput]:
        done: dict[str, RequestOutput] = {}
        waiter = asyncio.ensure_future(_gather(stream, rids, done))
        while not waiter.done():
            await asyncio.wait({waiter}, timeout=0.5)
            if not waiter.done() and await request.is_disconnected():
                waiter.cancel()
                for rid in rids:
                    engine.abort_nowait(rid)
                raise APIError("client disconnected", 499)
        waiter.result()
        return done

    async def _gather(stream, rids, done):
        while len(done) < len(rids):
            out = await engine.next_output(stream)
            if out.finished:
                done[out.request_id] = out

    async def _sse(stream, view: _View):
        finished: set[str] = set()
        try:
            while len(finished) < len(view.rids):
                out = await engine.next_output(stream)
                if out.finished:
                    finished.add(out.request_id)
                for chunk in view.chunks(out):
                    yield f"data: {json.dumps(chunk)}\n\n"
            if view.body.stream_options and view.body.stream_options.include_usage:
                yield f"data: {json.dumps(view.usage_chunk())}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # client gone (task cancelled) or done: nothing may keep running for nobody
            for rid in view.rids:
                if rid not in finished:
                    engine.abort_nowait(rid)

    return app


async def _parse(request: Request, model: type[BaseModel]):
    try:
        raw = await request.body()
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(f"malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise APIError("the JSON body must be an object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or None
        msg = err["msg"].removeprefix("Value error, ")
        raise APIError(f"{loc}: {msg}" if loc else msg, param=loc) from None


def _check_model(requested: str | None, served: str) -> None:
    if requested not in (None, served):
        raise APIError(f"model {requested!r} is not served here; this server serves {served!r}", 404, "model")


def _abort_record(out: RequestOutput) -> dict[str, Any]:
    return {"request_id": out.request_id, "prompt_token_ids": out.prompt_ids,
            "outputs": [{"index": o.index, "token_ids": o.token_ids, "logprobs": o.logprobs, "text": o.text,
                         "finish_reason": o.finish_reason, "seed": o.seed} for o in out.outputs]}


class _View:
    """Renders engine outputs as OpenAI completion / chat responses and stream chunks."""

    def __init__(self, body, rids, prompts, chat, want_logprobs, model_name, tokenizer):
        self.body, self.rids, self.prompts, self.chat = body, rids, prompts, chat
        self.want_logprobs, self.model, self.tokenizer = want_logprobs, model_name, tokenizer
        self.created = int(time.time())
        self.sent: dict[tuple[str, int], tuple[int, int]] = {}  # (rid, index) -> (tokens, chars) streamed
        self.closed: set[tuple[str, int]] = set()  # choices whose final chunk went out
        self.holdback = max((len(s) for s in params_stop(body)), default=1) - 1
        self.completion_tokens = 0

    def _choice_index(self, rid: str, index: int) -> int:
        return self.rids.index(rid) * self.body.n + index

    def response(self, outputs: dict[str, RequestOutput]) -> dict[str, Any]:
        choices = []
        for rid in self.rids:
            for o in outputs[rid].outputs:
                choices.append(self._choice(rid, o, o.text, o.token_ids, o.logprobs, o.top_logprobs, o.finish_reason))
        completion = sum(len(o.token_ids) for out in outputs.values() for o in out.outputs)
        prompt = sum(len(p) for p in self.prompts)
        return {"id": self.rids[0], "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices,
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}

    def chunks(self, out: RequestOutput):
        for o in out.outputs:
            key = (out.request_id, o.index)
            tokens_sent, chars_sent = self.sent.get(key, (0, 0))
            if key in self.closed or (key in self.sent and tokens_sent == len(o.token_ids) and not o.finish_reason):
                continue
            # hold back text that may turn out to start a stop string
            end = len(o.text) if o.finish_reason else max(chars_sent, len(o.text) - self.holdback)
            delta_tokens = o.token_ids[tokens_sent:]
            self.sent[key] = (len(o.token_ids), end)
            if o.finish_reason:
                self.closed.add(key)
                self.completion_tokens += len(o.token_ids)
            tops = o.top_logprobs[tokens_sent:] if o.top_logprobs is not None else None
            choice = self._choice(out.request_id, o, o.text[chars_sent:end], delta_tokens, o.logprobs[tokens_sent:],
                                  tops, o.finish_reason, first=chars_sent == 0 and tokens_sent == 0)
            yield {"id": self.rids[0], "object": "chat.completion.chunk" if self.chat else "text_completion",
                   "created": self.created, "model": self.model, "choices": [choice]}

    def usage_chunk(self) -> dict[str, Any]:
        prompt = sum(len(p) for p in self.prompts)
        return {"id": self.rids[0], "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [],
                "usage": {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                          "total_tokens": prompt + self.completion_tokens}}

    def _choice(self, rid, o: CompletionOutput, text, token_ids, logprobs, tops, finish_reason, first=False):
        choice: dict[str, Any] = {"index": self._choice_index(rid, o.index), "finish_reason": finish_reason}
        if self.chat:
            key = "delta" if self.body.stream else "message"
            choice[key] = {"role": "assistant", "content": text} if (first or not self.body.stream) else {"content": text}
        else:
            choice["text"] = text
        choice["logprobs"] = self._logprobs(token_ids, logprobs, tops) if self.want_logprobs else None
        if self.body.return_token_ids:
            choice["token_ids"] = token_ids
        if finish_reason:
            choice["stop_reason"] = o.stop_reason
            choice["seed"] = o.seed
        return choice

    def _token(self, tid: int) -> str:
        return self.tokenizer.decode([tid], skip_special_tokens=False) if self.tokenizer else str(tid)

    def _logprobs(self, token_ids, logprobs, tops):
        tokens = [self._token(t) for t in token_ids]
        tops = tops or [{} for _ in token_ids]
        if self.chat:
            return {"content": [{"token": s, "logprob": lp, "bytes": list(s.encode()),
                                 "top_logprobs": [{"token": self._token(t), "logprob": v, "bytes": list(self._token(t).encode())}
                                                  for t, v in top.items()]}
                                for s, lp, top in zip(tokens, logprobs, tops)]}
        return {"tokens": tokens, "token_logprobs": logprobs,
                "top_logprobs": [{self._token(t): v for t, v in top.items()} for top in tops]}


def params_stop(body) -> list[str]:
    return [body.stop] if isinstance(body.stop, str) else list(body.stop or [])


def serve(engine, model_name: str, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the server until interrupted."""
    import uvicorn

    async_engine = AsyncEngine(engine)
    try:
        uvicorn.run(create_app(async_engine, model_name), host=host, port=port, log_level=log_level)
    finally:
        async_engine.shutdown()
