"""Timing on a GPU: a passing candidate against the PyTorch reference and the expert, interleaved.

Three parties, two processes, both forked by the worker (zygote.py) for one job:

- the reference process (trusted, not sandboxed) imports the task, writes the timing inputs
  (`input_sets` distinct sets per timing shape) into the job's `in/`, loads the expert from a
  directory the candidate cannot see, and times the reference and the expert;
- the candidate process is a sandbox like any other (sandbox.py); it keeps one pipe open.

The worker (`orchestrate`) drives rounds over the pipes in `round_order`, so the three
parties' samples interleave; then the candidate saves its outputs of the last call on each
input set and the reference process compares them with the reference's (a kernel that is
right on the small test shapes and wrong, or cached, on large ones fails here).

Each timed call (`timed_calls`): the next input set is copied into fixed buffers (the pointer
stays, the contents change: no caching by pointer), a 256 MiB buffer is overwritten (no warm
L2), the device is synchronized, the clock read, the function called, the device synchronized,
the clock read. The clock and the synchronization are builtins captured when this module is
imported, before any candidate code runs: a candidate that patches `time.perf_counter` or
`torch.cuda.synchronize` patches something nobody reads here. Timings a candidate reports
about itself are in its own process and a determined attacker can still forge them; speedups
of 10x or more are flagged for review for that reason (timing.py).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from functools import partial
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any, Callable

import torch

from .limits import SandboxLimits
from .runner import load_candidate
from .sandbox import finish_sandboxed, remove_tree, start_sandboxed
from .timing import round_order

CLOCK_NS = time.perf_counter_ns  # captured before any candidate is imported
_CUDA_SYNC = getattr(torch._C, "_cuda_synchronize", None)
FLUSH_BYTES = 256 << 20
PARTIES = ("reference", "expert", "candidate")
MAX_MESSAGE = 64 << 20


def send(conn: Connection, message: Any) -> None:
    """Messages are JSON, never pickles: the worker must not unpickle what a candidate sends."""
    conn.send_bytes(json.dumps(message).encode())


def recv(conn: Connection) -> Any:
    return json.loads(conn.recv_bytes(MAX_MESSAGE))


def synchronizer(device: str) -> Callable[[], None]:
    return _CUDA_SYNC if device.startswith("cuda") and _CUDA_SYNC is not None else (lambda: None)


class Bench:
    """One party's timing state for one shape: its input sets on the device, the fixed buffers
    they are copied into, and the output of the last call on each set."""

    def __init__(self, fn: Callable, sets: list[tuple], device: str, flush: bool):
        self.fn = fn
        self.sets = [tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args) for args in sets]
        self.buffers = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in self.sets[0])
        self.flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device=device) if flush else None
        self.sync = synchronizer(device)
        self.last: list[Any] = [None] * len(sets)
        self.calls = 0

    def _load(self, j: int) -> tuple:
        for buffer, value in zip(self.buffers, self.sets[j]):
            if isinstance(buffer, torch.Tensor):
                buffer.copy_(value)
        return tuple(b if isinstance(b, torch.Tensor) else v for b, v in zip(self.buffers, self.sets[j]))

    def run(self, reps: int, keep: bool = False) -> list[float]:
        """`reps` timed calls, rotating the input sets; milliseconds each."""
        samples = []
        for _ in range(reps):
            j = self.calls % len(self.sets)
            args = self._load(j)
            if self.flush is not None:
                self.flush.zero_()
            self.sync()
            start = CLOCK_NS()
            out = self.fn(*args)
            self.sync()
            samples.append((CLOCK_NS() - start) / 1e6)
            if keep:
                self.last[j] = _detach(out)
            self.calls += 1
        return samples


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").as_subclass(torch.Tensor).clone()
    if type(value) is list:
        return [_detach(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    return value


def serve_party(conn: Connection, benches: dict[str, list[Bench]], timing: dict) -> Any:
    """Answer ("round", party) with that party's samples per shape until ("save", path) or
    ("check", ...) arrives; return that last message."""
    for per_shape in benches.values():
        for bench in per_shape:
            bench.run(timing["warmup"])
            bench.calls = 0
    send(conn, ["ready"])
    while True:
        message = recv(conn)
        if message[0] != "round":
            return message
        send(conn, [bench.run(timing["reps"], keep=True) for bench in benches[message[1]]])


def load_sets(path: str) -> list[list[tuple]]:
    return torch.load(path, weights_only=True)


def run_candidate(ctx, conn_fd: int, source_path: str, entry: str, inputs_path: str, device: str,
                  timing: dict) -> None:
    """The sandboxed candidate's side (a sandbox body)."""
    conn = Connection(conn_fd)
    try:
        fn = getattr(load_candidate(source_path), entry)
        benches = {"candidate": [Bench(fn, sets, device, timing["flush_cache"]) for sets in load_sets(inputs_path)]}
        message = serve_party(conn, benches, timing)
        if message[0] == "save":
            torch.save([bench.last for bench in benches["candidate"]], os.path.join(ctx.work, "timed_outputs.pt"))
            send(conn, ["saved"])
    except BaseException as exc:  # noqa: BLE001 - reported through the pipe, judged by the parent
        try:
            send(conn, ["error", f"{type(exc).__name__}: {exc}"[:2000]])
        except OSError:
            pass


