"""SysV IPC and POSIX message queues: the raw syscalls and their x86_64 structures.

Everything acts on the IPC namespace of the CALLING process (the dumper and restorer
enter the tree's namespace with setns(CLONE_NEWIPC) first).  On x86_64 the native
*ctl syscalls always use the 64-bit structures below (no IPC_64 flag needed).
"""

from __future__ import annotations

import ctypes
import struct

from cpt.sys._libc import checked_syscall, errno_error, get_errno, raw_syscall
from cpt.sys.syscalls import NR

IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_NOWAIT = 0o4000
IPC_RMID, IPC_SET, IPC_STAT = 0, 1, 2
SHM_RDONLY = 0o10000
SHM_RND = 0o20000
SHM_REMAP = 0o40000
SHM_EXEC = 0o100000
SHM_DEST = 0o1000  # in shm_perm.mode: removed, destroyed at the last detach
SHM_LOCKED = 0o2000
GETALL, SETALL = 13, 17
MSG_COPY = 0o40000

# struct ipc64_perm: key uid gid cuid cgid mode, pad, seq, pad, 2 unused longs (48 bytes)
IPC_PERM = struct.Struct("<iIIIIIHH4xQQ")  # the longs are 8-aligned: 4 bytes of padding
# struct shmid64_ds: perm, segsz, atime, dtime, ctime, cpid, lpid, nattch, 2 unused
SHMID_DS = struct.Struct("<48sQqqqiiQQQ")
# struct semid64_ds: perm, otime, unused, ctime, unused, nsems, 2 unused
SEMID_DS = struct.Struct("<48sqQqQQQQ")
# struct msqid64_ds: perm, stime, rtime, ctime, cbytes, qnum, qbytes, lspid, lrpid, 2 unused
MSQID_DS = struct.Struct("<48sqqqQQQiiQQ")
# struct mq_attr: flags, maxmsg, msgsize, curmsgs, 4 reserved
MQ_ATTR = struct.Struct("<qqqq32x")


def _call(what: str, nr: int, *args: int) -> int:
    return checked_syscall(what, None, nr, *args)


def _ctl(what: str, nr: int, ident: int, cmd: int, size: int, data: bytes = b"") -> bytes:
    buf = ctypes.create_string_buffer(data or bytes(size), size)
    _call(f"{what}({ident}, {cmd})", nr, ident, cmd, ctypes.addressof(buf))
    return buf.raw


# --------------------------------------------------------------------------- shm


def shmget(key: int, size: int, flags: int) -> int:
    return _call(f"shmget(key {key:#x})", NR.shmget, key & 0xFFFFFFFF, size, flags)


def shm_stat(shmid: int) -> bytes:
    return _ctl("shmctl IPC_STAT", NR.shmctl, shmid, IPC_STAT, SHMID_DS.size)


def shm_set(shmid: int, uid: int, gid: int, mode: int) -> None:
    perm = IPC_PERM.pack(0, uid, gid, 0, 0, mode & 0o777, 0, 0, 0, 0)
    _ctl("shmctl IPC_SET", NR.shmctl, shmid, IPC_SET, SHMID_DS.size, perm + bytes(64))


def shm_rmid(shmid: int) -> None:
    _call(f"shmctl({shmid}, IPC_RMID)", NR.shmctl, shmid, IPC_RMID, 0)


class ShmAttachment:
    """A segment attached to THIS process, readable/writable through `view`."""

    def __init__(self, shmid: int, size: int, readonly: bool) -> None:
        addr = raw_syscall(int(NR.shmat), shmid, 0, SHM_RDONLY if readonly else 0)
        if addr == -1:
            raise errno_error(get_errno(), f"shmat({shmid})")
        self.addr = addr
        self.size = size
        arr = (ctypes.c_char * size).from_address(addr)
        self.view = memoryview(arr).cast("B")

    def detach(self) -> None:
        self.view.release()
        _call(f"shmdt({self.addr:#x})", NR.shmdt, self.addr)

    def __enter__(self) -> ShmAttachment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


# --------------------------------------------------------------------------- sem


def semget(key: int, nsems: int, flags: int) -> int:
    return _call(f"semget(key {key:#x})", NR.semget, key & 0xFFFFFFFF, nsems, flags)


def sem_stat(semid: int) -> bytes:
    buf = ctypes.create_string_buffer(SEMID_DS.size)
    _call(f"semctl({semid}, IPC_STAT)", NR.semctl, semid, 0, IPC_STAT, ctypes.addressof(buf))
    return buf.raw


def sem_getall(semid: int, nsems: int) -> list[int]:
    buf = ctypes.create_string_buffer(2 * max(nsems, 1))
    _call(f"semctl({semid}, GETALL)", NR.semctl, semid, 0, GETALL, ctypes.addressof(buf))
    return list(struct.unpack(f"<{nsems}H", buf.raw[: 2 * nsems]))


