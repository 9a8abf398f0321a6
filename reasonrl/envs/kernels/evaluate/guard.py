"""An audit hook (PEP 578) for candidate processes: the layer that says what was attempted.

PEP 578 hooks are not a sandbox on their own (native code does not raise audit events), so
the kernel-level layers (namespaces, seccomp, rlimits) are what stop an escape; this hook turns
an attempt into a clear error for the candidate and a recorded violation for the verdict, and
covers what those layers cannot see from outside the interpreter:

- writes (open for writing, rename, remove, mkdir, chmod, ...) outside the work directory;
- any access to a hidden path (the task suite, the repository), and imports of `reasonrl`;
- sockets, new processes and programs, signals, rlimit changes, ctypes;
- reaching into the harness: gc's object walks, trace and profile hooks, code replacement.

Once added a hook cannot be removed; each violation is written to stderr as one `[sandbox] denied
...` line, which the parent also reads, and kept in `violations` (the first MAX_VIOLATIONS distinct
ones, VIOLATION_CHARS characters each: the parent reads no more than that of a result either).

On a GPU, Triton compiles a kernel at its first launch by running `ptxas` (or `ld.lld`) and a C
compiler for its launcher: those programs (`compilers()`, by real path) may be started there.
ctypes stays denied on a GPU too: what Triton and torch load with it (the CUDA driver, NVML) is
loaded before confinement (sandbox.py, `_warm_gpu`). Trusting "their" calls afterwards was tried
and dropped: a trusted function can be handed the candidate's callable or globals, and torch.cuda
itself compiles and launches CUDA C through ctypes, which would let a candidate pass without
Triton. A denial names the library and the Python function that asked (`module:line (name)`),
so a platform whose libraries load later says what to warm up.
"""

from __future__ import annotations

import os
import shutil
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
DENY_ALWAYS = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.gethostbyaddr", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
    "os.forkpty", "os.kill", "os.killpg", "pty.spawn", "resource.setrlimit", "resource.prlimit", "gc.get_objects",
    "gc.get_referrers", "gc.get_referents", "sys.settrace", "sys.setprofile", "sys._current_frames",
})
CTYPES_EVENTS = frozenset({"ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata",
                           "ctypes.call_function", "ctypes.PyObj_FromPtr"})
PATH_EVENTS = {  # event -> index of the path argument that gets written
    "os.rename": 1, "os.replace": 1, "os.remove": 0, "os.rmdir": 0, "os.mkdir": 0, "os.symlink": 1,
    "os.link": 1, "os.truncate": 0, "os.chmod": 0, "os.chown": 0, "os.utime": 0, "os.chflags": 0,
    "os.setxattr": 0, "os.removexattr": 0, "shutil.rmtree": 0, "shutil.move": 1, "shutil.copyfile": 1,
}
READ_EVENTS = {"os.listdir": 0, "os.scandir": 0, "glob.glob": 0, "os.chdir": 0}
SPAWN_EVENTS = {"subprocess.Popen", "os.posix_spawn"}
MAX_VIOLATIONS = 20
VIOLATION_CHARS = 300
COMPILER_NAMES = ("cc", "gcc", "clang", "g++", "clang++", "ldconfig", "hipconfig")


def compilers() -> frozenset[str]:
    """Real paths of the programs Triton runs to compile a kernel: its bundled tools (ptxas,
    cuobjdump, ld.lld, ...), the C compilers on PATH, and ldconfig."""
    import triton

    found = set()
    backends = os.path.join(os.path.dirname(triton.__file__), "backends")
    for root, _, files in os.walk(backends):
        found |= {os.path.realpath(os.path.join(root, f)) for f in files if os.access(os.path.join(root, f), os.X_OK)}
    for name in COMPILER_NAMES:
        path = shutil.which(name) or shutil.which(name, path="/sbin:/usr/sbin")
        if path:
            found.add(os.path.realpath(path))
    return frozenset(found)


