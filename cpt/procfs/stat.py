"""/proc/PID/stat, /proc/PID/status and /proc/PID/task/TID/children.

Grammar as this kernel (6.18) prints them; numbers are decimal unless noted:
  stat        PID (COMM) STATE FIELD4 ... FIELD52     COMM is raw bytes: spaces, ')' allowed
  status      Key:\\tvalue lines; Name: escapes only '\\\\' and '\\n'; Sig*/Cap* hex
  children    PID PID ... (space separated, of one thread)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ._common import c_unescape, dec, ints


def decode_huge_dev(dev: int) -> tuple[int, int]:
    # new_encode_dev(): minor low byte | major << 8 | minor high bits << 12 (stat's tty_nr)
    return (dev >> 8) & 0xFFF, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


def status_sigcgt(data: bytes) -> int:
    """Only the SigCgt: of a status file (cheap: the signals the task catches)."""
    i = data.index(b"\nSigCgt:") + 8
    return int(data[i : data.index(b"\n", i)], 16)


@dataclass(frozen=True, slots=True)
class ProcStat:
    """/proc/PID/stat.  Field numbers of proc(5) in the comments."""

    pid: int  # 1
    comm: str  # 2, raw (unescaped) bytes of the task name
    state: str  # 3
    ppid: int  # 4
    pgrp: int  # 5
    session: int  # 6
    tty_nr: int  # 7
    tpgid: int  # 8
    flags: int  # 9
    utime: int  # 14
    stime: int  # 15
    priority: int  # 18
    nice: int  # 19
    num_threads: int  # 20
    starttime: int  # 22
    vsize: int  # 23
    rss: int  # 24
    start_code: int  # 26
    end_code: int  # 27
    start_stack: int  # 28
    exit_signal: int  # 38
    processor: int  # 39
    rt_priority: int  # 40
    policy: int  # 41
    start_data: int  # 45
    end_data: int  # 46
    start_brk: int  # 47
    arg_start: int  # 48
    arg_end: int  # 49
    env_start: int  # 50
    env_end: int  # 51
    exit_code: int  # 52, a waitpid() status: (code << 8) | signal

    @property
    def tty(self) -> tuple[int, int] | None:
        """Controlling terminal as (major, minor), None without one."""
        return decode_huge_dev(self.tty_nr) if self.tty_nr else None

    @property
    def mm_hidden(self) -> bool:
        """True when the kernel withheld the mm fields.

        Without PTRACE_MODE_READ access the kernel prints 1 for start_code/end_code (so ps
        still sees a user process) and 0 for fields 28 and 45-52, and exits silently.
        """
        return self.start_code == 1 and self.end_code == 1


def parse_stat(data: bytes) -> ProcStat:
    # comm may hold spaces and parentheses: it starts after the first " (" and ends at the
    # LAST ')', the only split that no comm can fool
    lpar = data.index(b" (")
    rpar = data.rindex(b")")
    f = data[rpar + 2 :].split()
    if len(f) < 50:  # pre-3.5 kernels stop at field 44; the mm fields then read as 0
        f += [b"0"] * (50 - len(f))

    def n(i: int) -> int:  # 1-based proc(5) field number
        return int(f[i - 3])

    return ProcStat(
        pid=int(data[:lpar]),
        comm=dec(data[lpar + 2 : rpar]),
        state=dec(f[0]),
        ppid=n(4),
        pgrp=n(5),
        session=n(6),
        tty_nr=n(7),
        tpgid=n(8),
        flags=n(9),
        utime=n(14),
        stime=n(15),
        priority=n(18),
        nice=n(19),
        num_threads=n(20),
        starttime=n(22),
        vsize=n(23),
        rss=n(24),
        start_code=n(26),
        end_code=n(27),
        start_stack=n(28),
        exit_signal=n(38),
        processor=n(39),
        rt_priority=n(40),
        policy=n(41),
        start_data=n(45),
        end_data=n(46),
        start_brk=n(47),
        arg_start=n(48),
        arg_end=n(49),
        env_start=n(50),
        env_end=n(51),
        exit_code=n(52),
    )


def stat_state(data: bytes) -> str:
    """Only the state letter of a stat file (cheap; used by the zombie check)."""
    i = data.rindex(b")") + 2
    return chr(data[i])


def stat_processor(data: bytes) -> int:
    """Only field 39 of a stat file: the CPU the task last ran on (cheap)."""
    return int(data[data.rindex(b")") + 2 :].split()[36])


def status_tgid(data: bytes) -> int:
    """Only the Tgid: of a status file (cheap: the thread-group id of a thread)."""
    i = data.index(b"\nTgid:") + 6
    return int(data[i : data.index(b"\n", i)])


@dataclass(frozen=True, slots=True)
class ProcStatus:
    """/proc/PID/status.  ``fields`` keeps every line (stripped text) for the keys not lifted."""

    name: str  # unescaped: the kernel prints '\n' as "\\n" and '\\' as "\\\\"
    state: str
    tgid: int
    pid: int
    ppid: int
    tracer_pid: int
    uid: tuple[int, int, int, int]  # real, effective, saved, fs
    gid: tuple[int, int, int, int]
    groups: tuple[int, ...]
    nstgid: tuple[int, ...]  # outermost pid namespace first
    nspid: tuple[int, ...]
    nspgid: tuple[int, ...]
    nssid: tuple[int, ...]
    threads: int
    sigq: tuple[int, int]  # queued, limit
    sigpnd: int  # bit (n-1) = signal n pending for this thread
    shdpnd: int  # process-wide pending
    sigblk: int
    sigign: int
    sigcgt: int
    capinh: int
    capprm: int
    capeff: int
    capbnd: int
    capamb: int
    no_new_privs: int
    seccomp: int  # 0 off, 1 strict, 2 filter
    seccomp_filters: int | None  # kernel >= 5.9
    umask: int | None  # kernel >= 4.7
    vm_kb: Mapping[str, int]  # VmRSS, VmSize, RssAnon, ... in kB (absent for kernel threads)
    fields: Mapping[str, str]


def parse_status(data: bytes) -> ProcStatus:
    raw: dict[bytes, bytes] = {}
    for line in data.split(b"\n"):
        k, sep, v = line.partition(b":")
        if sep:
            raw[k] = v
    # Name: keep everything after "Name:\t" (a name may start or end with spaces)
    name = dec(c_unescape(raw[b"Name"][1:]))
    s = {k: v.strip() for k, v in raw.items() if k != b"Name"}
    vm = {
        dec(k): int(v.split()[0])
        for k, v in s.items()
        if v.endswith(b" kB") and (k.startswith((b"Vm", b"Rss")) or k == b"HugetlbPages")
    }
    uid, gid = ints(s[b"Uid"]), ints(s[b"Gid"])
    q, _, lim = s.get(b"SigQ", b"0/0").partition(b"/")
    return ProcStatus(
        name=name,
        state=dec(s[b"State"][:1]),
        tgid=int(s[b"Tgid"]),
        pid=int(s[b"Pid"]),
        ppid=int(s[b"PPid"]),
        tracer_pid=int(s[b"TracerPid"]),
        uid=(uid[0], uid[1], uid[2], uid[3]),
        gid=(gid[0], gid[1], gid[2], gid[3]),
        groups=ints(s.get(b"Groups", b"")),
        nstgid=ints(s.get(b"NStgid", s[b"Tgid"])),
        nspid=ints(s.get(b"NSpid", s[b"Pid"])),
        nspgid=ints(s.get(b"NSpgid", b"")),
        nssid=ints(s.get(b"NSsid", b"")),
        threads=int(s[b"Threads"]),
        sigq=(int(q), int(lim)),
        sigpnd=int(s[b"SigPnd"], 16),
        shdpnd=int(s[b"ShdPnd"], 16),
        sigblk=int(s[b"SigBlk"], 16),
        sigign=int(s[b"SigIgn"], 16),
        sigcgt=int(s[b"SigCgt"], 16),
        capinh=int(s[b"CapInh"], 16),
        capprm=int(s[b"CapPrm"], 16),
        capeff=int(s[b"CapEff"], 16),
        capbnd=int(s[b"CapBnd"], 16),
        capamb=int(s.get(b"CapAmb", b"0"), 16),
        no_new_privs=int(s.get(b"NoNewPrivs", b"0")),
        seccomp=int(s.get(b"Seccomp", b"0")),
        seccomp_filters=int(s[b"Seccomp_filters"]) if b"Seccomp_filters" in s else None,
        umask=int(s[b"Umask"], 8) if b"Umask" in s else None,
        vm_kb=MappingProxyType(vm),
        fields=MappingProxyType({dec(k): dec(v) for k, v in s.items()} | {"Name": name}),
    )


def parse_children(data: bytes) -> list[int]:
    return [int(x) for x in data.split()]
