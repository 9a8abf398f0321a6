"""Run a function in a sandboxed child process: the mechanism every candidate goes through.

    outcome = run_sandboxed(body, job_dir, limits, hidden)

`job_dir` holds `in/` (the candidate's files, read-only to it) and `out/` (its working
directory, the one place it may write). The parent forks; the child

1. starts a new session (so its process group is its own), asks for SIGKILL when the parent
   dies, points stdout/stderr at files in `out/`, closes every other inherited descriptor and
   scrubs its environment (no API keys reach a candidate);
2. enters new namespaces (isolation.py): no network, a read-only filesystem except `out/`, the
   hidden paths covered; when it got a PID namespace it forks once more, so that the candidate
   runs as that namespace's PID 1 and everything it leaves behind dies with it;
3. sets rlimits (limits.py), installs the seccomp filter (seccomp.py) and the audit hook
   (guard.py), and calls `body(context)`.

The parent waits on a pidfd with the wall-clock timeout, measuring `out/` every WATCH_EVERY
seconds, or WATCH_COST times as long as the last measurement took when that is longer (the rlimit
caps each file, not their sum: a run past `limits.disk` bytes or `limits.files` entries is killed
then, and `out/` is measured once more after it ends), then kills the whole process group with SIGKILL
whatever happened, and reaps, reading the CPU time the run used (so that a kill at the CPU limit
can be told from other deaths). Stdout and stderr come back truncated to `limits.output`
characters (head and tail), never whole.

Whatever the harness reads back from `out/` (the logs here, the result file in zygote.py, the
timed outputs in speed.py) the candidate may have replaced: a symlink to /dev/zero reads without
end, a FIFO blocks `open` until a writer comes. Every such read goes through `open_out_file`.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import shutil
import signal
import stat
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from . import isolation, limits as rlimits, seccomp
from .guard import Guard, compilers
from .limits import SandboxLimits

KEEP_ENV = ("PATH", "LANG", "LC_ALL", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
            "ROCR_VISIBLE_DEVICES", "CUDA_HOME", "ROCM_PATH", "LD_LIBRARY_PATH")
CHILD_ERROR = 70  # the sandbox itself failed to set up (not the candidate's fault)
WATCH_EVERY = 0.25  # seconds between two measurements of the work directory, at least
WATCH_COST = 10  # and at least this many times the last one's duration: measuring is the parent's CPU, uncharged
ENTRY_BYTES = 4096  # what any file or directory counts for at least (a flood of empty files fills a disk too)
LOG_BYTES = 1 << 20  # bytes read back of each of stdout and stderr (head and tail), before `limits.output` applies
LAYERS = frozenset({"user-namespace", "network-namespace", "pid-namespace", "hidden-paths", "read-only-filesystem",
                    "private-proc", "seccomp", "seccomp-gpu"})  # every layer a run can report (isolation.py, here)


@dataclass
class Context:
    """What the body gets: where it may write, the guard recording violations, the layers."""

    work: str
    guard: Guard
    layers: set[str] = field(default_factory=set)


@dataclass
class Outcome:
    exit_code: int | None  # None when killed by a signal
    signal: int | None
    timed_out: bool
    elapsed: float
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0
    """CPU time of the run (the child and every process it reaped)."""
    over_disk: bool = False
    """It left more than `limits.disk` bytes in its directory (and was killed when seen running)."""


def run_sandboxed(body: Callable[[Context], None], job_dir: str, limits: SandboxLimits, hidden: list[str],
                  namespaces: bool = True, gpu: bool = False) -> Outcome:
    """Run `body` in a sandboxed child and wait for it (at most `limits.timeout` seconds)."""
    start = time.monotonic()
    pid = start_sandboxed(body, job_dir, limits, hidden, namespaces, gpu=gpu)
    return finish_sandboxed(pid, job_dir, limits, start)


def start_sandboxed(body: Callable[[Context], None], job_dir: str, limits: SandboxLimits, hidden: list[str],
                    namespaces: bool = True, keep_fds: tuple[int, ...] = (), gpu: bool = False) -> int:
    """Fork the sandboxed child and return its pid; `keep_fds` stay open in it (a pipe for the
    timing protocol), every other inherited descriptor is closed. `gpu`: see `_child`."""
    work = os.path.join(job_dir, "out")
    pid = os.fork()
    if pid == 0:  # the child never returns from here
        _child(body, work, limits, hidden, namespaces, keep_fds, gpu)
    return pid


def finish_sandboxed(pid: int, job_dir: str, limits: SandboxLimits, start: float, wait: bool = True) -> Outcome:
    """Wait for the child until `start + limits.timeout` (or not at all) while watching its disk
    use, kill its process group whatever happened, reap it, and read its output."""
    work = os.path.join(job_dir, "out")
    ended, over_disk = _watch(pid, start + limits.timeout if wait else time.monotonic(), work, limits)
    _kill_group(pid)
    _, status, usage = os.wait4(pid, 0)
    _kill_group(pid)  # anything the candidate left in its group
    over_disk = over_disk or over_limits(work, limits)
    code = os.waitstatus_to_exitcode(status)
    return Outcome(code if code >= 0 else None, -code if code < 0 else None, not ended and wait and not over_disk,
                   time.monotonic() - start, truncate(_read(os.path.join(work, ".stdout")), limits.output),
                   truncate(_read(os.path.join(work, ".stderr")), limits.output),
                   usage.ru_utime + usage.ru_stime, over_disk)


def _watch(pid: int, deadline: float, work: str, limits: SandboxLimits) -> tuple[bool, bool]:
    """(whether `pid` exited before `deadline`, whether `work` went over the disk limits first)."""
    fd = os.pidfd_open(pid)
    every = WATCH_EVERY
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, min(every, deadline - time.monotonic())))
            if ready:
                return True, False
            began = time.monotonic()
            if over_limits(work, limits):
                return False, True
            every = max(WATCH_EVERY, WATCH_COST * (time.monotonic() - began))
            if time.monotonic() >= deadline:
                return False, False
    finally:
        os.close(fd)


def over_limits(work: str, limits: SandboxLimits) -> bool:
    """Whether `work` holds more than `limits.disk` bytes or `limits.files` entries."""
    used, entries = disk_usage(work, limits.disk, limits.files)
    return used > limits.disk or entries > limits.files


def disk_usage(path: str, limit: int, files: int) -> tuple[int, int]:
    """(bytes under `path`: blocks in use, at least ENTRY_BYTES per entry; entries), counted until
    past `limit` bytes or `files` entries (so that a scan costs at most `files` entries' stats). A
    directory the candidate locked (chmod 000: the parent is the same user) is unlocked to be read;
    one that still cannot be read counts as over the limit."""
    total, count, todo = 0, 0, [path]
    while todo and total <= limit and count <= files:
        directory = todo.pop()
        try:
            entries = _scandir(directory)
        except (FileNotFoundError, NotADirectoryError):  # gone
            continue
        except OSError:
            return limit + 1, count
        with entries:
            for entry in entries:
                count += 1
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += max(st.st_blocks * 512, ENTRY_BYTES)
                if entry.is_dir(follow_symlinks=False):
                    todo.append(entry.path)
                if total > limit or count > files:
                    break
    return total, count


def _scandir(directory: str):
    try:
        return os.scandir(directory)
    except PermissionError:
        _unlock(directory)
        return os.scandir(directory)


def _unlock(directory: str) -> None:
    """Give the owner back rwx on `directory`, never through a symlink (the candidate may still be
    running and swap one in: the path is opened without following links, then changed by its fd)."""
    fd = os.open(directory, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY)
    try:
        os.chmod(f"/proc/self/fd/{fd}", 0o700)
    finally:
        os.close(fd)


class UnreadableFile(OSError):
    """A file in `out/` that is not read: a symlink, or not a regular file."""


class FileTooLarge(UnreadableFile):
    """A regular file in `out/` over the size limit of its read; `size`: its size."""

    def __init__(self, path: str, limit: int, size: int):
        super().__init__(f"{os.path.basename(path)} holds more than {limit} bytes")
        self.size = size


def open_out_file(path: str):
    """`path` (a file in a candidate's `out/`) open for reading in binary, if it is a regular file:
    never through a symlink, never waiting on a FIFO. FileNotFoundError when there is none,
    UnreadableFile when it is something else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableFile(f"{os.path.basename(path)} is a symbolic link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnreadableFile(f"{os.path.basename(path)} is not a regular file")
    return os.fdopen(fd, "rb")


def read_out_file(path: str, limit: int) -> bytes:
    """All of a regular file in a candidate's `out/` (see `open_out_file`), reading at most `limit`
    + 1 bytes: FileTooLarge when it holds more than `limit`."""
    with open_out_file(path) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(limit + 1) if size <= limit else b""
    if max(size, len(data)) > limit:  # (a file that grew after the fstat is caught by the read)
        raise FileTooLarge(path, limit, max(size, len(data)))
    return data


def remove_tree(path: str) -> None:
    """shutil.rmtree, after unlocking every directory under `path` (rmtree with ignore_errors leaves
    a directory the candidate made unreadable, and everything in it, on disk)."""
    todo = [path]
    while todo:
        directory = todo.pop()
        try:
            with _scandir(directory) as entries:
                todo += [e.path for e in entries if e.is_dir(follow_symlinks=False)]
            if not os.access(directory, os.W_OK | os.X_OK):  # its files could not be unlinked
                _unlock(directory)
        except OSError:
            continue
    shutil.rmtree(path, ignore_errors=True)


def _kill_group(pid: int) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _child(body, work: str, limits: SandboxLimits, hidden: list[str], namespaces: bool,
           keep_fds: tuple[int, ...], gpu: bool) -> None:
    """The sandboxed child. With `gpu` (the candidate runs on CUDA) four things differ, because
    Triton compiles a kernel at its first launch: the device and Triton's driver are initialized
    before confinement (that uses ctypes and ldconfig), the work directory stays executable
    (Triton loads the launcher it builds there), seccomp lets processes start (ptxas, the C
    compiler) and the audit hook lets exactly Triton's compilers run (guard.compilers()); the
    memory limit is on data, not address space (limits.py)."""
    try:
        rlimits.lift_data()  # the worker's own memory cap; this child's limits are set below
        os.setsid()
        isolation.set_parent_death_signal(signal.SIGKILL)
        _redirect_output(work, keep_fds)
        _scrub_environment(work)
        layers = isolation.isolate(work, hidden, executable=gpu) if namespaces else set()
        if "pid-namespace" in layers:
            _become_namespace_init()
            layers |= _fresh_proc()
        os.chdir(work)
        if gpu:
            _warm_gpu()
        rlimits.apply(limits, "user-namespace" in layers, gpu)
        if seccomp.install(processes=gpu):
            layers.add("seccomp" if not gpu else "seccomp-gpu")
        guard = Guard(work, hidden, compilers() if gpu else frozenset())
        _forget_harness(hidden)
        guard.install()
    except BaseException:  # the sandbox could not be built: say so, run nothing
        traceback.print_exc()
        os._exit(CHILD_ERROR)
    try:
        body(Context(work, guard, layers))
        code = 0
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _redirect_output(work: str, keep_fds: tuple[int, ...]) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, name in ((1, ".stdout"), (2, ".stderr")):
        target = os.open(os.path.join(work, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    limit = os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 4096
    low = 3
    for fd in sorted(f for f in keep_fds if f >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, limit)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


def _scrub_environment(work: str) -> None:
    kept = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    os.environ.clear()
    os.environ.update(kept, HOME=work, TMPDIR=work, TRITON_CACHE_DIR=os.path.join(work, ".triton"))
    # tempfile caches its directory on first use (the zygote's, read-only in here): Triton's
    # compiler makes its build directories with tempfile, so a GPU run needs this
    tempfile.tempdir = work


def _become_namespace_init() -> None:
    """Fork once more: the child is PID 1 of the new namespace and goes on; this process waits
    for it and ends as it did: with its exit code, or killed by its signal."""
    pid = os.fork()
    if pid == 0:
        isolation.set_parent_death_signal(signal.SIGKILL)
        return
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # die of the same signal, so the parent reads a signal death and not 128 + the signal
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if -code != signal.SIGKILL:
            signal.signal(-code, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [-code])
        os.kill(os.getpid(), -code)
    os._exit(code if code >= 0 else 128 - code)  # (a signal whose default is not to end the process)


def _warm_gpu() -> None:
    """CUDA, torch's device queries and Triton's driver up before confinement: Triton's driver
    runs ldconfig and loads libcuda with ctypes, and torch counts devices through NVML with
    ctypes, all of which the sandbox refuses later (guard.py). On an H200 a candidate's first
    launch was still denied a `ctypes.dlopen` whose caller the message did not name then; it does
    now, and whatever it names belongs here."""
    import torch
    from triton.runtime import driver

    torch.cuda.init()
    torch.cuda.device_count()
    torch.cuda.get_device_properties(torch.cuda.current_device())
    nvml_count = getattr(torch.cuda, "_device_count_nvml", None)  # private: absent in some versions
    if nvml_count is not None:
        nvml_count()
    driver.active.get_current_device()
    driver.active.get_current_target()
    driver.active.utils  # noqa: B018 - builds and loads Triton's CUDA helpers into the cache


def _fresh_proc() -> set[str]:
    """A /proc of our own PID namespace: other processes (and their environments) out of sight."""
    libc = isolation._libc()
    ok = libc.mount(b"proc", b"/proc", b"proc", isolation.MS_NOSUID | isolation.MS_NODEV, None) == 0
    return {"private-proc"} if ok else set()


def _forget_harness(hidden: list[str]) -> None:
    """Drop reasonrl from sys.modules, so `import reasonrl...` must go through the audit hook,
    and the hidden paths from sys.path, so that the import system never lists them."""
    for name in [n for n in sys.modules if n == "reasonrl" or n.startswith("reasonrl.")]:
        del sys.modules[name]
    roots = [os.path.realpath(h) for h in hidden]
    sys.path[:] = [p for p in sys.path if not any(os.path.realpath(p or ".") == r or
                                                  os.path.realpath(p or ".").startswith(r + os.sep) for r in roots)]
    sys.path_importer_cache.clear()


def _read(path: str, limit: int = LOG_BYTES) -> str:
    """A log the candidate's process wrote: whole up to `limit` bytes, else its head and tail."""
    try:
        with open_out_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size <= limit:
                return f.read(limit).decode(errors="replace")
            head = f.read(limit // 2)
            f.seek(size - limit // 2)
            return (head + b"\n...\n" + f.read(limit // 2)).decode(errors="replace")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return f"[{os.path.basename(path)} was not read: {exc}]"


def truncate(text: str, limit: int) -> str:
    """At most about `limit` characters: the head and the tail, with a note of what was cut."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"
