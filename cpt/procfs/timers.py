"""/proc/PID/timers: the POSIX timers of a process.

Grammar: blocks "ID: n / signal: SIG/VALUEHEX / notify: KIND/pid.N|tid.N / ClockID: n",
newest timer first.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._common import dec

SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD, SIGEV_THREAD_ID = 0, 1, 2, 4
_NOTIFY = {"signal": SIGEV_SIGNAL, "none": SIGEV_NONE, "thread": SIGEV_THREAD}


@dataclass(frozen=True, slots=True)
class PosixTimer:
    """One block of /proc/PID/timers.  State (it_value, overrun) needs timer_gettime()."""

    id: int
    signo: int
    sigev_value: int  # sival_ptr as an integer
    notify: str  # "signal", "none" or "thread"
    target_kind: str  # "pid", or "tid" for SIGEV_THREAD_ID
    target: int  # pid or tid, in the reader's pid namespace
    clock_id: int

    @property
    def sigev_notify(self) -> int:
        """The struct sigevent value: SIGEV_* | SIGEV_THREAD_ID for a tid target."""
        return _NOTIFY[self.notify] | (SIGEV_THREAD_ID if self.target_kind == "tid" else 0)


def parse_timers(data: bytes) -> list[PosixTimer]:
    """Timers in file order, which is newest first on this kernel."""
    out = []
    cur: dict[bytes, bytes] = {}

    def flush() -> None:
        signo, _, val = cur[b"signal"].partition(b"/")
        kind, _, rest = cur[b"notify"].partition(b"/")
        tkind, _, target = rest.partition(b".")
        out.append(
            PosixTimer(
                int(cur[b"ID"]),
                int(signo),
                int(val, 16),
                dec(kind),
                dec(tkind),
                int(target),
                int(cur[b"ClockID"]),
            )
        )

    for line in data.split(b"\n"):
        k, sep, v = line.partition(b":")
        if not sep:
            continue
        if k == b"ID" and cur:
            flush()
            cur = {}
        cur[k] = v.strip()
    if cur:
        flush()
    return out
