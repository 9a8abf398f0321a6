"""Linux namespaces for a candidate: no network, a read-only filesystem, hidden source trees.

`isolate(writable, hidden)` moves the calling process into new user, mount, network and PID
namespaces (user namespaces need no privilege where the kernel allows them; as root it works
without one), then:

- marks every mount private and read-only, recursively (`mount_setattr(AT_RECURSIVE)`), except
  `writable` (the candidate's working directory), bind-mounted onto itself read-write and
  noexec (a shared library written there cannot be loaded);
- mounts an empty read-only tmpfs over each `hidden` path (the task suite, with its expert
  solutions; the repository and its git objects), so they are not there to be read;
- leaves the network namespace with a loopback that is down: nothing to connect to.

The next child forked is PID 1 of the new PID namespace; when it exits the kernel kills every
process left in that namespace, which is how stragglers of a candidate die.

Returns what it managed, so a verdict can say which layers stood. Needs Linux >= 5.12
(mount_setattr); without it, or without user namespaces, it returns the empty set and the
other layers (seccomp, rlimits, the audit hook) stand alone.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID = 0x00020000, 0x10000000, 0x40000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 4096, 16384, 1 << 18
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC = 1, 2, 4, 8
SYS_MOUNT_SETATTR = 442  # the same number on x86_64 and aarch64


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def isolate(writable: str, hidden: list[str], executable: bool = False) -> set[str]:
    """Enter new namespaces and lock the filesystem down; the layers that now hold."""
    libc = _libc()
    uid, gid = os.geteuid(), os.getegid()
    layers: set[str] = set()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID) == 0:
        _map_ids(uid, gid)
        layers.add("user-namespace")
    elif uid != 0 or libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID) != 0:
        return set()
    layers |= {"network-namespace", "pid-namespace"}
    try:
        _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
        for path in hidden:
            if os.path.isdir(path):
                _check(libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, b"size=4k"),
                       f"hide {path}")
        layers.add("hidden-paths")
        _check(libc.mount(writable.encode(), writable.encode(), None, MS_BIND | MS_REC, None), "bind the work dir")
        _mount_setattr(libc, "/", AT_RECURSIVE, set_=MOUNT_ATTR_RDONLY)
        # writable, but nothing written there can be executed (no native code smuggled in as a file);
        # on a GPU Triton loads the launcher it compiles there, so `executable` keeps exec
        flags = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (0 if executable else MOUNT_ATTR_NOEXEC)
        _mount_setattr(libc, writable, 0, set_=flags, clear=MOUNT_ATTR_RDONLY)
        layers.add("read-only-filesystem")
    except OSError:
        pass  # the namespaces hold even when a mount step is refused; the verdict lists what held
    return layers


def _map_ids(uid: int, gid: int) -> None:
    """Be uid/gid 0 inside the new user namespace, our own ids outside (the one mapping an
    unprivileged process may write)."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


def _mount_setattr(libc, path: str, flags: int, set_: int = 0, clear: int = 0) -> None:
    attr = _MountAttr(set_, clear, 0, 0)
    result = libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr))
    _check(result, f"mount_setattr {path}")


def set_parent_death_signal(signal_number: int) -> None:
    """Have the kernel send `signal_number` to this process when its parent dies."""
    PR_SET_PDEATHSIG = 1
    _check(_libc().prctl(PR_SET_PDEATHSIG, signal_number, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
