"""A new PID namespace for a restore (`--pidns`): the tree keeps its PIDs inside it.

Its init is a tiny static program (cpt.stub.build_init) that reaps orphans and exits once
the namespace is empty.  The restorer enters the namespace for its children with
setns(CLONE_NEWPID) only while it creates the root stub; every other process is cloned
from inside by its parent's stub.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

from ..stub import start_init
from ..sys.clone import CLONE_NEWPID
from ..sys.ns import setns


class PidNamespace:
    def __init__(self) -> None:
        self.init_pid = start_init()

    @contextlib.contextmanager
    def children_inside(self) -> Iterator[None]:
        """This process's next children are created in the namespace."""
        here = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        ns = os.open(f"/proc/{self.init_pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(ns, CLONE_NEWPID)
            try:
                yield
            finally:
                setns(here, CLONE_NEWPID)
        finally:
            os.close(ns)
            os.close(here)

    def destroy(self) -> None:
        """Kill the init (and with it every process of the namespace) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.init_pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.init_pid, 0)
