"""A unit's seccomp-based options as BPF programs for ``bwrap --add-seccomp-fd``, built the way
systemd builds them (systemd 252, src/shared/seccomp-util.c and src/core/execute.c) with the same
libseccomp, through ctypes.

One program per option, as systemd loads them (the kernel applies every program; the strictest
answer wins):

* ``SystemCallFilter=`` (an allow-list): the groups expanded by ``systemd-analyze syscall-filter``,
  so the list is this machine's systemd's own, plus ``@default`` which systemd always adds to an
  allow-list; anything else kills the process (SIGSYS), as systemd's default action does.
  ``SystemCallArchitectures=native``: only this architecture's calls are in the program; others
  are killed too.
* ``MemoryDenyWriteExecute=yes``: mmap with PROT_WRITE|PROT_EXEC, mprotect and pkey_mprotect
  adding PROT_EXEC, shmat with SHM_EXEC fail with EPERM.
* ``RestrictAddressFamilies=``: socket() of any other family fails with EAFNOSUPPORT.
* ``RestrictNamespaces=yes``: unshare/clone with a namespace flag and setns fail with EPERM; clone3
  with ENOSYS (its flags are out of a filter's reach; glibc then falls back to clone).

Not emulated: LockPersonality=, RestrictRealtime=, RestrictSUIDSGID= (none is in the way of
a library the agent loads).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterable

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_GE = 5
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000,
                   0x00000080)   # CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
AF_MAX = 46   # Linux 6.x


def errno_action(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


class Program:
    """One seccomp program being built; :meth:`export` writes its BPF to a file and returns it open."""

    def __init__(self, default_action: int):
        self._ctx = _lib().seccomp_init(default_action)
        if not self._ctx:
            raise OSError("seccomp_init failed")

    def rule(self, action: int, name: str, *conditions: tuple[int, int, int, int]) -> bool:
        """Add ``action`` for syscall ``name`` when every (arg, op, a, b) holds; False when this
        architecture has no such call (systemd skips those too)."""
        number = _lib().seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            return False
        array = (_ArgCmp * len(conditions))(*(_ArgCmp(*c) for c in conditions))
        result = _lib().seccomp_rule_add_array(self._ctx, action, number, len(conditions), array)
        if result < 0:
            raise OSError(-result, f"seccomp rule for {name}: {os.strerror(-result)}")
        return True

    def export(self) -> int:
        """A file descriptor (inheritable, at offset 0) holding the BPF program."""
        handle = tempfile.TemporaryFile()
        result = _lib().seccomp_export_bpf(self._ctx, handle.fileno())
        if result < 0:
            raise OSError(-result, f"seccomp_export_bpf: {os.strerror(-result)}")
        _lib().seccomp_release(self._ctx)
        self._ctx = None
        fd = os.dup(handle.fileno())
        handle.close()
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        return fd


@functools.cache
def expand_syscall_group(name: str) -> frozenset[str]:
    """The calls a systemd group (``@system-service``) or a single name stands for, as this
    machine's systemd lists them."""
    if not name.startswith("@"):
        return frozenset({name})
    listing = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True,
                             check=True).stdout
    calls: set[str] = set()
    for line in listing.splitlines()[1:]:   # the first line is the group's own name
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        calls |= expand_syscall_group(entry) if entry.startswith("@") else {entry}
    return frozenset(calls)


def syscall_allow_list(entries: Iterable[str]) -> int:
    """SystemCallFilter= without ``~``: allowed calls, everything else kills the process."""
    allowed: set[str] = set(expand_syscall_group("@default"))
    for entry in entries:
        if entry.startswith("~"):
            raise NotImplementedError("a deny-list SystemCallFilter= (~...) is not emulated")
        for word in entry.split():
            allowed |= expand_syscall_group(word)
    program = Program(SCMP_ACT_KILL_PROCESS)
    for name in sorted(allowed):
        program.rule(SCMP_ACT_ALLOW, name)
    return program.export()


def memory_deny_write_execute() -> int:
    program = Program(SCMP_ACT_ALLOW)
    eperm = errno_action(errno.EPERM)
    for name in ("mmap", "mmap2"):
        program.rule(eperm, name, (2, SCMP_CMP_MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC))
    for name in ("mprotect", "pkey_mprotect"):
        program.rule(eperm, name, (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
    program.rule(eperm, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
    return program.export()


def restrict_address_families(names: Iterable[str]) -> int:
    allowed = {int(getattr(socket, name)) for entry in names for name in entry.split()}
    program = Program(SCMP_ACT_ALLOW)
    refuse = errno_action(errno.EAFNOSUPPORT)
    for family in range(AF_MAX + 1):
        if family not in allowed:
            program.rule(refuse, "socket", (0, SCMP_CMP_EQ, family, 0))
    program.rule(refuse, "socket", (0, SCMP_CMP_GE, AF_MAX + 1, 0))
    return program.export()


def restrict_namespaces() -> int:
    program = Program(SCMP_ACT_ALLOW)
    eperm = errno_action(errno.EPERM)
    for flag in NAMESPACE_FLAGS:
        program.rule(eperm, "unshare", (0, SCMP_CMP_MASKED_EQ, flag, flag))
        program.rule(eperm, "clone", (0, SCMP_CMP_MASKED_EQ, flag, flag))   # x86-64: flags are the first argument
    program.rule(eperm, "setns")
    program.rule(errno_action(errno.ENOSYS), "clone3")
    return program.export()
