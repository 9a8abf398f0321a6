"""The verifier worker process: `python -m reasonrl.envs.math.worker --fd N --check MOD:FN ...`.

It answers each item of each chunk it receives with one bool, in order, and exits when its
pipe closes or it receives None. It ignores SIGINT (Ctrl-C is the parent's to handle), caps its
address space, and re-arms a CPU-time rlimit before every item, so a worker orphaned mid-item
by a killed parent still dies. Nothing here is imported by the trainer process.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import resource
import signal
from multiprocessing.connection import Connection
from typing import Callable

# Judged before we report ready, so imports, parser tables and SymPy's first simplify (~0.4 s
# cold) never count against an item's timeout.
WARM_UP = [("\\frac{1}{2}", "0.5"), ("(x+1)^2", "x^2+2x+1"), ("[1, 2)", "(1, 2]")]


def resolve(spec: str) -> Callable[..., bool]:
    """"package.module:function" -> the function."""
    module, _, name = spec.partition(":")
    target = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target


def serve(conn: Connection, check_spec: str, cpu_limit: float, max_memory_mb: int | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_resources(max_memory_mb)
    try:
        check = resolve(check_spec)
        for item in WARM_UP:
            check(*item)
    except Exception as exc:
        conn.send(("error", repr(exc)))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if chunk is None:
            return
        for item in chunk:
            _arm_cpu_limit(cpu_limit)
            try:
                verdict = bool(check(*item))
            except Exception:  # malformed input is the common case here: it scores 0
                verdict = False
            conn.send(verdict)


def _limit_resources(max_memory_mb: int | None) -> None:
    """No core files (SIGXCPU would write one); address space capped at what is mapped now
    plus `max_memory_mb`, so one item cannot eat the machine's memory before its timeout."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not max_memory_mb:
        return
    try:
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return  # not Linux: the timeout still bounds the item
    limit = mapped + (max_memory_mb << 20)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or limit <= hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _arm_cpu_limit(seconds: float) -> None:
    """Soft CPU limit `seconds` past the CPU time used so far: SIGXCPU then kills us."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard == resource.RLIM_INFINITY or soft <= hard:
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--check", required=True)
    parser.add_argument("--cpu-limit", type=float, required=True)
    parser.add_argument("--max-memory-mb", type=int, default=0)
    args = parser.parse_args()
    serve(Connection(args.fd), args.check, args.cpu_limit, args.max_memory_mb or None)


if __name__ == "__main__":
    main()
