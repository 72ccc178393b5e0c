"""The names of the calling thread's UTS namespace: uname(2) with the domainname (which
os.uname() leaves out), sethostname(2), setdomainname(2)."""

from __future__ import annotations

import os

from cpt.sys._libc import PinnedBuffer, checked_syscall
from cpt.sys.syscalls import NR

_UTS_FIELD = 65  # __NEW_UTS_LEN + 1: struct new_utsname is six of these


def uname() -> tuple[str, str, str, str, str, str]:
    """(sysname, nodename, release, version, machine, domainname) of struct new_utsname."""
    buf = bytearray(6 * _UTS_FIELD)
    with PinnedBuffer(buf, writable=True) as pb:
        checked_syscall("uname", None, NR.uname, pb.address)

    def field(i: int) -> str:
        raw = bytes(buf[i * _UTS_FIELD : (i + 1) * _UTS_FIELD])
        return os.fsdecode(raw.split(b"\0", 1)[0])

    return field(0), field(1), field(2), field(3), field(4), field(5)


def _set_name(nr: int, what: str, value: str) -> None:
    raw = os.fsencode(value)
    with PinnedBuffer(raw, writable=False) as pb:
        checked_syscall(f"{what}({value!r})", None, nr, pb.address, pb.length)


def sethostname(name: str) -> None:
    _set_name(NR.sethostname, "sethostname", name)


def setdomainname(name: str) -> None:
    _set_name(NR.setdomainname, "setdomainname", name)
