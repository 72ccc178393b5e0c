"""What a user can ask of a dump (the chkpnt command's options)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class DumpOptions:
    leave_running: bool = False
    compress: bool = False
    ext_unix_sk: bool = False  # unix sockets connected to a peer outside the tree
    tcp_established: bool = False  # established TCP connections (TCP_REPAIR)
    shell_job: bool = False  # the tree's session/terminal belong to the invoking shell
    file_locks: bool = False  # flock, POSIX and OFD locks
    ghost_limit: int = 1 << 20  # largest deleted-but-open file carried in the image
    staged: bool = False  # the tree stays frozen after the dump; a later command kills it
