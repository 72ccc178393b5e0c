"""SysV IPC objects and POSIX message queues, recreated with their ids and contents.

A tree that had an IPC namespace of its own gets a new one (so does any tree restored
with --ipcns): the restorer unshares one for itself while it creates the objects and the
stubs (which inherit it), then returns to its own.  Otherwise the objects go to the host's
namespace, where their ids must be free (verify-before-restore checks it).  Ids are
chosen through the sysctls kernel.{shm,sem,msg}_next_id of the namespace.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from cptimage.records import OwnerKind, PosixMq, SysvMsg, SysvMsq, SysvSem, SysvShm

from ..errors import RestoreError
from ..procfs import sysvipc, write_sysctl
from ..sys import ipc as I
from .creds import as_holders
from .fdbase import O_ACCMODE
from .model import ImageModel
from .pages import PageSource, has_data
from .pstree import Task


def _next_id(kind: str, ident: int) -> None:
    write_sysctl(f"kernel.{kind}_next_id", ident)


class IpcObjects:
    def __init__(self, model: ImageModel, pages: PageSource | None = None) -> None:
        """`pages`: where the segments' pages come from (a restore; none for conflicts)."""
        self.model = model
        self.pages = pages
        self._held: list[I.ShmAttachment] = []  # keeps SHM_DEST segments alive until attached

    def conflicts(self) -> list[str]:
        """What already uses the ids and names here (for a restore into this namespace)."""
        out = []
        shm = {int(row[1]) for row in sysvipc("shm")}
        for seg in self.model.sysv_shm.values():
            if seg.shmid in shm:
                out.append(
                    f"SysV shared memory id {seg.shmid} is in use here: remove it "
                    f"(ipcrm -m {seg.shmid}) or restore with --ipcns"
                )
        for q in self.model.mqueues():
            if q.deleted:
                continue
            try:
                os.close(I.mq_open(q.name, os.O_RDONLY | os.O_CLOEXEC))
            except FileNotFoundError:
                continue
            out.append(f"POSIX message queue /{q.name} exists here: restore with --ipcns")
        return out

    def create(self) -> None:
        """Every object, in the current IPC namespace, with its dumped id."""
        m = self.model
        for seg in m.sysv_shm.values():
            self._shm(seg)
        for sem in m.sysv_sem:
            self._sem(sem)
        for msq in m.sysv_msq:
            self._msq(msq, [x for x in m.sysv_msg if x.msqid == msq.msqid])
        for q in m.mqueues():
            self._mqueue(q)

    def _shm(self, seg: SysvShm) -> None:
        _next_id("shm", seg.shmid)
        key = seg.key if not seg.mode & I.SHM_DEST else 0  # a removed segment's key is gone
        got = I.shmget(key, seg.size, I.IPC_CREAT | I.IPC_EXCL | (seg.mode & 0o777))
        if got != seg.shmid:
            raise RestoreError(f"SysV shm {seg.shmid} came back as {got}")
        I.shm_set(got, seg.uid, seg.gid, seg.mode)
        att = I.ShmAttachment(got, seg.size, readonly=False)
        runs = [r for r in self.model.shmem_runs.get(seg.shmem_id, []) if has_data(r)]
        assert self.pages is not None
        for off, data in self.pages.chunks(OwnerKind.SHMEM, seg.shmem_id, runs):
            n = min(len(data), seg.size - off)
            att.view[off : off + n] = data[:n]
        if seg.mode & I.SHM_DEST:
            # removed but attached: mark it again; our attachment keeps it alive until the
            # tree's processes have attached it (a removed segment can still be attached)
            I.shm_rmid(got)
            self._held.append(att)
        else:
            att.detach()

    def _sem(self, sem: SysvSem) -> None:
        _next_id("sem", sem.semid)
        got = I.semget(sem.key, len(sem.values), I.IPC_CREAT | I.IPC_EXCL | (sem.mode & 0o777))
        if got != sem.semid:
            raise RestoreError(f"SysV semaphore set {sem.semid} came back as {got}")
        I.sem_setall(got, sem.values)
        I.sem_set(got, sem.uid, sem.gid, sem.mode)

    def _msq(self, msq: SysvMsq, msgs: list[SysvMsg]) -> None:
        _next_id("msg", msq.msqid)
        got = I.msgget(msq.key, I.IPC_CREAT | I.IPC_EXCL | (msq.mode & 0o777))
        if got != msq.msqid:
            raise RestoreError(f"SysV message queue {msq.msqid} came back as {got}")
        for msg in msgs:
            I.msgsnd(got, msg.mtype, msg.data)
        qbytes = I.MSQID_DS.unpack(I.msq_stat(got))[6]
        # raising msg_qbytes above msgmnb needs CAP_SYS_RESOURCE: keep the larger we may
        I.msq_set(got, msq.uid, msq.gid, msq.mode, msq.qbytes if msq.qbytes <= qbytes else qbytes)

    def _mqueue(self, q: PosixMq) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = I.mq_open(q.name, flags, q.mode & 0o777, q.maxmsg, q.msgsize)
        try:
            os.fchown(fd, q.uid, q.gid)
            for msg in self.model.mq_msgs.get(q.id, []):
                I.mq_send(fd, msg.data, msg.prio)
        finally:
            os.close(fd)

    def release(self) -> None:
        """Once every process attached its segments, and the descriptions exist: detach the
        segments we held and unlink the queues that were unlinked."""
        for att in self._held:
            att.detach()
        self._held.clear()
        for q in self.model.mqueues():
            if q.deleted:
                with contextlib.suppress(FileNotFoundError):
                    I.mq_unlink(q.name)


class MessageQueues:
    """PosixMq descriptions: opens of the restored queue with their flags."""

    records = (PosixMq,)

    def open(self, model: ImageModel, desc: Any) -> int:
        """An open of the queue as a process holding it would (creds.py)."""
        flags = (desc.flags & (O_ACCMODE | os.O_NONBLOCK)) | os.O_CLOEXEC
        what = f"cannot open the POSIX message queue /{desc.name}"
        try:
            return as_holders(
                model, model.holders_of_file(desc.id), what, lambda: I.mq_open(desc.name, flags)
            )
        except OSError as e:
            raise RestoreError(f"{what}: {e.strerror}") from None

    def after_install(self, model: ImageModel, task: Task, local: dict[int, int]) -> None:
        pass

    def close(self) -> None:
        pass
