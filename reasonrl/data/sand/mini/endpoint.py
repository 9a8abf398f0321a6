"""The sums teacher behind a real OpenAI-compatible HTTP endpoint (FastAPI + uvicorn).

    python -m reasonrl.data.sand.mini.endpoint --port 8765 [--known FILE.jsonl ...]

GET /v1/models, POST /v1/chat/completions (the last user message is the prompt), POST
/v1/embeddings. `TeacherServer` runs it on 127.0.0.1 in a thread, for the miniature and tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from reasonrl.eval.store import jsonl_lines

from .teacher import SumsTeacher

MODEL = "sums-teacher"


def create_teacher_app(teacher: SumsTeacher, model: str = MODEL) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        messages = body.get("messages") or []
        prompt = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        reply = teacher.respond(prompt, body.get("seed"))
        usage = {"prompt_tokens": sum(len(m.get("content", "")) for m in messages) // 4,
                 "completion_tokens": len(reply.text) // 4 + 1}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": "chatcmpl-teacher", "object": "chat.completion", "model": model, "usage": usage,
                "choices": [{"index": 0, "finish_reason": reply.finish_reason,
                             "message": {"role": "assistant", "content": reply.text}}]}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await request.json()
        text = body.get("input")
        if not isinstance(text, str):
            return JSONResponse({"error": {"message": "input must be one string"}}, 400)
        return {"object": "list", "model": model, "usage": {"prompt_tokens": len(text) // 4, "total_tokens": 0},
                "data": [{"object": "embedding", "index": 0, "embedding": teacher.embed(text)}]}

    return app


class TeacherServer:
    """`app` served on 127.0.0.1 (port 0: a free one) in a daemon thread; `url` ends in /v1."""

    def __init__(self, app, port: int = 0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"the teacher endpoint could not start on port {port}")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def known_problems(paths: list[str]) -> list[str]:
    return [json.loads(line)["problem"] for path in paths for line in jsonl_lines(path) if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765, help="TCP port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--port-file", help="write the port here once listening")
    parser.add_argument("--known", nargs="*", default=[], help="JSONL files of problems the teacher may copy")
    args = parser.parse_args(argv)
    server = TeacherServer(create_teacher_app(SumsTeacher(known_problems=known_problems(args.known))), args.port)
    if args.port_file:
        Path(args.port_file).write_text(str(server.port))
    print(f"sums teacher listening on {server.url}", file=sys.stderr, flush=True)
    try:
        while server.thread.is_alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
