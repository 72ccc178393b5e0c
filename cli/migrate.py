"""`cpt migrate [--online] HOST VEID`: move a VE to another node over ssh (the library is
ve/migrate.py; its exit codes are vzmigrate's, SPEC.md section 12)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

from cpt.errors import InvalidValue

from .params import Argument, Option


def migrate(
    host: Annotated[
        str, Argument(metavar="HOST", help="the destination: host, user@host, host:port")
    ],
    veid: Annotated[str, Argument(metavar="VEID", help="the VE's id")],
    online: Annotated[
        bool, Option("--online", help="live: the VE runs on, frozen only for the switch-over")
    ] = False,
    noiter: Annotated[
        bool, Option("--noiter", help="online without pre-copy: plain stop-and-copy")
    ] = False,
    max_downtime: Annotated[
        int, Option("--max-downtime", help="MS: switch over once the frozen time fits it")
    ] = 300,
    force: Annotated[
        bool, Option("--force", help="switch over when the pre-copy does not converge")
    ] = False,
    dry_run: Annotated[bool, Option("--dry-run", help="stop after the pre-flight checks")] = False,
    remove_area: Annotated[
        str, Option("--remove-area", help="yes: remove the private area here after; no: keep it")
    ] = "yes",
    keep_dst: Annotated[
        bool, Option("--keep-dst", help="leave a failed destination's state for inspection")
    ] = False,
    ssh_opts: Annotated[
        str, Option("--ssh-opts", help="options for ssh (identity, port, known hosts)")
    ] = "",
    timing: Annotated[bool, Option("-t", help="print how long each step took")] = False,
    as_json: Annotated[bool, Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Move a VE to another node (vzmigrate): offline (stop, copy, start there) or
    --online (frozen only while it switches over).  The destination runs `cpt node serve
    --stdio` over ssh; the VE's config stays here as VEID.toml.migrated."""
    if not 1 <= max_downtime <= 3_600_000:
        raise InvalidValue(f"--max-downtime {max_downtime}: use 1 to 3600000 ms")
    if remove_area not in ("yes", "no"):
        raise InvalidValue(f"--remove-area {remove_area!r}: yes or no")
    from snapshot.hooks import ve_manager
    from ve.migrate import MigrateOptions
    from ve.migrate import migrate as run

    opts = MigrateOptions(
        online=online, noiter=noiter, dry_run=dry_run, remove_area=remove_area == "yes",
        keep_dst=keep_dst, ssh_opts=ssh_opts, max_downtime_ms=max_downtime, force=force,
    )  # fmt: skip
    rep = run(ve_manager(), host, veid, opts, say=lambda s: print(s, file=sys.stderr))
    if as_json:
        print(json.dumps(rep.as_dict()))
        return
    if dry_run:
        print(f"VE {veid}: pre-flight on {host} passed")
        return
    print(f"VE {veid} migrated to {host} ({rep.mode})")
    if timing:
        for p in rep.passes:
            print(
                f"  pass {int(p['n']):2}  {int(p['pages']):8} pages {int(p['bytes']):11} bytes "
                f"{p['pass_s'] * 1000:8.1f} ms  dirty {p['dirty_bps'] / 1e6:7.2f} MB/s"
            )
        for name, secs in rep.steps.items():
            print(f"  {name:16} {secs * 1000:9.1f} ms")
            if name == "restore":
                for part, psecs in rep.restore_detail.items():
                    print(f"    {part.removesuffix('_s'):14} {psecs * 1000:9.1f} ms (destination)")
        if rep.frozen_s:
            print(f"  {'total frozen':16} {rep.frozen_s * 1000:9.1f} ms")
        if rep.predicted_s:
            terms = ", ".join(
                f"{k.removesuffix('_s').replace('_', ' ')} {v * 1000:.0f}"
                for k, v in rep.prediction.items()
            )
            print(f"  {'predicted':16} {rep.predicted_s * 1000:9.1f} ms ({terms})")
        if rep.write_bps:
            print(f"  destination writes memory at {rep.write_bps / 1e6:.0f} MB/s")
        print(f"  bytes: filesystem {rep.bytes_fs}, memory {rep.bytes_image}")
