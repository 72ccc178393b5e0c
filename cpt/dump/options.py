"""What a user can ask of a dump (the chkpnt command's options)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class DumpOptions:
    leave_running: bool = False
    compress: bool = False
    ext_unix_sk: bool = False  # unix sockets connected to a peer outside the tree
    tcp_established: bool = False  # established TCP connections (TCP_REPAIR)
    tcp_close: bool = False  # connected TCP sockets are recorded without state: restored closed
    shell_job: bool = False  # the tree's session/terminal belong to the invoking shell
    file_locks: bool = False  # flock, POSIX and OFD locks
    ghost_limit: int = 1 << 20  # largest deleted-but-open file carried in the image
    staged: bool = False  # the tree stays frozen after the dump; a later command kills it
    ve_id: str = ""  # the tree is this VE: its namespaces go into the image
    # how this process reaches the paths the tree sees: "" (the same root), or a VE's root
    # (/proc/<init>/root: a VE's mount tree is its own, and /proc shows its processes'
    # paths relative to it)
    root: str = ""
    # the tree's network namespace is cut off from its peers (a suspended VE's link is
    # down): no drop rules are needed for its TCP connections, and a staged dump of them
    # stays consistent until the kill
    net_isolated: bool = False
    # incremental dumps (cpt/stages/incremental.py): a pre-dump (memory only, the tree
    # runs on), the image this one builds on, and where its parents are when not next to it
    pre_dump: bool = False
    parent: str = ""
    parent_dir: str = ""
    # after a leave-running dump the tracking goes on in a holder, relative to its image
    # (snapshots of a running VE: the next one builds on this one)
    keep_tracking: bool = False
