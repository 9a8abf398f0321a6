"""A process pool with a hard per-item timeout: a worker that overruns is killed and replaced.

Why not `concurrent.futures` or `multiprocessing.Pool`: neither can stop one task. A future
can be abandoned, not killed, and killing a worker breaks a ProcessPoolExecutor for good.
Here each worker (worker.py) is a fresh interpreter owning one socket; the parent hands an
idle worker a chunk of items (one IPC round trip per chunk, not per item), the worker answers
item by item, and the parent restarts that worker's clock at every answer. Invariants:

- A worker has at most one chunk outstanding, so the parent never blocks writing to a busy
  worker and always stays free to enforce deadlines.
- The item a worker is on when it overruns its deadline, dies, or breaks protocol scores 0
  (None in `run`'s result); the rest of its chunk goes back to the queue; a fresh worker
  replaces it. The replacement warms up before it gets work, so start-up never eats into an
  item's timeout.
- `close()`, and a finalizer at garbage collection or interpreter exit, stop and reap every
  worker. A forked copy of the pool never touches its parent's workers.

Departure from the brief's "spawn/forkserver context": workers are started with `subprocess`
(`python -m reasonrl.envs.math.worker`), a fresh interpreter like spawn's, but without spawn's
re-import of the caller's `__main__`, which breaks scripts that lack an
`if __name__ == "__main__"` guard and drags a training script's imports into every worker.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

log = logging.getLogger(__name__)

MAX_CHUNK = 16  # items per IPC round trip (~0.1 ms); larger chunks only lengthen a batch's tail
MAX_START_FAILURES = 3  # consecutive workers dying before "ready": a broken install, give up


@dataclass
class _Slot:
    process: subprocess.Popen
    conn: Connection
    ready: bool = False
    started: float = field(default_factory=time.monotonic)
    chunk: deque = field(default_factory=deque)  # indices sent and not yet answered, in order
    deadline: float = math.inf


@dataclass
class PoolStats:
    items: int = 0
    timeouts: int = 0
    crashes: int = 0  # workers that died or broke protocol mid-item
    restarts: int = 0


class WorkerPool:
    """Runs `check(*item) -> bool` over items in `workers` processes, `timeout` seconds per item.

    `check` is a module-level function (or its "module:name"), imported by each worker.
    `worker` is the module the workers run (`python -m worker --fd N --check ...`, speaking
    worker.py's protocol) and `result_type` the type of its answers; `environment` replaces
    the workers' environment (default: ours)."""

    def __init__(
        self,
        check: Callable[..., bool] | str,
        workers: int = 2,
        timeout: float = 5.0,
        max_memory_mb: int | None = 2048,
        startup_timeout: float = 120.0,
        worker: str = "reasonrl.envs.math.worker",
        result_type: type = bool,
        environment: dict[str, str] | None = None,
    ):
        self.check = check if isinstance(check, str) else _import_path(check)
        self.worker, self.result_type, self.environment = worker, result_type, environment
        self.workers, self.timeout = workers, timeout
        self.max_memory_mb, self.startup_timeout = max_memory_mb, startup_timeout
        self.stats = PoolStats()
        self._slots: list[_Slot] = []
        self._start_failures = 0
        self._owner = os.getpid()
        self._finalizer = weakref.finalize(self, _shutdown, self._slots, self._owner)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start missing workers (non-blocking: they warm up in the background)."""
        if os.getpid() != self._owner:  # we were forked: those workers are our parent's
            self._finalizer.detach()
            self._slots, self._owner = [], os.getpid()
            self._finalizer = weakref.finalize(self, _shutdown, self._slots, self._owner)
        while len(self._slots) < self.workers:
            self._slots.append(self._spawn())

    def _spawn(self) -> _Slot:
        ours, theirs = socket.socketpair()
        command = [
            sys.executable, "-m", self.worker, "--fd", str(theirs.fileno()),
            "--check", self.check, "--cpu-limit", str(max(10.0, 3 * self.timeout)),
            "--max-memory-mb", str(self.max_memory_mb or 0),
        ]
        env = dict(os.environ if self.environment is None else self.environment,
                   PYTHONPATH=os.pathsep.join(_user_paths()))
        try:
            process = subprocess.Popen(command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()  # the worker holds its end: its death reads as EOF here
        return _Slot(process, Connection(ours.detach()))

    def _replace(self, slot: _Slot) -> None:
        _stop(slot, kill=True)
        self._slots[self._slots.index(slot)] = self._spawn()
        self.stats.restarts += 1

    def pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots]

    def close(self) -> None:
        """Stop and reap all workers; `start`/`run` afterwards start fresh ones."""
        self._finalizer()
        self._finalizer = weakref.finalize(self, _shutdown, self._slots, self._owner)

    # --- the loop ------------------------------------------------------------------------

    def run(self, items: list[tuple]) -> list[bool | None]:
        """Verdict per item: True/False, or None when it timed out or crashed its worker."""
        results: list[bool | None] = [None] * len(items)
        todo = deque(range(len(items)))
        self.start()
        while todo or any(slot.chunk for slot in self._slots):
            self._dispatch(items, todo)
            self._collect(results, todo)
            self._enforce(todo)
        self.stats.items += len(items)
        return results

    def _dispatch(self, items: list[tuple], todo: deque) -> None:
        for slot in [s for s in self._slots if s.ready and not s.chunk]:
            if not todo:
                return
            if slot.process.poll() is not None:  # died while idle (killed from outside)
                self._replace(slot)
                continue
            size = max(1, min(MAX_CHUNK, math.ceil(len(todo) / (4 * len(self._slots)))))
            slot.chunk.extend(todo.popleft() for _ in range(min(size, len(todo))))
            try:
                slot.conn.send([items[i] for i in slot.chunk])
                slot.deadline = time.monotonic() + self.timeout
            except (OSError, ValueError):  # it died while idle: requeue everything, replace it
                todo.extendleft(reversed(slot.chunk))
                slot.chunk.clear()
                self._replace(slot)

    def _collect(self, results: list, todo: deque) -> None:
        now = time.monotonic()
        deadlines = [s.deadline for s in self._slots if s.chunk]
        deadlines += [s.started + self.startup_timeout for s in self._slots if not s.ready]
        timeout = max(0.0, min(deadlines, default=now + 1.0) - now)
        ready = wait([slot.conn for slot in self._slots], timeout=timeout)
        for slot in [s for s in self._slots if s.conn in ready]:
            try:
                while slot.conn.poll():
                    self._receive(slot, slot.conn.recv(), results)
            except (EOFError, OSError, TypeError, ValueError, IndexError):
                self._crashed(slot, todo)

    def _receive(self, slot: _Slot, message: Any, results: list) -> None:
        if not slot.ready:
            if message[0] != "ready":
                self._crashed(slot, deque())
                raise RuntimeError(f"{self.worker} failed to start: {message[1]}")
            slot.ready, self._start_failures = True, 0
            return
        if not slot.chunk or type(message) is not self.result_type:
            raise ValueError("unexpected message from a worker")
        results[slot.chunk.popleft()] = message
        slot.deadline = time.monotonic() + self.timeout if slot.chunk else math.inf

    def _crashed(self, slot: _Slot, todo: deque) -> None:
        if not slot.ready:
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                self._replace(slot)
                raise RuntimeError(f"{self.worker} workers exit on start (last exit code {slot.process.returncode})")
        elif slot.chunk:
            slot.chunk.popleft()  # the item it was on scores 0
            self.stats.crashes += 1
        todo.extendleft(reversed(slot.chunk))
        slot.chunk.clear()
        self._replace(slot)

    def _enforce(self, todo: deque) -> None:
        now = time.monotonic()
        for slot in list(self._slots):
            if slot.chunk and now >= slot.deadline:
                slot.chunk.popleft()  # the item it is stuck on scores 0
                self.stats.timeouts += 1
                todo.extendleft(reversed(slot.chunk))
                slot.chunk.clear()
                self._replace(slot)
            elif not slot.ready and now >= slot.started + self.startup_timeout:
                log.warning("a %s worker took over %.0f s to start; restarting it", self.worker, self.startup_timeout)
                self._replace(slot)


def _user_paths() -> list[str]:
    """sys.path entries a fresh interpreter would not have (a test dir, a script's dir): the
    worker must import `check` from wherever we could. Interpreter paths stay out, so the
    worker's stdlib is never shadowed."""
    prefixes = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
    return [path or os.getcwd() for path in sys.path if not (path and path.startswith(prefixes))]


def _import_path(fn: Callable) -> str:
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in name:
        raise ValueError(f"check must be a module-level function importable by workers, got {fn!r}")
    return f"{module}:{name}"


# --- shutdown ---------------------------------------------------------------------------------


def _stop(slot: _Slot, kill: bool) -> None:
    try:
        if not kill:
            slot.process.wait(timeout=1.0)  # it was asked to stop
    except subprocess.TimeoutExpired:
        pass
    if slot.process.poll() is None:
        slot.process.kill()
    try:
        slot.process.wait(timeout=5.0)  # reap: no zombies
    except subprocess.TimeoutExpired:
        log.warning("math verifier worker %d did not exit after SIGKILL", slot.process.pid)
    slot.conn.close()


def _shutdown(slots: list[_Slot], owner: int) -> None:
    if os.getpid() != owner:  # a forked child must not stop its parent's workers
        return
    polite = [slot for slot in slots if slot.ready and not slot.chunk]
    for slot in polite:
        try:
            slot.conn.send(None)
        except (OSError, ValueError):
            pass
    for slot in slots:
        _stop(slot, kill=slot not in polite)
    slots.clear()
