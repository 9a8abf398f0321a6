"""An audit hook (PEP 578) for candidate processes: the layer that says what was attempted.

PEP 578 hooks are not a sandbox on their own (native code does not raise audit events), so
the kernel-level layers (namespaces, seccomp, rlimits) are what stop an escape; this hook turns
an attempt into a clear error for the candidate and a recorded violation for the verdict, and
covers what those layers cannot see from outside the interpreter:

- writes (open for writing, rename, remove, mkdir, chmod, ...) outside the work directory;
- any access to a hidden path (the task suite, the repository), and imports of `reasonrl`;
- sockets, new processes and programs, signals, rlimit changes, ctypes;
- reaching into the harness: gc's object walks, trace and profile hooks, code replacement.

Once added a hook cannot be removed; each violation is appended to `violations` and written to
stderr as one `[sandbox] denied ...` line, which the parent also reads.

On a GPU, Triton compiles a kernel at its first launch by running `ptxas` (or `ld.lld`) and a C
compiler for its launcher: those programs (`compilers()`, by real path) may be started there.
Triton's and `torch.cuda`'s own code also loads the GPU driver's libraries with ctypes (Triton
checks that the CUDA driver is active; torch counts devices through NVML): there, ctypes events
are allowed when the Python function that raises them is one of the functions those packages
defined before the hook went in (`trusted_code()`, by code object: a function the candidate
writes, or a trusted module's attribute it replaces, is not one of them), and a library they open
is a system one (a bare name, or a path outside the work directory: nothing the candidate built).
"""

from __future__ import annotations

import os
import shutil
import sys
import types

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
DENY_ALWAYS = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.gethostbyaddr", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
    "os.forkpty", "os.kill", "os.killpg", "pty.spawn", "resource.setrlimit", "resource.prlimit", "gc.get_objects",
    "gc.get_referrers", "gc.get_referents", "sys.settrace", "sys.setprofile", "sys._current_frames",
})
CTYPES_EVENTS = frozenset({"ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata",
                           "ctypes.call_function", "ctypes.PyObj_FromPtr"})
TRUSTED_PACKAGES = ("triton", "torch.cuda")  # whose functions may use ctypes on a GPU (module docstring)
GPU_LIBRARIES = ("libcuda.", "libnvidia-ml.", "libnvrtc", "libcudart", "libamdhip64", "libamd_smi", "libhiprtc")
"""The libraries trusted code may open (by file name prefix): the GPU drivers' and runtimes'."""
PATH_EVENTS = {  # event -> index of the path argument that gets written
    "os.rename": 1, "os.replace": 1, "os.remove": 0, "os.rmdir": 0, "os.mkdir": 0, "os.symlink": 1,
    "os.link": 1, "os.truncate": 0, "os.chmod": 0, "os.chown": 0, "os.utime": 0, "os.chflags": 0,
    "os.setxattr": 0, "os.removexattr": 0, "shutil.rmtree": 0, "shutil.move": 1, "shutil.copyfile": 1,
}
READ_EVENTS = {"os.listdir": 0, "os.scandir": 0, "glob.glob": 0, "os.chdir": 0}
SPAWN_EVENTS = {"subprocess.Popen", "os.posix_spawn"}
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


def trusted_code(packages: tuple[str, ...] = TRUSTED_PACKAGES) -> frozenset[types.CodeType]:
    """The code objects of every function (methods and nested functions included) that the loaded
    modules of `packages` define: taken before the hook goes in, so nothing the candidate makes
    later is among them."""
    found: set[types.CodeType] = set()

    def add(code: types.CodeType) -> None:
        if code not in found:
            found.add(code)
            for const in code.co_consts:
                if isinstance(const, types.CodeType):
                    add(const)

    def walk(namespace: dict, module: str, depth: int = 0) -> None:
        for value in list(namespace.values()):
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                for f in (value.fget, value.fset, value.fdel):
                    if isinstance(f, types.FunctionType):
                        add(f.__code__)
            elif isinstance(value, types.FunctionType) and value.__module__ == module:
                add(value.__code__)
            elif isinstance(value, type) and value.__module__ == module and depth < 3:
                walk(vars(value), module, depth + 1)

    for name, module in list(sys.modules.items()):
        if module is not None and any(name == p or name.startswith(p + ".") for p in packages):
            walk(vars(module), name)
    return frozenset(found)


class Guard:
    def __init__(self, writable: str, hidden: list[str], executables: frozenset[str] = frozenset(),
                 trusted: frozenset[types.CodeType] = frozenset(), libraries: tuple[str, ...] = GPU_LIBRARIES,
                 builds: str | None = None):
        """`executables`: programs that may be started; `trusted`: code objects whose ctypes use is
        allowed (`trusted_code()`), `libraries`: file name prefixes of the system libraries they may
        open, `builds`: a directory (in the work directory) whose libraries they may open too (all
        only on a GPU, see the module docstring)."""
        self.writable = os.path.realpath(writable)
        self.hidden = [os.path.realpath(p) for p in hidden]
        self.executables, self.trusted, self.libraries = executables, trusted, libraries
        self.builds = os.path.realpath(builds) if builds else None
        self.ctypes_code = trusted_code(("ctypes",))  # frames skipped to find who raised a ctypes event
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
            reason = self._judge(event, args, sys._getframe(1))
        finally:
            self._busy = False
        if reason and _from_linecache():  # a traceback quoting a hidden harness file: deny, quietly
            raise PermissionError(f"sandbox: {reason} is not allowed")
        if reason:
            self.violations.append(reason)
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

    def _ctypes(self, event: str, args: tuple, frame) -> str | None:
        """None when the function that raised the event (the first frame outside ctypes itself) is
        trusted and, for a dlopen, the library is a GPU one or one Triton built; else the reason, naming the library
        and the caller so a denial on a new platform says what to allow."""
        while frame is not None and frame.f_code in self.ctypes_code:
            frame = frame.f_back
        caller = f"{frame.f_globals.get('__name__')}:{frame.f_lineno} ({frame.f_code.co_name})" if frame else "?"
        what = event
        if event == "ctypes.dlopen":
            name = args[0] if args else None
            what = f"{event} {name}"
            if not isinstance(name, (str, bytes, os.PathLike)):
                return f"{what} from {caller}"  # CDLL(None): the program's own symbols, libc's included
            name = os.fsdecode(name)
            real = os.path.realpath(name) if os.sep in name else None
            if real and self.builds and _under(real, self.builds):
                pass  # one Triton built
            elif real and _under(real, self.writable):
                return f"{what} from {caller} (a library in the work directory)"
            elif not os.path.basename(name).startswith(self.libraries):
                return f"{what} from {caller} (not a GPU library)"
        if frame is None or frame.f_code not in self.trusted:
            return f"{what} from {caller}"
        return None

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


def _from_linecache() -> bool:
    frame = sys._getframe(2)
    for _ in range(6):
        if frame is None:
            return False
        if frame.f_code.co_filename.endswith(("linecache.py", "traceback.py")):
            return True
        frame = frame.f_back
    return False


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