def run_reference(conn: Connection, job: dict, in_dir: str, ref_dir: str) -> None:
    """The reference process's side: inputs, the reference and the expert, the final check."""
    from ..suite import get_task  # this process is trusted; the worker itself never imports tasks
    from ..task import Case
    from .compare import compare

    try:
        task = get_task(job["task_id"])
        dtype = getattr(torch, job["dtype"])
        timing = job["timing"]
        sets = [[task.inputs(Case(tuple(shape), dtype, seed)) for seed in range(timing["input_sets"])]
                for shape in job["shapes"]]
        torch.save(sets, os.path.join(in_dir, "inputs.pt"))
        path = os.path.join(ref_dir, "expert.py")
        with open(path, "w") as f:
            f.write(job["expert_source"])
        expert = getattr(load_candidate(path, "expert"), task.entry)
        flush = timing["flush_cache"]
        benches = {"reference": [Bench(task.reference, s, job["device"], flush) for s in sets],
                   "expert": [Bench(expert, s, job["device"], flush) for s in sets]}
        message = serve_party(conn, benches, timing)
        outputs = torch.load(message[1], weights_only=True)
        atol, rtol = task.tolerance_for(dtype)
        mismatch = None
        for shape, per_set, expected in zip(job["shapes"], outputs, (b.last for b in benches["reference"])):
            for j, (out, ref) in enumerate(zip(per_set, expected)):
                mismatch = mismatch or _where(compare(ref, out, atol, rtol), shape, j)
        send(conn, ["checked", mismatch])
    except BaseException as exc:  # noqa: BLE001 - a broken task is the evaluator's error, reported
        send(conn, ["error", f"reference side: {type(exc).__name__}: {exc}"[:2000]])


def _where(found: str | None, shape, j: int) -> str | None:
    return f"timing shape {tuple(shape)}, input set {j}: {found}" if found else None


def orchestrate(job: dict, job_dir: str, source_path: str) -> dict:
    """The worker's side of a timing job: fork both parties, run the rounds, collect."""
    limits = SandboxLimits(**job["limits"])
    ref_dir = tempfile.mkdtemp(prefix="kernel-ref-")
    ref_conn, ref_end = Pipe()
    start = time.monotonic()
    deadline = start + limits.timeout
    ref_pid = os.fork()
    if ref_pid == 0:
        ref_conn.close()
        run_reference(ref_end, job, os.path.join(job_dir, "in"), ref_dir)
        os._exit(0)
    ref_end.close()
    cand_pid, outcome = None, None
    samples: dict[str, list[list[float]]] = {p: [[] for _ in job["shapes"]] for p in PARTIES}
    answer: dict[str, Any] = {"kind": "timing", "samples": samples, "mismatch": None, "error": None}
    try:
        _expect(ref_conn, deadline, "ready")
        cand_conn, cand_end = Pipe()
        body = partial(run_candidate, conn_fd=cand_end.fileno(), source_path=source_path, entry=job["entry"],
                       inputs_path=os.path.join(job_dir, "in", "inputs.pt"), device=job["device"], timing=job["timing"])
        cand_pid = start_sandboxed(body, job_dir, limits, job["hidden"] + [ref_dir], job["namespaces"],
                                   keep_fds=(cand_end.fileno(),), gpu=job["device"].startswith("cuda"))
        cand_end.close()
        _expect(cand_conn, deadline, "ready")
        conns = {"reference": ref_conn, "expert": ref_conn, "candidate": cand_conn}
        for r in range(job["timing"]["rounds"]):
            for party in round_order(PARTIES, r):
                send(conns[party], ["round", party])
                got = _receive(conns[party], deadline)
                if not isinstance(got, list) or len(got) != len(job["shapes"]):
                    raise ValueError(f"{party} sent no samples")
                for shape_samples, values in zip(samples[party], got):
                    shape_samples.extend(_milliseconds(values))
        send(cand_conn, ["save"])
        _expect(cand_conn, deadline, "saved")
        send(ref_conn, ["check", os.path.join(job_dir, "out", "timed_outputs.pt")])
        answer["mismatch"] = _expect(ref_conn, deadline, "checked")[1]
    except (TimeoutError, EOFError, OSError, RuntimeError, TypeError, ValueError) as exc:
        answer["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        if cand_pid is not None:
            outcome = finish_sandboxed(cand_pid, job_dir, limits, start, wait=False)
        try:
            os.kill(ref_pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(ref_pid, 0)
        remove_tree(ref_dir)
    answer["stderr"] = outcome.stderr if outcome else ""
    if outcome is not None and outcome.over_disk and not answer["error"]:
        answer["error"] = (f"the candidate left more than {limits.disk} bytes or {limits.files} files in its "
                           "directory (the disk limits)")
    return answer


def _milliseconds(values: Any) -> list[float]:
    """Samples as sent (a candidate sends these): finite non-negative numbers or an error."""
    if not isinstance(values, list) or not all(isinstance(x, (int, float)) and 0 <= x < 1e9 for x in values):
        raise ValueError("malformed timing samples")
    return [float(x) for x in values]


def _receive(conn: Connection, deadline: float) -> Any:
    if not conn.poll(max(0.0, deadline - time.monotonic())):
        raise TimeoutError("a timed party did not answer before the deadline")
    message = recv(conn)
    if isinstance(message, list) and message and message[0] == "error":
        raise RuntimeError(str(message[1:2]))
    return message


def _expect(conn: Connection, deadline: float, kind: str) -> list:
    message = _receive(conn, deadline)
    if not (isinstance(message, list) and message and message[0] == kind):
        raise ValueError(f"expected {kind!r} from a timed party, got {str(message)[:200]}")
    return message
