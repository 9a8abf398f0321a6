"""The evaluator's worker: `python -m reasonrl.envs.kernels.evaluate.zygote --fd N ...`.

A warm process that never runs candidate code itself. It imports torch and Triton once (and,
without a GPU, runs one interpreted kernel so Triton's interpreter is warm), then for each job
forks a sandboxed child (sandbox.py) that runs it, waits, and answers with what came back. A
fork costs ~30 ms where a fresh interpreter importing torch and Triton costs ~1.5 s, which is
why a verdict under the interpreter takes about as long as the kernel itself.

It speaks the protocol of reasonrl/envs/math/worker.py (WorkerPool in envs/math/pool.py
drives it): ("ready", pid) once, then one answer per item of each chunk, in order. A job is a
dict (evaluator.py builds it) and its answer a dict of bytes and numbers: the parent loads the
result with `torch.load(weights_only=True)`, this process does not even unpickle it. A result
file that is not a regular file is not read (the answer says why: `result_error`, the candidate's
`crashed`), nor one larger than the job's `result_bytes` (what the task's outputs can need,
plan.py; `file_size` when unset) or `file_size` (no candidate can write more): the answer gives
its size, and the parent's verdict is `output_too_large`.

It runs no candidate code but reads what candidates leave, so it caps its own memory: the pool's
`--max-memory-mb` (limits.worker_memory) above what it holds at start-up, as a soft RLIMIT_DATA
that every process it forks lifts before setting its own limits.

It imports no task, reference or expert: the children it forks inherit its memory.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import tempfile
from multiprocessing.connection import Connection
from typing import Any

import torch

from . import runner, speed
from .limits import SandboxLimits, cap_data
from .sandbox import FileTooLarge, UnreadableFile, read_out_file, remove_tree, run_sandboxed


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in a fresh sandbox; the raw result and how the process ended."""
    job_dir = tempfile.mkdtemp(prefix="kernel-job-")
    try:
        source_path = _stage(job_dir, job["source"])
        limits = SandboxLimits(**job["limits"])
        if job["kind"] == "timing":
            return speed.orchestrate(job, job_dir, source_path)
        if job["kind"] == "function":
            body = functools.partial(runner.run_function, source_path=source_path, entry=job["entry"],
                                     inputs_blob=job["inputs"], device=job["device"])
        else:
            body = functools.partial(runner.run_script, source_path=source_path, device=job["device"])
        outcome = run_sandboxed(body, job_dir, limits, job["hidden"], job.get("namespaces", True),
                                gpu=job["device"].startswith("cuda"))
        limit = min(limits.file_size, job.get("result_bytes", limits.file_size))
        return {**_read_result(os.path.join(job_dir, "out", runner.RESULT_FILE), limit),
                "exit_code": outcome.exit_code, "signal": outcome.signal, "timed_out": outcome.timed_out,
                "elapsed": outcome.elapsed, "stdout": _relative(outcome.stdout, job_dir),
                "stderr": _relative(outcome.stderr, job_dir), "cpu_seconds": outcome.cpu_seconds,
                "cpu_limit": limits.cpu_seconds, "over_disk": outcome.over_disk, "disk_limit": limits.disk,
                "files_limit": limits.files}
    finally:
        remove_tree(job_dir)


def _relative(text: str, job_dir: str) -> str:
    """Logs without the job's random directory name (verdicts read the same in every run)."""
    return text.replace(os.path.join(job_dir, "in") + os.sep, "").replace(job_dir + os.sep, "")


def _stage(job_dir: str, source: str) -> str:
    """in/candidate.py (read-only), and an empty out/ for the candidate to work in."""
    os.makedirs(os.path.join(job_dir, "in"))
    os.makedirs(os.path.join(job_dir, "out"))
    path = os.path.join(job_dir, "in", "candidate.py")
    with open(path, "w", encoding="utf-8", errors="replace") as f:
        f.write(source)
    os.chmod(path, 0o444)
    return path


def _read_result(path: str, limit: int) -> dict[str, Any]:
    """The answer's `result` (the file's bytes; None when there is none, it is not a regular file
    or it is larger than `limit`), with `result_size` when it is too large, `result_error` (why it
    was not read) when it is not a regular file."""
    try:
        return {"result": read_out_file(path, limit)}
    except FileNotFoundError:
        return {"result": None}
    except FileTooLarge as exc:
        return {"result": None, "result_size": exc.size}
    except UnreadableFile as exc:
        return {"result": None, "result_error": str(exc)}
    except OSError as exc:  # e.g. the candidate took its own read permission away
        return {"result": None, "result_error": f"{os.path.basename(path)} could not be read ({exc.strerror})"}


WARM_UP_KERNEL = '''
import torch, triton, triton.language as tl

@triton.jit
def _twice(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(y_ptr + offsets, tl.load(x_ptr + offsets, mask=offsets < n) * 2, mask=offsets < n)

def twice(x):
    y = torch.empty_like(x)
    _twice[(1,)](x, y, x.numel(), BLOCK=16)
    return y
'''


def warm_up() -> None:
    """Run one interpreted kernel here (never under CUDA: a forked child cannot use a CUDA
    context made before the fork)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    directory = tempfile.mkdtemp(prefix="kernel-warm-")
    try:
        path = os.path.join(directory, "warm.py")
        with open(path, "w") as f:
            f.write(WARM_UP_KERNEL)
        module = runner.load_candidate(path, "_reasonrl_warm_up")
        module.twice(torch.ones(5))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def serve(conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)  # one core per worker; also keeps OpenMP out of the forked children
    try:
        warm_up()
    except Exception as exc:
        conn.send(("error", repr(exc)))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for (job,) in chunk:
            try:
                answer = run_job(job)
            except Exception as exc:  # a bug here, not the candidate's doing: say it, keep serving
                answer = {"result": None, "exit_code": None, "signal": None, "timed_out": False, "elapsed": 0.0,
                          "stdout": "", "stderr": f"evaluator worker error: {exc!r}"}
            conn.send(answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--check", default="")  # WorkerPool's flags; the job function is fixed
    parser.add_argument("--cpu-limit", type=float, default=0)
    parser.add_argument("--max-memory-mb", type=int, default=0)
    args = parser.parse_args()
    if args.max_memory_mb > 0:
        cap_data(args.max_memory_mb << 20)
    serve(Connection(args.fd))


if __name__ == "__main__":
    main()
