"""Shared by the server tests: a real server on 127.0.0.1 (port 0) in a thread, over the demo policy."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import uvicorn

import reasonrl.demo
from reasonrl.engine import LLMEngine
from reasonrl.engine.server import ServeConfig, create_app

POLICY = Path(reasonrl.demo.__file__).parent / "policy"
ENGINE = dict(device="cpu", kv_cache_memory=1 << 22, block_size=8, max_model_len=256)


class Server:
    def __init__(self, engine: LLMEngine, config: ServeConfig | None = None):
        self.engine = engine
        self.app = create_app(engine, config or ServeConfig(served_model_name="demo"))
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="critical"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def core(self):
        return self.app.state.engine

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def demo_engine(**overrides) -> LLMEngine:
    return LLMEngine.from_pretrained(POLICY, **{**ENGINE, **overrides})


def wait_idle(engine: LLMEngine, timeout: float = 10) -> bool:
    end = time.monotonic() + timeout
    while engine.requests and time.monotonic() < end:
        time.sleep(0.01)
    return not engine.requests


def no_leaks(engine: LLMEngine) -> bool:
    """No request, no sequence and no KV block held."""
    bm = engine.block_manager
    return (wait_idle(engine) and not engine.scheduler.running and not engine.scheduler.waiting
            and bm.num_free == len(bm.blocks))


def raw_post(port: int, path: str, body: bytes, headers: dict | None = None, chunked: bool = False) -> tuple[int, bytes]:
    """POST exactly these bytes (httpx would re-encode or refuse some of them); (status, body)."""
    head = {"Host": "x", "Content-Type": "application/json", "Connection": "close", **(headers or {})}
    if chunked:
        head["Transfer-Encoding"] = "chunked"
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in _pieces(body, 1 << 16)) + b"0\r\n\r\n"
    else:
        head["Content-Length"] = str(len(body))
        payload = body
    request = f"POST {path} HTTP/1.1\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode() for k, v in head.items())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request + b"\r\n")
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):  # refused early (413): the answer is already there
            pass
        data = b""
        while chunk := _recv(sock):
            data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    return int(head_bytes.split(b" ")[1]), rest


def _recv(sock) -> bytes:
    try:
        return sock.recv(1 << 16)
    except ConnectionResetError:
        return b""


def _pieces(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def error_of(body: bytes) -> dict:
    return json.loads(body)["error"]
