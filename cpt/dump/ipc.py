"""SysV IPC objects of the tree's IPC namespace: shared memory, semaphores, messages.

A tree with an IPC namespace of its own (a VE, or an unshared tree) owns every object in
it: all are dumped.  A tree in the host's namespace shares it with everything else; what
is provably the tree's is dumped: the SysV shm segments it has attached.  Its semaphore
sets and message queues cannot be told apart from anybody else's and stay outside the
image, like files on disk.  The dumper reads the namespace from inside (setns).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from cptimage.records import (
    Namespace,
    NsKind,
    ShmemKind,
    SysvMsg,
    SysvMsq,
    SysvSem,
    SysvShm,
)

from ..procfs import Proc, map_files_path, sysvipc
from ..sys import ipc as I
from ..sys.ns import in_namespace
from .shmem import ShmemTable

NS_OWN = 1  # Namespace.flags: the tree's own namespace (restore makes a new one)


def ipc_ns(pid: int, proc: Proc) -> int:
    return proc.ns(pid)["ipc"]


class IpcDumper:
    """Dump the tree's SysV objects; `attached` are the shm ids its VMAs map."""

    def __init__(self, root: int, proc: Proc, shmem: ShmemTable) -> None:
        self.root = root
        self.own = ipc_ns(root, proc) != ipc_ns(os.getpid(), proc)
        self.ns_ino = ipc_ns(root, proc)
        self.shmem = shmem
        self.records: list[Any] = [
            Namespace(kind=NsKind.IPC, pid=root, flags=NS_OWN if self.own else 0, ino=self.ns_ino)
        ]
        self._attachments: list[I.ShmAttachment] = []

    def dump(self, attached: set[int]) -> None:
        """Records of the objects; shm contents go through the ShmemTable (read later)."""
        ctx = in_namespace(self.root, "ipc") if self.own else contextlib.nullcontext()
        with ctx:
            for row in sysvipc("shm"):
                shmid = int(row[1])
                if self.own or shmid in attached:
                    self._shm(row)
            if self.own:
                for row in sysvipc("sem"):
                    self._sem(row)
                for row in sysvipc("msg"):
                    self._msq(row)

    def _shm(self, row: list[str]) -> None:
        # key shmid perms size cpid lpid nattch uid gid cuid cgid atime dtime ctime rss swap
        key, shmid, size, cpid, lpid = int(row[0]), int(row[1]), *(int(v) for v in row[3:6])
        perms = int(row[2], 8)  # the kernel prints the mode in octal
        uid, gid, cuid, cgid = (int(v) for v in row[7:11])
        # attach it here too: its contents are then read like any shared memory object
        att = I.ShmAttachment(shmid, size, readonly=True)
        self._attachments.append(att)
        source = map_files_path("self", att.addr, att.addr + size)
        shmem_id = self.shmem.add((-self.ns_ino, shmid), source, ShmemKind.SYSV, "")
        self.records.append(
            SysvShm(
                key=key, shmid=shmid, mode=perms, uid=uid, gid=gid, cuid=cuid, cgid=cgid,
                cpid=cpid, lpid=lpid, shmem_id=shmem_id, size=size,
            )
        )  # fmt: skip

    def _sem(self, row: list[str]) -> None:
        # key semid perms nsems uid gid cuid cgid otime ctime
        key, semid, nsems, uid, gid, cuid, cgid = (int(row[i]) for i in (0, 1, 3, 4, 5, 6, 7))
        perms = int(row[2], 8)
        values = I.sem_getall(semid, nsems)
        self.records.append(
            SysvSem(
                key=key, semid=semid, mode=perms, uid=uid, gid=gid, cuid=cuid, cgid=cgid,
                values=values,
            )
        )  # fmt: skip

    def _msq(self, row: list[str]) -> None:
        # key msqid perms cbytes qnum lspid lrpid uid gid cuid cgid stime rtime ctime
        key, msqid, cbytes, qnum = int(row[0]), int(row[1]), int(row[3]), int(row[4])
        perms = int(row[2], 8)
        uid, gid, cuid, cgid = (int(v) for v in row[7:11])
        qbytes = I.MSQID_DS.unpack(I.msq_stat(msqid))[6]
        self.records.append(
            SysvMsq(key=key, msqid=msqid, mode=perms, uid=uid, gid=gid, cuid=cuid, cgid=cgid,
                    qbytes=qbytes)
        )  # fmt: skip
        for i in range(qnum):
            mtype, data = I.msg_copy(msqid, i, max(cbytes, 1))
            self.records.append(SysvMsg(msqid=msqid, mtype=mtype, data=data))

    def close(self) -> None:
        """Detach the segments attached for reading (after the pages were read)."""
        for att in self._attachments:
            att.detach()
        self._attachments.clear()
