"""A seccomp-BPF filter for candidate processes: no new processes, programs or sockets.

Installed with `PR_SET_NO_NEW_PRIVS` (no privilege needed) after the sandbox is set up and
before any candidate code runs; it cannot be removed. Denied system calls fail with EPERM (the
candidate sees an ordinary OSError, the evaluator a failed call), except `clone3`, which fails
with ENOSYS so that glibc falls back to `clone`, whose flags the filter can read:

- `clone` only with CLONE_THREAD (threads: yes; fork, vfork, posix_spawn: no); `fork`, `vfork`;
- `execve`, `execveat` (no other program runs in the sandbox);
- `socket`, `socketpair`, `io_uring_*` (io_uring can open sockets without the `socket` call);
- signals to any process but itself (`kill`, `tgkill` with another pid; `tkill`, pidfd signals);
- escapes and tampering: ptrace, process_vm_*, mount and the new mount API, unshare, setns,
  chroot, pivot_root, bpf, perf_event_open, keyrings, userfaultfd, modules, reboot.

With `processes=True` (GPU mode: Triton runs ptxas and a C compiler at a kernel's first launch)
fork, vfork, clone, clone3 and execve are allowed; everything else stays denied.

A foreign architecture (x32 system calls included) kills the process. Only x86_64 and aarch64
are known; elsewhere `install` returns False and the other layers stand alone.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RET_KILL_PROCESS, RET_ALLOW = 0x80000000, 0x7FFF0000
RET_EPERM, RET_ENOSYS = 0x00050000 | 1, 0x00050000 | 38
LD_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
CLONE_THREAD = 0x00010000
ARCH_OFFSET, NR_OFFSET, ARG0_OFFSET = 4, 0, 16  # struct seccomp_data (little-endian)

_DENIED = ("socket socketpair execve execveat ptrace process_vm_readv process_vm_writev mount umount2 unshare setns "
           "chroot pivot_root bpf perf_event_open keyctl add_key request_key userfaultfd io_uring_setup "
           "io_uring_enter io_uring_register tkill pidfd_send_signal pidfd_getfd init_module finit_module "
           "delete_module reboot kexec_load open_tree move_mount fsopen fsconfig fsmount fspick mount_setattr "
           "fork vfork").split()
_PROCESSES = {"fork", "vfork", "execve", "execveat"}
SYSCALLS = {  # name -> number, per architecture
    "x86_64": dict(
        clone=56, clone3=435, kill=62, tgkill=234, fork=57, vfork=58, socket=41, socketpair=53, execve=59,
        execveat=322, ptrace=101, process_vm_readv=310, process_vm_writev=311, mount=165, umount2=166, unshare=272,
        setns=308, chroot=161, pivot_root=155, bpf=321, perf_event_open=298, keyctl=250, add_key=248,
        request_key=249, userfaultfd=323, io_uring_setup=425, io_uring_enter=426, io_uring_register=427, tkill=200,
        pidfd_send_signal=424, pidfd_getfd=438, init_module=175, finit_module=313, delete_module=176, reboot=169,
        kexec_load=246, open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432, fspick=433,
        mount_setattr=442),
    "aarch64": dict(
        clone=220, clone3=435, kill=129, tgkill=131, socket=198, socketpair=199, execve=221, execveat=281,
        ptrace=117, process_vm_readv=270, process_vm_writev=271, mount=40, umount2=39, unshare=97, setns=268,
        chroot=51, pivot_root=41, bpf=280, perf_event_open=241, keyctl=219, add_key=217, request_key=218,
        userfaultfd=282, io_uring_setup=425, io_uring_enter=426, io_uring_register=427, tkill=130,
        pidfd_send_signal=424, pidfd_getfd=438, init_module=105, finit_module=273, delete_module=106, reboot=142,
        kexec_load=104, open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432, fspick=433,
        mount_setattr=442),
}
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def program(arch: str, self_pid: int, processes: bool = False) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions."""
    nr = SYSCALLS[arch]
    out = [(LD_ABS, 0, 0, ARCH_OFFSET), (JEQ, 1, 0, AUDIT_ARCH[arch]), (RET, 0, 0, RET_KILL_PROCESS),
           (LD_ABS, 0, 0, NR_OFFSET), (JGE, 0, 1, 0x40000000), (RET, 0, 0, RET_KILL_PROCESS)]  # x32 ABI
    for name in _DENIED:
        if name in nr and not (processes and name in _PROCESSES):  # aarch64 has no fork/vfork
            out += [(JEQ, 0, 1, nr[name]), (RET, 0, 0, RET_EPERM)]
    if not processes:
        out += [(JEQ, 0, 1, nr["clone3"]), (RET, 0, 0, RET_ENOSYS)]
        # clone: allowed with CLONE_THREAD only
        out += [(JEQ, 0, 4, nr["clone"]), (LD_ABS, 0, 0, ARG0_OFFSET), (JSET, 0, 1, CLONE_THREAD),
                (RET, 0, 0, RET_ALLOW), (RET, 0, 0, RET_EPERM)]
    # kill/tgkill: at our own pid only. With processes allowed a compiler's children signal with
    # pids of their own, so any is allowed and the PID namespace is what confines them.
    if processes:
        return out + [(RET, 0, 0, RET_ALLOW)]
    for name in ("kill", "tgkill"):
        out += [(LD_ABS, 0, 0, NR_OFFSET), (JEQ, 0, 4, nr[name]), (LD_ABS, 0, 0, ARG0_OFFSET),
                (JEQ, 0, 1, self_pid), (RET, 0, 0, RET_ALLOW), (RET, 0, 0, RET_EPERM)]
    return out + [(RET, 0, 0, RET_ALLOW)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(processes: bool = False) -> bool:
    """Install the filter on this process (and its future threads and children); False when the
    architecture is unknown. Raises OSError when the kernel refuses it."""
    arch = platform.machine()
    if arch not in SYSCALLS:
        return False
    code = program(arch, os.getpid(), processes)
    raw = b"".join(struct.pack("<HBBI", *insn) for insn in code)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    prog = _Program(len(code), ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
    return True
