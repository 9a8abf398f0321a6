"""Timing on a GPU: a passing candidate against the PyTorch reference and the expert, interleaved.

Three parties, two processes, both forked by the worker (zygote.py) for one job:

- the reference process (trusted, not sandboxed) imports the task, writes the timing inputs
  (`input_sets` distinct sets per timing shape) into the job's `in/`, loads the expert from a
  directory the candidate cannot see, and times the reference and the expert;
- the candidate process is a sandbox like any other (sandbox.py); it keeps one pipe open.

The worker (`orchestrate`) drives rounds over the pipes in `round_order`, so the three parties'
samples interleave. Each round it tells the party, per timing shape, every timed call's input
set and a scale in [1 - SCALE_SPREAD, 1 + SCALE_SPREAD], drawn from os.urandom (`Schedule`).

Each timed call (`Bench.run`): its input set is written into fixed buffers, floating-point
tensors multiplied by the call's scale (the pointer stays and the contents are new on every
call), a 256 MiB buffer is overwritten (no warm L2), the device is synchronized, the clock read,
the function called, the device synchronized, the clock read. The clock and the synchronization
are builtins captured when this module is imported, before any candidate code runs: a candidate
that patches `time.perf_counter` or `torch.cuda.synchronize` patches something nobody reads here.

Then the outputs are checked: the worker picks `checked_calls` of the candidate's timed calls per
shape at random, the candidate keeps those calls' outputs (it is told which at the start of each
round) and saves them, and the reference process runs the reference on the same inputs (set and
scale) and compares. What this defends: caching by pointer or by contents (no two timed calls see
the same inputs, so a memo only adds its own cost; its stale answers fail the check), and answers
made up on a share f of the calls (caught with probability 1 - (1 - f)^checked_calls per shape),
as well as a kernel right on the small test shapes and wrong at scale. What it does not: code
that reads the harness's state in its own process (which calls a round keeps, the scales) or
forges its samples (timings a candidate reports about itself are taken in its own process:
speedups of 10x or more are flagged for review for that reason, timing.py); inputs with no
floating-point tensor, whose contents repeat every `input_sets` calls; a memo keyed on what the
scale leaves unchanged (the direction of its input) for an output that the scale leaves unchanged too.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
import time
from functools import partial
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any, Callable

import torch

from .compare import compare
from .limits import SandboxLimits, lift_data
from .runner import load_candidate
from .sandbox import finish_sandboxed, read_out_file, remove_tree, start_sandboxed
from .timing import round_order

CLOCK_NS = time.perf_counter_ns  # captured before any candidate is imported
_CUDA_SYNC = getattr(torch._C, "_cuda_synchronize", None)
FLUSH_BYTES = 256 << 20
PARTIES = ("reference", "expert", "candidate")
TIMED_OUTPUTS = "timed_outputs.pt"  # in the candidate's out/: the outputs of its checked calls
MAX_MESSAGE = 64 << 20
SCALE_SPREAD = 0.125  # a timed call's floating-point inputs are its set's times a scale in 1 +- this
SCALED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # (float8 has no multiply kernel)


def send(conn: Connection, message: Any) -> None:
    """Messages are JSON, never pickles: the worker must not unpickle what a candidate sends."""
    conn.send_bytes(json.dumps(message).encode())


def recv(conn: Connection) -> Any:
    return json.loads(conn.recv_bytes(MAX_MESSAGE))


def synchronizer(device: str) -> Callable[[], None]:
    return _CUDA_SYNC if device.startswith("cuda") and _CUDA_SYNC is not None else (lambda: None)


class Schedule:
    """What the worker tells the parties each round: per timing shape, every timed call's input set
    and scale, and (the candidate only) which calls' outputs to keep; and what those calls were."""

    def __init__(self, timing: dict, shapes: int):
        self.timing = timing
        self.rng = random.SystemRandom()  # os.urandom: nothing a forked candidate inherits predicts it
        total = timing["rounds"] * timing["reps"]
        self.checked = [set(self.rng.sample(range(total), min(timing["checked_calls"], total))) for _ in range(shapes)]
        self.kept: list[list[list]] = [[] for _ in range(shapes)]
        """Per shape, [input set, scale] of each call the candidate keeps, in order."""

    def round(self, r: int, party: str) -> list[dict]:
        reps, sets = self.timing["reps"], self.timing["input_sets"]
        plans = []
        for checked, kept in zip(self.checked, self.kept):
            calls = [[(r * reps + i) % sets, 1 + self.rng.uniform(-SCALE_SPREAD, SCALE_SPREAD)] for i in range(reps)]
            keep = [i for i in range(reps) if party == "candidate" and r * reps + i in checked]
            kept += [calls[i] for i in keep]
            plans.append({"calls": calls, "keep": keep})
        return plans