def sem_setall(semid: int, values: list[int]) -> None:
    buf = ctypes.create_string_buffer(
        struct.pack(f"<{len(values)}H", *values), 2 * max(len(values), 1)
    )
    _call(f"semctl({semid}, SETALL)", NR.semctl, semid, 0, SETALL, ctypes.addressof(buf))


def sem_set(semid: int, uid: int, gid: int, mode: int) -> None:
    perm = IPC_PERM.pack(0, uid, gid, 0, 0, mode & 0o777, 0, 0, 0, 0)
    buf = ctypes.create_string_buffer(perm + bytes(SEMID_DS.size - 48), SEMID_DS.size)
    _call(f"semctl({semid}, IPC_SET)", NR.semctl, semid, 0, IPC_SET, ctypes.addressof(buf))


# --------------------------------------------------------------------------- msg


def msgget(key: int, flags: int) -> int:
    return _call(f"msgget(key {key:#x})", NR.msgget, key & 0xFFFFFFFF, flags)


def msq_stat(msqid: int) -> bytes:
    return _ctl("msgctl IPC_STAT", NR.msgctl, msqid, IPC_STAT, MSQID_DS.size)


def msq_set(msqid: int, uid: int, gid: int, mode: int, qbytes: int) -> None:
    perm = IPC_PERM.pack(0, uid, gid, 0, 0, mode & 0o777, 0, 0, 0, 0)
    tail = struct.pack("<qqqQQQiiQQ", 0, 0, 0, 0, 0, qbytes, 0, 0, 0, 0)
    _ctl("msgctl IPC_SET", NR.msgctl, msqid, IPC_SET, MSQID_DS.size, perm + tail)


def msg_copy(msqid: int, index: int, maxsize: int) -> tuple[int, bytes]:
    """Message `index` of the queue, without removing it (MSG_COPY, CONFIG_CHECKPOINT_RESTORE)."""
    buf = ctypes.create_string_buffer(8 + maxsize)
    n = _call(
        f"msgrcv({msqid}, MSG_COPY {index})",
        NR.msgrcv,
        msqid,
        ctypes.addressof(buf),
        maxsize,
        index,
        IPC_NOWAIT | MSG_COPY,
    )
    (mtype,) = struct.unpack_from("<q", buf.raw)
    return mtype, buf.raw[8 : 8 + n]


def msgsnd(msqid: int, mtype: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(struct.pack("<q", mtype) + data, 8 + len(data))
    _call(f"msgsnd({msqid})", NR.msgsnd, msqid, ctypes.addressof(buf), len(data), IPC_NOWAIT)


# --------------------------------------------------------------------------- POSIX mq


def mq_open(name: str, flags: int, mode: int = 0, maxmsg: int = 0, msgsize: int = 0) -> int:
    """mq_open(2); `name` without its leading '/'. With O_CREAT and maxmsg, the attributes."""
    cname = ctypes.create_string_buffer(name.encode())
    attr = ctypes.create_string_buffer(MQ_ATTR.pack(0, maxmsg, msgsize, 0), MQ_ATTR.size)
    return _call(
        f"mq_open(/{name})",
        NR.mq_open,
        ctypes.addressof(cname),
        flags,
        mode,
        ctypes.addressof(attr) if maxmsg else 0,
    )


def mq_getattr(fd: int) -> tuple[int, int, int, int]:
    """(flags, maxmsg, msgsize, curmsgs) of a message queue fd (EBADF: not a queue)."""
    out = ctypes.create_string_buffer(MQ_ATTR.size)
    _call(f"mq_getsetattr({fd})", NR.mq_getsetattr, fd, 0, ctypes.addressof(out))
    flags, maxmsg, msgsize, cur = MQ_ATTR.unpack(out.raw)
    return flags, maxmsg, msgsize, cur


def mq_receive_now(fd: int, msgsize: int) -> tuple[int, bytes] | None:
    """The next message (priority, data), or None if the queue is empty; never blocks."""
    buf = ctypes.create_string_buffer(max(msgsize, 1))
    prio = ctypes.c_uint(0)
    past = ctypes.create_string_buffer(struct.pack("<qq", 0, 0), 16)  # an expired deadline
    n = raw_syscall(
        int(NR.mq_timedreceive), fd, ctypes.addressof(buf), msgsize, ctypes.addressof(prio),
        ctypes.addressof(past),
    )  # fmt: skip
    if n == -1:
        err = get_errno()
        if err in (110, 11):  # ETIMEDOUT, EAGAIN: empty
            return None
        raise errno_error(err, f"mq_timedreceive({fd})")
    return prio.value, buf.raw[:n]


def mq_send(fd: int, data: bytes, prio: int) -> None:
    buf = ctypes.create_string_buffer(data, max(len(data), 1))
    _call(f"mq_timedsend({fd})", NR.mq_timedsend, fd, ctypes.addressof(buf), len(data), prio, 0)


def mq_unlink(name: str) -> None:
    cname = ctypes.create_string_buffer(name.encode())
    _call(f"mq_unlink(/{name})", NR.mq_unlink, ctypes.addressof(cname))
