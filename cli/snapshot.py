"""`cpt snapshot ...`: snapshots of VEs (the library is snapshot.manager)."""

from __future__ import annotations

import json
from typing import Annotated

from cpt.errors import InvalidValue, UsageError
from cptimage.errors import printable

from .image import diff_line
from .params import Argument, Group, Option

app = Group(
    help="Snapshots of VEs: the private area, with the memory of a running VE, taken in one "
    "freeze; rollback brings a VE back to one.",
    no_args_is_help=True,
)
VeidArg = Annotated[str, Argument(metavar="VEID", help="the VE")]
SnapArg = Annotated[str, Argument(metavar="SNAP", help="a snapshot's id or name")]
JsonOpt = Annotated[bool, Option("--json", help="print it as JSON")]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@app.command()
def create(
    veid: VeidArg,
    name: Annotated[str, Option("--name", help="a name, unique within the VE")] = "",
    description: Annotated[str, Option("--description", help="free text")] = "",
    no_memory: Annotated[
        bool, Option("--no-memory", help="the filesystem alone, even of a running VE")
    ] = False,
) -> None:
    """Snapshot a VE: a running one with its memory (it keeps running), a stopped one's
    filesystem."""
    from snapshot.manager import SnapshotManager

    snap = SnapshotManager().create(veid, name=name, description=description, memory=not no_memory)
    what = "with memory" if snap.memory else "filesystem only"
    print(f"snapshot {snap.label} of VE {veid} created ({what})")


@app.command("list")
def list_(veid: VeidArg, as_json: JsonOpt = False) -> None:
    """The snapshots of a VE: id, time, name, kind, size, memory, parent."""
    from snapshot.manager import SnapshotManager

    snaps = SnapshotManager().snapshots(veid)
    if as_json:
        print(json.dumps([s.to_json() for s in snaps]))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"snapshots of VE {veid}", title_justify="left")
    for col in ("ID", "TIME", "NAME", "KIND", "SIZE", "MEMORY", "PARENT"):
        t.add_column(col, justify="right" if col in ("ID", "SIZE", "PARENT") else "left")
    for s in snaps:
        d = s.to_json()
        t.add_row(str(s.id), d["time"], Text(printable(s.name)), s.kind, _size(d["size"]),
                  "yes" if s.memory else "no", str(s.parent or "-"))  # fmt: skip
    Console(highlight=False).print(t)


@app.command()
def show(veid: VeidArg, snap: SnapArg, as_json: JsonOpt = False) -> None:
    """One snapshot in full."""
    from snapshot.manager import SnapshotManager

    doc = SnapshotManager().show(veid, snap)
    if as_json:
        print(json.dumps(doc))
        return
    for key, value in doc.items():
        print(f"{key:12} {printable(str(value)) if value not in (None, '') else '-'}")


@app.command()
def diff(veid: VeidArg, a: SnapArg, b: SnapArg) -> None:
    """Files added (+), removed (-) and changed (~) from snapshot A to B, then how their
    images differ (`cpt image diff`) when both have memory."""
    from snapshot.manager import SnapshotManager

    sa, sb, changes, images = SnapshotManager().diff(veid, a, b)
    for mark, paths in (("+", changes.added), ("-", changes.removed), ("~", changes.changed)):
        for p in paths:
            print(f"{mark} {printable(str(p))}")  # a file name may hold anything but / and NUL
    if sa.image and sb.image:
        print(f"images: {len(images)} difference(s)")
        for d in images:
            print(diff_line(d))
    if not changes and not images:
        print(f"snapshots {sa.label} and {sb.label} are identical")


@app.command()
def delete(veid: VeidArg, snap: SnapArg) -> None:
    """Delete a snapshot (refused while a dump file waits for it)."""
    from snapshot.manager import SnapshotManager

    gone = SnapshotManager().delete(veid, snap)
    print(f"snapshot {gone.label} of VE {veid} deleted")


@app.command()
def cleanup(
    veid: VeidArg,
    keep: Annotated[int | None, Option("--keep", help="keep the newest N")] = None,
    max_age: Annotated[
        str | None, Option("--max-age", help="delete those older (e.g. 30d, 12h)")
    ] = None,
    min_free: Annotated[
        str | None,
        Option("--min-free", help="delete the oldest while the pool has less free (e.g. 1G)"),
    ] = None,
    orphans: Annotated[
        bool, Option("--orphans", help="remove only the orphans (in no catalog entry)")
    ] = False,
) -> None:
    """Apply a retention policy; snapshots in use are kept.  Orphan snapshots (a killed
    dump's, which no catalog entry names) go first, with any policy or --orphans alone."""
    from snapshot.manager import Policy, SnapshotManager, parse_age
    from storage.pool import parse_size

    if keep is None and max_age is None and min_free is None and not orphans:
        raise UsageError(
            "cleanup needs a policy: --keep N, --max-age AGE, --min-free SIZE or --orphans"
        )
    if keep is not None and keep < 0:
        raise InvalidValue(f"--keep {keep}: not a number of snapshots")
    try:
        free = parse_size(min_free) if min_free is not None else None
    except ValueError as e:
        raise InvalidValue(f"--min-free: {e}") from None
    age = parse_age(max_age) if max_age is not None else None
    swept = SnapshotManager().orphans(veid)  # once every option is known good
    if orphans or swept:
        print(f"removed {len(swept)} orphan snapshot(s) of VE {veid}"
              + (": " + ", ".join(str(p) for p in swept) if swept else ""))  # fmt: skip
    if keep is None and max_age is None and min_free is None:
        return
    policy = Policy(keep=keep, max_age=age, min_free=free)
    gone = SnapshotManager().cleanup(veid, policy)
    print(f"deleted {len(gone)} snapshot(s) of VE {veid}" + (
        ": " + ", ".join(s.label for s in gone) if gone else ""))  # fmt: skip


@app.command()
def rollback(veid: VeidArg, snap: SnapArg) -> None:
    """Stop the VE, keep its live area as a snapshot, roll it back to SNAP, and restore
    its processes from SNAP's memory when it has some."""
    from snapshot.manager import SnapshotManager

    target, pre, restored = SnapshotManager().rollback(veid, snap)
    how = "its processes restored" if restored else "filesystem only"
    print(f"VE {veid} rolled back to snapshot {target.label} ({how}); the live area was kept "
          f"as snapshot {pre.label}")  # fmt: skip
