"""A fake OpenAI-compatible endpoint for the eval tests: FastAPI + uvicorn in a thread, 127.0.0.1, port 0.

`reply(body, attempt)` decides each answer: a string (HTTP 200 with that text), a dict (the chat
message's fields: content, reasoning_content, ...), or (status, message).
`attempt` counts earlier requests with the same (problem text, seed), so a test can fail the first
tries of every sample. Every request body is kept in `requests`, the ones answered 200 in `served`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from typing import Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

Reply = Callable[[dict, int], "str | tuple[int, str]"]


def problem_text(body: dict) -> str:
    """The problem a request asks about: the last user message, or the plain prompt's last part."""
    if "messages" in body:
        return body["messages"][-1]["content"]
    return body["prompt"].rsplit("\n\n", 1)[-1]


class FakeServer:
    def __init__(self, reply: Reply, model: str = "fake", usage: bool = True, api_key: str | None = None,
                 delay: Callable[[dict, int], float] | None = None):
        self.reply, self.model, self.usage, self.api_key, self.delay = reply, model, usage, api_key, delay
        self.requests: list[dict] = []
        self.served: list[dict] = []
        self.attempts: Counter = Counter()
        self.lock = threading.Lock()
        app = FastAPI()

        @app.get("/v1/models")
        async def models(request: Request):
            if not self._authorized(request):
                return JSONResponse({"error": {"message": "invalid api key"}}, 401)
            return {"object": "list", "data": [{"id": self.model, "object": "model"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await self._answer(request, chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await self._answer(request, chat=False)

        self.thread = ServerThread(app)
        self.url = self.thread.url

    def _authorized(self, request: Request) -> bool:
        return self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}"

    async def _answer(self, request: Request, chat: bool):
        body = await request.json()
        if not self._authorized(request):
            return JSONResponse({"error": {"message": "invalid api key"}}, 401)
        with self.lock:
            self.requests.append(body)
            key = (problem_text(body), body.get("seed"))
            attempt = self.attempts[key]
            self.attempts[key] += 1
        if self.delay is not None:
            await asyncio.sleep(self.delay(body, attempt))
        out = self.reply(body, attempt)
        if isinstance(out, tuple):
            status, message = out
            return JSONResponse({"error": {"message": message, "code": status}}, status)
        with self.lock:
            self.served.append(body)
        choice = {"index": 0, "finish_reason": "stop"}
        message = out if isinstance(out, dict) else {"content": out}
        choice.update({"message": {"role": "assistant", **message}} if chat else {"text": out})
        data = {"id": "x", "object": "chat.completion" if chat else "text_completion", "model": self.model,
                "choices": [choice]}
        if self.usage:
            data["usage"] = {"prompt_tokens": 1, "completion_tokens": len(str(message).split()), "total_tokens": 1}
        return data

    def stop(self) -> None:
        self.thread.stop()


class ServerThread:
    """An ASGI app served by uvicorn on 127.0.0.1 (a free port) in a daemon thread; `url` ends in /v1."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
