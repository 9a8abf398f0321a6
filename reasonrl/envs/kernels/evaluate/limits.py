"""Resource limits of one candidate run, and how they are applied to its process.

Soft and hard limits are set equal, so a candidate cannot raise them back (raising a soft limit
up to the hard one needs no privilege). The CPU limit's hard value is one second above the
soft one: SIGXCPU first, then SIGKILL from the kernel, which also reaches a PID-namespace init.
"""

from __future__ import annotations

import math
import os
import resource
import signal
from dataclasses import dataclass

from reasonrl.config import ByteSize, finite_numbers

DISK = 256 << 20  # the disk limit unless set (or file_size, when that is larger)
WORKER_SLACK = 1 << 30  # a worker's memory for its own work, beside the files it reads back (worker_memory)


@dataclass(frozen=True)
class SandboxLimits:
    timeout: float = 60.0
    """Wall-clock seconds per candidate run (all its test cases); its whole process group is killed after."""
    cpu_seconds: int | None = None
    """CPU seconds per candidate run (RLIMIT_CPU); none: the timeout, rounded up (under Triton's
    interpreter CPU time runs about as fast as the clock, so a lower limit would cut what the timeout allows)."""
    memory: ByteSize = 4 << 30
    """Address space a candidate may add to the interpreter's own (RLIMIT_AS above what is mapped at fork)."""
    processes: int = 64
    """Tasks (processes and threads) of the sandbox's user (RLIMIT_NPROC; root is exempt, seccomp stands there)."""
    file_size: ByteSize = 64 << 20
    """Largest file a candidate may write (RLIMIT_FSIZE), its outputs and logs included."""
    disk: ByteSize | None = None
    """All a candidate may leave in its directory together (watched while it runs and checked after:
    over it the run is killed, `crashed`, and the directory removed); default 256MiB, or file_size when larger."""
    files: int = 10_000
    """Files and directories a candidate may leave in its directory (each measurement of the disk reads
    them all, in the parent: over it the run is killed and `crashed`, as past `disk`)."""
    open_files: int = 256
    """File descriptors (RLIMIT_NOFILE)."""
    output: ByteSize = 16 << 10
    """Characters of stdout/stderr kept (head and tail) and shown to anyone, the agent's LLM included."""

    def __post_init__(self):
        finite_numbers(self, above={"timeout": 0}, prefix="sandbox limits: ")
        if self.cpu_seconds is None:  # frozen: set once, here
            object.__setattr__(self, "cpu_seconds", math.ceil(self.timeout))
        if self.cpu_seconds < 1 or self.memory < (64 << 20):
            raise ValueError("sandbox limits: cpu_seconds >= 1 and memory >= 64MiB")
        if self.processes < 1 or self.file_size < 4096 or self.open_files < 16 or self.output < 256 or self.files < 3:
            raise ValueError("sandbox limits: processes >= 1, file_size >= 4KiB, open_files >= 16, output >= 256, "
                             "files >= 3 (the sandbox's own stdout and stderr files count)")
        if self.disk is None:  # frozen: set once, here
            object.__setattr__(self, "disk", max(DISK, self.file_size))
        if self.disk < self.file_size:
            raise ValueError(f"sandbox limits: --disk ({self.disk} bytes) must be >= --file-size ({self.file_size} "
                             "bytes), or left unset (it is then the larger of 256MiB and --file-size)")


def apply(limits: SandboxLimits, user_namespace: bool, gpu: bool = False) -> None:
    """Set this process's rlimits. In a fresh user namespace the process count starts at zero,
    so `processes` is the budget itself; outside one it counts every process of the user. On a
    GPU the memory limit is on the data segment (RLIMIT_DATA) instead of the address space: CUDA
    reserves tens of GiB of address space it never touches."""
    _set(resource.RLIMIT_CORE, 0)
    _set(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1)
    _set(resource.RLIMIT_FSIZE, limits.file_size)
    _set(resource.RLIMIT_NOFILE, limits.open_files)
    if gpu:
        _set(resource.RLIMIT_DATA, _mapped_bytes() + limits.memory)
    else:
        _set(resource.RLIMIT_AS, _mapped_bytes() + limits.memory)
    _set(resource.RLIMIT_NPROC, limits.processes + (0 if user_namespace else _user_tasks(os.getuid())))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails (EFBIG) instead of killing


def worker_memory(limits: SandboxLimits) -> int:
    """Bytes an evaluator worker (zygote.py) may add to its data segment after start-up: a result
    file read back (at most `file_size`: no candidate can write more) and its copy on the way to
    the parent, and WORKER_SLACK for the rest (a timing job's messages, the warm-up kernel)."""
    return 2 * limits.file_size + WORKER_SLACK


def cap_data(extra: int) -> None:
    """The soft RLIMIT_DATA of this process (a worker, which reads what candidates leave) at its
    data segment now plus `extra` bytes. Soft only: each process the worker forks lifts it
    (`lift_data`) and then gets its own limits, so a candidate's limits and CUDA's start-up in a
    child stay what they were without the worker's cap."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = _data_bytes() + extra
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def lift_data() -> None:
    """The soft RLIMIT_DATA back at the hard limit (see `cap_data`)."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))


def _set(which: int, soft: int, hard: int | None = None) -> None:
    hard = soft if hard is None else hard
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    try:
        resource.setrlimit(which, (soft, hard))
    except (ValueError, OSError):
        pass  # e.g. NOFILE below what is open now: the other limits still apply


def _mapped_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _data_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[5]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _user_tasks(uid: int) -> int:
    """Threads of all processes of `uid` (what RLIMIT_NPROC counts)."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                count += len(os.listdir(f"/proc/{entry}/task"))
        except OSError:
            continue
    return count
