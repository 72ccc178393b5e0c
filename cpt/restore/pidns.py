"""A new PID namespace for a restore (`--pidns`): the tree keeps its PIDs inside it.

Its init is a stub-shaped static program (cpt.restore.stub.build_init), created with CLONE_NEWPID
and traced like any stub: the restorer clones the tree's root from it, so the root's
parent is the namespace's init, as in a container.  Once the tree is built the init is
pointed at its reaper loop, which reaps every child and exits when the last one is gone
(ending the namespace).
"""

from __future__ import annotations

import contextlib
import os
import signal

from ..procfs import Proc
from ..sys.ns import CLONE_NEWPID
from ..trace.scratch import Scratch
from ..trace.tracee import Tracee
from .stub import INIT_REAPER, init_exec_path, spawn_stub


class PidNamespace:
    def __init__(self) -> None:
        self.init: Tracee = spawn_stub(flags=CLONE_NEWPID, path=init_exec_path())
        with self.init.session():
            occupied = [(v.start, v.end) for v in Proc().maps(self.init.pid)]
            self.scratch = Scratch.map(self.init, occupied, size=1 << 16)

    @property
    def init_pid(self) -> int:
        return self.init.pid

    def start_reaping(self) -> None:
        """Send the init to its reaper loop and let it go."""
        regs = self.init.get_regs()
        regs.rip = INIT_REAPER
        regs.orig_rax = -1  # no syscall restart: it was asleep in pause()
        self.init.set_regs(regs)
        self.init.detach()
        self.init.close()

    def destroy(self) -> None:
        """Kill the init (and with it every process of the namespace) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.init.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.init.pid, 0)
