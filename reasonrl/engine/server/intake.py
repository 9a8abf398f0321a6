"""Taking requests in without letting any of them hold the event loop.

- `read_body`: the body, refused with a 413 as soon as it passes the size limit.
- `parse_json`: strict JSON (no NaN/Infinity, finite floats, bounded nesting, no lone surrogates);
  runs in a worker.
- `Offload`: a small thread pool for CPU work of one request (parsing, chat templates,
  tokenisation, image decoding), so that the loop keeps answering everyone.
- `DisconnectWatch`: notices a client hanging up at once (it waits on the ASGI receive channel,
  no polling) and aborts everything that request started.
"""

from __future__ import annotations

import asyncio
import json
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from starlette.requests import Request

from reasonrl.engine.server.errors import APIError

MAX_DEPTH = 64  # nesting of a request body; a real one needs about 6


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise APIError(f"the request body ({declared} bytes) is larger than this server's limit of {limit} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(f"the request body is larger than this server's limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or an APIError (400) naming what is wrong and where."""
    try:
        data = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise APIError(f"malformed JSON body: nested more than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of thousands of digits
        raise APIError(f"malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise APIError("the JSON body must be an object")
    _check_tree(data)
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"number {text[:40]} is out of the float range")
    return x


def _check_tree(data: Any) -> None:
    """Depth and text checks over the parsed body, iteratively (no recursion to exhaust)."""
    stack = [(data, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise APIError(f"malformed JSON body: nested more than {MAX_DEPTH} levels", param=path or None)
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str):
                _check_text(key, where)
            if isinstance(value, str):
                _check_text(value, where)
            elif isinstance(value, (dict, list)):
                stack.append((value, depth + 1, where))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(f"{where}: text holds a lone UTF-16 surrogate (not valid Unicode)", param=where) from None


class Offload:
    """Runs blocking work of one request in a worker thread and awaits it."""

    def __init__(self, workers: int):
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="reasonrl-prepare")

    async def run(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class DisconnectWatch:
    """Calls `on_disconnect` (and sets `gone`) the moment the client of `request` hangs up. Start it
    once the body has been read: from then on the receive channel only carries the disconnect."""

    def __init__(self, request: Request):
        self.gone = asyncio.Event()
        self.on_disconnect: Callable[[], None] | None = None
        self.task = asyncio.ensure_future(self._watch(request.receive))

    async def _watch(self, receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone.set()
        if self.on_disconnect is not None:
            self.on_disconnect()

    def check(self) -> None:
        if self.gone.is_set():
            raise APIError("client disconnected", 499)

    def stop(self) -> None:
        self.task.cancel()