class Bench:
    """One party's timing state for one shape: its input sets on the device, the fixed buffers
    each call's inputs are written into, and the outputs of the calls it was told to keep."""

    def __init__(self, fn: Callable, sets: list[tuple], device: str, flush: bool):
        self.fn = fn
        self.sets = [tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args) for args in sets]
        self.buffers = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in self.sets[0])
        self.flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device=device) if flush else None
        self.sync = synchronizer(device)
        self.kept: list[Any] = []

    def load(self, j: int, scale: float = 1.0) -> tuple:
        """Input set `j` in the fixed buffers, its floating-point tensors times `scale`."""
        for buffer, value in zip(self.buffers, self.sets[j]):
            if isinstance(buffer, torch.Tensor) and buffer.dtype in SCALED:
                torch.mul(value, scale, out=buffer)
            elif isinstance(buffer, torch.Tensor):
                buffer.copy_(value)
        return tuple(b if isinstance(b, torch.Tensor) else v for b, v in zip(self.buffers, self.sets[j]))

    def warm_up(self, calls: int) -> None:
        for i in range(calls):
            self.fn(*self.load(i % len(self.sets)))
        self.sync()

    def run(self, calls: list[list], keep: list[int]) -> list[float]:
        """One round's timed calls, each on its [input set, scale]; milliseconds each. The outputs
        of the calls numbered in `keep` are kept (copied after the clock stopped)."""
        samples = []
        for i, (j, scale) in enumerate(calls):
            args = self.load(j, scale)
            if self.flush is not None:
                self.flush.zero_()
            self.sync()
            start = CLOCK_NS()
            out = self.fn(*args)
            self.sync()
            samples.append((CLOCK_NS() - start) / 1e6)
            if i in keep:
                self.kept.append(_detach(out))
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
    """Answer ("round", party, plans) with that party's samples per shape until ("save",) or
    ("check", ...) arrives; return that last message."""
    for per_shape in benches.values():
        for bench in per_shape:
            bench.warm_up(timing["warmup"])
    send(conn, ["ready"])
    while True:
        message = recv(conn)
        if message[0] != "round":
            return message
        _, party, plans = message
        send(conn, [bench.run(plan["calls"], plan["keep"]) for bench, plan in zip(benches[party], plans)])


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
            torch.save([bench.kept for bench in benches["candidate"]], os.path.join(ctx.work, TIMED_OUTPUTS))
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
        saved = torch.load(io.BytesIO(read_out_file(message[1], job["limits"]["file_size"])), weights_only=True)
        send(conn, ["checked", _check(job["shapes"], benches["reference"], saved, message[2],
                                      task.tolerance_for(dtype))])
    except BaseException as exc:  # noqa: BLE001 - a broken task is the evaluator's error, reported
        send(conn, ["error", f"reference side: {type(exc).__name__}: {exc}"[:2000]])


def _check(shapes: list, benches: list[Bench], saved: Any, kept: list[list[list]], tolerance) -> str | None:
    """The first difference between the candidate's saved outputs of its checked calls and the
    reference's on the same inputs (`kept`: per shape, each call's [input set, scale])."""
    if not (type(saved) is list and len(saved) == len(kept)
            and all(type(s) is list and len(s) == len(k) for s, k in zip(saved, kept))):
        return "the outputs of the checked timed calls are missing (the harness saves one per checked call)"
    for shape, bench, outputs, calls in zip(shapes, benches, saved, kept):
        for out, (j, scale) in zip(outputs, calls):
            found = compare(_detach(bench.fn(*bench.load(j, scale))), out, *tolerance)
            if found:
                return f"timing shape {tuple(shape)}, a timed call on input set {j} scaled by {scale:.4f}: {found}"
    return None


def orchestrate(job: dict, job_dir: str, source_path: str) -> dict:
    """The worker's side of a timing job: fork both parties, run the rounds, collect."""
    limits = SandboxLimits(**job["limits"])
    ref_dir = tempfile.mkdtemp(prefix="kernel-ref-")
    ref_conn, ref_end = Pipe()
    start = time.monotonic()
    deadline = start + limits.timeout
    schedule = Schedule(job["timing"], len(job["shapes"]))
    ref_pid = os.fork()
    if ref_pid == 0:
        ref_conn.close()
        lift_data()  # the worker's own memory cap (zygote.py): this process is trusted and may start CUDA
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
                send(conns[party], ["round", party, schedule.round(r, party)])
                got = _receive(conns[party], deadline)
                if not isinstance(got, list) or len(got) != len(job["shapes"]):
                    raise ValueError(f"{party} sent no samples")
                for shape_samples, values in zip(samples[party], got):
                    shape_samples.extend(_milliseconds(values))
        send(cand_conn, ["save"])
        _expect(cand_conn, deadline, "saved")
        send(ref_conn, ["check", os.path.join(job_dir, "out", TIMED_OUTPUTS), schedule.kept])
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
