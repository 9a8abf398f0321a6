"""A counting test double of an OpenAI-compatible endpoint for the SAND pipeline tests.

`ScriptedServer(script)` answers POST /v1/chat/completions with `script(prompt, seed, body)`: a
string (HTTP 200, finish "stop"), a `Reply` (text and finish reason), or (status, message) for an
error. The default script is the sums teacher (reasonrl/data/sand/mini/teacher.py). /v1/embeddings
answers with the teacher's embedding. Every answered (HTTP 200) request is counted by (prompt,
seed) in `answered`, so a test can tell whether a call was ever paid twice.

`hold_after(n)`: once n requests have been answered, later ones wait (unanswered) until
`release()`; a client that disconnects while waiting is never answered.

`stall(prompt, seed, attempt)` (optional) gives seconds to wait before answering the attempt-th
request (from 1) for (prompt, seed): a client that times out meanwhile is never answered.
`max_in_flight` is the most requests the server ever held at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from reasonrl.data.sand.mini.endpoint import TeacherServer
from reasonrl.data.sand.mini.teacher import Faults, Reply, SumsTeacher

CLEAN = SumsTeacher(Faults(**{f: 0.0 for f in Faults.__dataclass_fields__}))  # a teacher without faults

Script = Callable[[str, "int | None", dict], "str | Reply | tuple[int, str]"]


def teacher_script(teacher: SumsTeacher | None = None) -> Script:
    teacher = teacher or SumsTeacher()
    return lambda prompt, seed, body: teacher.respond(prompt, seed)


class ScriptedServer:
    def __init__(self, script: Script | None = None, usage: bool = True, teacher: SumsTeacher | None = None,
                 stall: Callable[[str, "int | None", int], float] | None = None):
        self.teacher = teacher or SumsTeacher()
        self.script = script or teacher_script(self.teacher)
        self.usage, self.stall = usage, stall
        self.attempts: Counter = Counter()  # (prompt, seed) -> requests received
        self.in_flight = self.max_in_flight = 0
        self.answered: Counter = Counter()  # (prompt, seed) -> HTTP 200 answers
        self.statuses: Counter = Counter()
        self.lock = threading.Lock()
        self.limit: int | None = None
        app = FastAPI()
        app.post("/v1/chat/completions")(self._chat)
        app.post("/v1/embeddings")(self._embeddings)
        app.get("/v1/models")(lambda: {"object": "list", "data": [{"id": "double", "object": "model"}]})
        self.thread = TeacherServer(app)
        self.url = self.thread.url

    @property
    def total_answered(self) -> int:
        return sum(self.answered.values())

    def hold_after(self, n: int) -> None:
        self.limit = n

    def release(self) -> None:
        self.limit = None

    async def _wait_turn(self, request: Request) -> bool:
        """False when the client went away while held (a server stops generating for a client that is gone)."""
        held = False
        while self.limit is not None and self.total_answered >= self.limit:
            held = True
            if await request.is_disconnected():
                return False
            await asyncio.sleep(0.02)
        return not (held and await request.is_disconnected())

    async def _stalled(self, request: Request, prompt: str, seed) -> bool:
        """False when the client went away while the answer was stalled."""
        with self.lock:
            self.attempts[(prompt, seed)] += 1
            attempt = self.attempts[(prompt, seed)]
        end = time.monotonic() + (self.stall(prompt, seed, attempt) if self.stall else 0.0)
        while time.monotonic() < end:  # a server notices a client that is gone and stops generating for it
            if await request.is_disconnected():
                return False
            await asyncio.sleep(0.02)
        return True

    async def _chat(self, request: Request):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            with self.lock:
                self.in_flight -= 1

    async def _answer(self, request: Request):
        body = await request.json()
        messages = body.get("messages") or []
        prompt = messages[-1]["content"] if messages else ""
        if not await self._wait_turn(request) or not await self._stalled(request, prompt, body.get("seed")):
            return JSONResponse({"error": {"message": "client gone"}}, 499)
        out = self.script(prompt, body.get("seed"), body)
        if isinstance(out, tuple):
            with self.lock:
                self.statuses[out[0]] += 1
            return JSONResponse({"error": {"message": out[1]}}, out[0])
        reply = out if isinstance(out, Reply) else Reply(out)
        with self.lock:
            self.answered[(prompt, body.get("seed"))] += 1
            self.statuses[200] += 1
        data = {"id": "x", "object": "chat.completion", "model": "double",
                "choices": [{"index": 0, "finish_reason": reply.finish_reason,
                             "message": {"role": "assistant", "content": reply.text}}]}
        if self.usage:
            data["usage"] = {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(reply.text) // 4 + 1}
        return data

    async def _embeddings(self, request: Request):
        body = await request.json()
        with self.lock:
            self.answered[("embed:" + body["input"], None)] += 1
        return {"data": [{"embedding": self.teacher.embed(body["input"])}], "usage": {"prompt_tokens": 3}}

    def stop(self) -> None:
        self.thread.stop()
