"""A cpt node for VE tests: its own root (CPT_ROOT) on an embedded loop-file btrfs pool,
its own scratch id-range files (CPT_IDMAP_DIR: never the machine's /etc/subuid), cpt run
as a command in it, and cleanup of every VE the test created (stopped, destroyed: routes
gone), then of the pool (unmounted, loop device detached)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from cptcli import CPT, REPO


class Node:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ids = root / "ids"
        self.env = dict(os.environ, CPT_ROOT=str(root), CPT_IDMAP_DIR=str(self.ids))
        self.created: list[str] = []

    def cpt(
        self, *args: object, input: str | None = None, timeout: float = 60
    ) -> tuple[int, str, str]:
        p = subprocess.run(
            [*CPT, *map(str, args)], cwd=REPO, env=self.env, capture_output=True, text=True,
            input=input, timeout=timeout,
        )  # fmt: skip
        return p.returncode, p.stdout, p.stderr

    def cgroup(self, veid: str) -> Path:
        """The VE's freezer cgroup on this node (its name carries the node's tag)."""
        from cpt.stages.store import node_tag
        from cpt.sys.cgroup import CPT_CGROUP, cgroup2_mount
        from ve.runtime import cgroup_name

        return Path(cgroup2_mount(), CPT_CGROUP, cgroup_name(veid, node_tag(str(self.root))))

    def ifname(self, veid: str) -> str:
        """The host end of the VE's veth on this node."""
        from cpt.stages.store import node_tag
        from ve.net import host_ifname

        return host_ifname(veid, node_tag(str(self.root)))

    def create(self, veid: str, *args: str) -> None:
        rc, _, err = self.cpt("ve", "create", veid, *args)
        assert rc == 0, err
        self.created.append(veid)

    def cleanup(self) -> None:
        for veid in self.created:
            self.cpt("ve", "stop", veid, "--timeout", "1")
            self.cpt("ve", "destroy", veid)


@contextlib.contextmanager
def node_at(root: Path) -> Iterator[Node]:
    from storage import pool

    n = Node(root)
    try:
        yield n
    finally:
        n.cleanup()
        pool.teardown(str(root))


def route(addr: str) -> str:
    return subprocess.run(
        ["ip", "route", "show", f"{addr}/32"], capture_output=True, text=True
    ).stdout
