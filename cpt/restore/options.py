"""What a user can ask of a restore (the restore command's options)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass
class RestoreOptions:
    pidns: bool = False  # a new PID namespace: the tree keeps its PIDs inside it
    ipcns: bool = False  # a new IPC namespace: SysV/POSIX IPC objects keep their ids
    shell_job: bool = False  # attach the tree to the invoking shell's terminal
    tcp_close: bool = False  # TCP connections are restored closed (their peers reconnect)
    # a VE whose private area changed since the dump: roll it back to the dump's
    # filesystem snapshot first (the live contents are kept as a snapshot)
    rollback_fs: bool = False
    # a VE: called with its init's PID once its namespaces exist, to create what links
    # them to this host (the veth pair, its VE end inside)
    ve_links: Callable[[int], None] | None = None
    # where the parents of an incremental image are (default: next to it)
    parent_dir: str = ""
    # the operator vouches for the image: its file's owner and mode are not checked, and
    # its processes may hold credentials above its tree's owner's (restore/trust.py)
    trust: bool = False
    # write the restored root's PID (as this host knows it) here, atomically and before
    # the tree is released; a failure kills the tree (restore fails)
    pidfile: str | None = None