class Guard:
    def __init__(self, writable: str, hidden: list[str], executables: frozenset[str] = frozenset()):
        """`executables`: programs that may be started (on a GPU, Triton's compilers)."""
        self.writable = os.path.realpath(writable)
        self.hidden = [os.path.realpath(p) for p in hidden]
        self.executables = executables
        self.violations: list[str] = []
        self._busy = False

    def install(self) -> None:
        sys.dont_write_bytecode = True
        sys.addaudithook(self)

    def __call__(self, event: str, args: tuple) -> None:
        if self._busy:  # events raised by our own checks (realpath's stat calls)
            return
        self._busy = True
        try:
            # the raising frame is looked up only where it is reported: not on every open or import
            reason = self._judge(event, args, _caller() if event in CTYPES_EVENTS else None)
        finally:
            self._busy = False
        if reason and _from_linecache():  # a traceback quoting a hidden harness file: deny, quietly
            raise PermissionError(f"sandbox: {reason} is not allowed")
        if reason:
            if len(self.violations) < MAX_VIOLATIONS and reason[:VIOLATION_CHARS] not in self.violations:
                self.violations.append(reason[:VIOLATION_CHARS])
            try:
                os.write(2, f"\n[sandbox] denied {reason}\n".encode(errors="replace"))
            except OSError:
                pass
            raise PermissionError(f"sandbox: {reason} is not allowed")

    def _judge(self, event: str, args: tuple, frame=None) -> str | None:
        """Why the event is denied, or None; `frame`: the Python frame that raised it."""
        if event in SPAWN_EVENTS and self.executables and self._program(args) in self.executables:
            return None
        if event in DENY_ALWAYS:
            return event
        if event in CTYPES_EVENTS:
            return self._ctypes(event, args, frame)
        if event == "import":
            name = str(args[0])
            return f"import {name}" if name == "reasonrl" or name.startswith("reasonrl.") else None
        if event == "open":
            return self._open(args)
        if event == "object.__setattr__" and len(args) > 1 and args[1] in ("__code__", "__globals__"):
            return f"replacing {args[1]}"
        if event in PATH_EVENTS:
            return self._path(event, args[PATH_EVENTS[event]], write=True)
        if event in READ_EVENTS and args:
            return self._path(event, args[READ_EVENTS[event]], write=False)
        return None

    @staticmethod
    def _ctypes(event: str, args: tuple, frame) -> str:
        """The reason, naming the library (for a dlopen) and the first Python function outside
        ctypes that asked, so a denial on a new platform says what to load before confinement."""
        while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "ctypes":
            frame = frame.f_back
        caller = f"{frame.f_globals.get('__name__')}:{frame.f_lineno} ({frame.f_code.co_name})" if frame else "?"
        what = f"{event} {args[0] if args else None}" if event == "ctypes.dlopen" else event
        return f"{what} from {caller}"

    def _program(self, args: tuple) -> str | None:
        """The real path of the program a spawn event starts (its executable, else argv[0])."""
        program = args[0] if args and args[0] else (args[1][0] if len(args) > 1 and args[1] else None)
        if not isinstance(program, (str, bytes, os.PathLike)):
            return None
        program = os.fsdecode(program)
        program = program if os.sep in program else (shutil.which(program) or program)
        return os.path.realpath(program)

    def _open(self, args: tuple) -> str | None:
        path, mode, flags = (list(args) + [None, None, 0])[:3]
        write = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        return self._path("open", path, write)

    def _path(self, event: str, path, write: bool) -> str | None:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return None  # a file descriptor: opened earlier, under these same checks
        real = os.path.realpath(os.fsdecode(path))
        if any(_under(real, h) for h in self.hidden):
            return f"{event} {real} (hidden)"
        if write and real != os.devnull and not _under(real, self.writable):
            return f"{event} {real} (writing outside the work directory)"
        return None


def _caller():
    """The Python frame that raised the event being judged (None when no Python code did)."""
    try:
        return sys._getframe(2)  # 0: _caller, 1: Guard.__call__, 2: the frame that raised the event
    except ValueError:
        return None


def _from_linecache() -> bool:
    try:
        frame = sys._getframe(2)
    except ValueError:  # no Python frame raised the event
        return False
    for _ in range(6):
        if frame is None:
            return False
        if frame.f_code.co_filename.endswith(("linecache.py", "traceback.py")):
            return True
        frame = frame.f_back
    return False


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
