"""`reasonrl serve`: an OpenAI-compatible HTTP server over the engine.

Endpoints: GET /health (200 when the engine can serve, else 503 saying why; never needs a key),
GET /v1/models (and /v1/models/{id}), GET /v1/stats, GET /metrics (Prometheus), GET /version,
GET /tokenizer_info, POST /tokenize and /detokenize (vLLM's), POST /v1/completions and POST
/v1/chat/completions (both with SSE streaming), POST /v1/responses (text and function tools, with
SSE streaming), POST /v1/abort ({"request_id": ...}, or {"all": true}: administrative), which
returns the partial outputs (the aborted requests' own responses end with finish_reason "abort"; a
request's id, as its response has it, stops all its prompts, and so does the Responses API's
`resp_ID`), and POST /v1/load_weights ({"path": checkpoint dir}, administrative) for trainers that
push new weights: all or nothing, a rejected checkpoint leaves the served weights as they were. With `prm` set, POST /v1/prm/score returns a process reward
model's step scores (engine/server/prm.py).

Every error is an OpenAI-style JSON body naming the problem: 400 for bad input, 401/403 for keys
and turned-off routes, 404/405 for unknown routes, 409 for loading weights under load, 413 for
oversized bodies, 429 (with Retry-After) when the waiting queue is full, 500 naming the request
the engine failed, 503 when the engine is broken.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from reasonrl.engine.async_engine import AsyncEngine, EngineUnavailable
from reasonrl.engine.llm_engine import LLMEngine
from reasonrl.engine.protocol import AbortRequest, LoadWeightsRequest
from reasonrl.engine.sequence import RequestOutput
from reasonrl.engine.server import errors
from reasonrl.engine.server.auth import Auth, AuthMiddleware
from reasonrl.engine.server.config import ServeConfig
from reasonrl.engine.server.errors import APIError, error_response
from reasonrl.engine.server.generate import Generator
from reasonrl.engine.server.images import ChatImages
from reasonrl.engine.server.intake import Offload, parse_json, read_body
from reasonrl.engine.server.metrics import Metrics, MetricsMiddleware
from reasonrl.engine.server.view import finite
from reasonrl.engine.server.prepare import Preparer, validate_body
from reasonrl import __version__
from reasonrl.models.loader import CheckpointError

log = logging.getLogger(__name__)
SHUTDOWN_ABORT_SECONDS = 10  # the engine thread's own bound on stopping


def create_app(engine: LLMEngine, config: ServeConfig | None = None) -> FastAPI:
    """The app owns an `AsyncEngine` over `engine` (app.state.engine), stopped with the app."""
    cfg = config or ServeConfig()
    metrics = Metrics(cfg.model_name)
    core = AsyncEngine(engine, cfg.max_waiting_sequences, cfg.stall_seconds, observer=metrics)
    metrics.collect_from(core)
    offload, auth = Offload(cfg.prepare_workers), Auth(cfg)
    images = ChatImages(engine.model, cfg, engine.max_model_len) if engine.images is not None else None
    preparer = Preparer(engine.tokenizer, engine.max_model_len, cfg, images, engine.grammars)
    generate = Generator(core, offload, cfg, engine.tokenizer)

    @asynccontextmanager
    async def lifespan(_):
        yield
        # the requests the shutdown timeout cancelled answer with their partial outputs (generate.py):
        # the engine delivers them before it stops, unless it is stuck in a step
        try:
            await asyncio.wait_for(core.abort_all(), SHUTDOWN_ABORT_SECONDS)
        except (EngineUnavailable, TimeoutError):
            pass
        core.shutdown()
        offload.shutdown()

    app = FastAPI(title="reasonrl", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine, app.state.config = core, cfg
    errors.install(app)

    @app.get("/health")
    async def health():
        ok, reason = core.health()
        return {"status": "ok"} if ok else error_response(reason, 503)

    card = {"id": cfg.model_name, "object": "model", "created": int(time.time()), "owned_by": "reasonrl",
            "root": cfg.model_name, "parent": None, "max_model_len": engine.max_model_len}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != cfg.model_name:
            raise APIError(f"model {model_id[:200]!r} is not served here; this server serves {cfg.model_name!r}", 404, "model")
        return card

    @app.get("/version")
    async def version():
        return {"version": __version__}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return tokenizer_card(engine)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        raw = await read_body(request, cfg.max_body_bytes)
        return await offload.run(preparer.tokenize, raw)

    @app.post("/detokenize")
    async def detokenize(request: Request):
        raw = await read_body(request, cfg.max_body_bytes)
        return await offload.run(preparer.detokenize, raw)

    @app.get("/v1/stats")
    async def stats():
        return await _engine_call(core.stats())

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, preparer.completion)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await generate(request, preparer.chat)

    @app.post("/v1/responses")
    async def responses(request: Request):
        return await generate(request, preparer.responses)

    @app.post("/v1/abort")
    async def abort(request: Request):
        body = await _small_body(request, AbortRequest, cfg.max_body_bytes, offload)
        if body.all:
            auth.require_admin(request)
            return {"aborted": [_abort_record(o) for o in await _engine_call(core.abort_all())]}
        outs = [await _engine_call(core.abort(rid)) for rid in generate.engine_ids(body.request_id)]
        return {"aborted": [_abort_record(out) for out in outs if out]}

    @app.post("/v1/load_weights")
    async def load_weights(request: Request):
        auth.require_admin(request)
        body = await _small_body(request, LoadWeightsRequest, cfg.max_body_bytes, offload)
        path = _confine(body.path, cfg.load_weights_dir)
        try:
            await _engine_call(core.load_weights(str(path)))
        except (CheckpointError, OSError, ValueError) as exc:
            raise APIError(f"checkpoint rejected, the served weights are unchanged: {exc}", param="path") from None
        except RuntimeError as exc:  # requests in flight
            raise APIError(str(exc), 409, param="path") from None
        return {"status": "ok"}

    if cfg.prm is not None:  # POST /v1/prm/score
        from reasonrl.engine.server.prm import install_prm

        install_prm(app, cfg.prm, engine.model.device, cfg.max_body_bytes, offload)
    routes = {r.path for r in app.routes}
    app.add_middleware(AuthMiddleware, auth=auth)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)  # outermost: counts 401s too
    return app


def tokenizer_card(engine: LLMEngine) -> dict:
    """GET /tokenizer_info: what a client needs to tokenise as the server does."""
    tok = engine.tokenizer
    if tok is None:
        raise APIError("this model has no tokenizer", 404)
    return {"tokenizer_class": "PreTrainedTokenizerFast", "vocab_size": tok.vocab_size,
            "model_max_length": engine.max_model_len, "chat_template": tok.chat_template,
            "eos_token_ids": sorted(tok.eos_token_ids)}


async def _engine_call(awaitable):
    try:
        return await awaitable
    except EngineUnavailable as exc:
        raise APIError(str(exc), 503) from None


async def _small_body(request: Request, model, limit: int, offload: Offload):
    raw = await read_body(request, limit)
    return await offload.run(lambda: validate_body(parse_json(raw), model))


def _confine(path: str, root: str | None) -> Path:
    """`path`, resolved; inside `root` (relative paths taken in it) when the server confines loads."""
    if root is None:
        return Path(path)
    base = Path(root).resolve()
    target = (base / path).resolve()
    if not target.is_relative_to(base):
        raise APIError(f"this server loads weights only from inside {root}", 403, param="path")
    return target


def _abort_record(out: RequestOutput) -> dict:
    return {"request_id": out.request_id, "prompt_token_ids": out.prompt_ids,
            "outputs": [{"index": o.index, "token_ids": o.token_ids, "logprobs": [finite(x) for x in o.logprobs], "text": o.text,
                         "finish_reason": o.finish_reason, "seed": o.seed} for o in out.outputs]}
