"""Fault injection for tests, like CRIU's CRIU_FAULT: CPT_FAULT=<point>[:stall|:delay][,...].

At a named point the engine raises (a failure half-way, whose rollback tests then check)
or, with `:stall`, announces itself on stderr and sleeps until killed (so a test can kill
cpt at an exact moment), or, with `:delay`, sleeps DELAY seconds and goes on (so a test
can cut something under it).  Unset in normal use: one environment lookup per point.

    suspend:freezer   suspend journalled, nothing frozen yet
    suspend:state     the tree frozen (a VE: its link down), its stage state not final yet
    ve:link-down      a VE frozen, its link about to go down
    ve:fs-snapshot    a VE frozen, its private area about to be snapshotted
    ve:fs-snapshot-made  the snapshot just made, the step that made it not yet left
    dump:seize        the tree about to be seized (ptrace)
    dump:pages        state dumped, pages not yet
    dump:fsync        the image written, not yet durable
    dump:rename       the image durable, not yet at its name (the commit)
    dump:published    a leave-running or staged dump at its name, the command not done
    ve:link-up        a VE thawed, its link about to come up (resume, a failed dump)
    kill:signal       kill journalled, nothing killed yet
    restore:freezer   an undump (or a VE's restore) journalled, its freezer not made yet
    restore:memory    every address space rebuilt
    restore:detach    the whole tree restored, still traced
    migrate:restore   a migration's destination about to restore the VE it received
    migrate:send      a migration's source, the VE frozen, its image about to be sent
    migrate:resumed   a migration's source: the destination said the VE runs there, the
                      copy here is not killed yet
    migrate:other-kernel  (a condition, not a point) a migration's destination takes
                      the source's kernel for another (its pre-flight refuses: exit 17)
"""

from __future__ import annotations

import os
import sys
import time

from .errors import CptError

POINTS = (
    "suspend:freezer",
    "suspend:state",
    "ve:link-down",
    "ve:fs-snapshot",
    "ve:fs-snapshot-made",
    "dump:seize",
    "dump:pages",
    "dump:fsync",
    "dump:rename",
    "dump:published",
    "ve:link-up",
    "kill:signal",
    "restore:freezer",
    "restore:memory",
    "restore:detach",
    "migrate:restore",
    "migrate:send",
    "migrate:resumed",
)


def active(name: str) -> bool:
    """Is the condition `name` injected (CPT_FAULT names it)?"""
    return name in os.environ.get("CPT_FAULT", "").split(",")


DELAY = 4.0  # seconds of a `:delay`


class InjectedFault(CptError):
    """Raised at a fault point named in CPT_FAULT: a CptError, so that the command fails
    with the one line and the exit code of the stage it interrupted."""


def point(name: str) -> None:
    spec = os.environ.get("CPT_FAULT")
    if not spec:
        return
    for item in spec.split(","):
        where, _, action = (
            item.rpartition(":") if item.endswith((":stall", ":delay")) else (item, "", "")
        )
        if where != name:
            continue
        if action == "delay":  # a slow step: the test acts meanwhile, then it goes on
            print(f"cpt: fault injection: delayed at {name}", file=sys.stderr, flush=True)
            time.sleep(DELAY)
            return
        if action == "stall":
            print(f"cpt: fault injection: stalled at {name}", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)
        raise InjectedFault(f"fault injected at {name} (CPT_FAULT)")
