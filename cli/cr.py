"""`cpt chkpnt` and `cpt restore`: the staged commands of vzctl, for VEs (by VEID) and for
process trees (--pid, --dumpfile)."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Annotated

from cpt.errors import InvalidValue, UsageError

from .params import Argument, Option

if TYPE_CHECKING:
    from cpt.stages.stage import Stage, Stages

DumpfileOpt = Annotated[
    str | None,
    Option("--dumpfile", help="the dump file (default /var/tmp/Dump.VEID, or Dump.pid-PID)"),
]
VeidArg = Annotated[str | None, Argument(metavar="[VEID]", help="the VE (else --pid / --dumpfile)")]
JsonOpt = Annotated[bool, Option("--json", help="print the statistics as JSON")]
ParentDirOpt = Annotated[
    str | None,
    Option("--parent-dir", help="where the parent images are (default: next to the image)"),
]
TrustOpt = Annotated[
    bool,
    Option(
        "--trust",
        help="vouch for the dump file: restore it although it is not root's or others may "
        "write it, and although its processes hold credentials above its tree's owner's",
    ),
]


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str, option: str) -> int:
    """ "1M", "512K", "4096" -> bytes (binary units, as CRIU's --ghost-limit)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    try:
        value = int(t[: len(t) - len(unit)])
    except ValueError:
        raise InvalidValue(f"{option} {text!r}: not a size (use e.g. 1M, 512K, 4096)") from None
    if value < 0:
        raise InvalidValue(f"{option} {text!r}: a size cannot be negative")
    return value * _UNITS[unit]


def _stage(full: Stage, **flags: bool) -> Stage:
    """The stage the options ask for: `full` without one, at most one of them."""
    from cpt.stages.stage import Stage

    chosen = [name for name, on in flags.items() if on]
    if len(chosen) > 1:
        raise UsageError(
            "at most one stage option: " + ", ".join("--" + c.replace("_", "-") for c in chosen)
        )
    return Stage(chosen[0]) if chosen else full


def _stages(veid: str | None, pid: int | None) -> Stages:
    if veid is not None:
        from snapshot.hooks import ve_manager

        return ve_manager().stages(veid)
    from cpt.stages.trees import TreeStages

    return TreeStages(pid)


def _report(what: str, stats: object, as_json: bool) -> None:
    d = dataclasses.asdict(stats)  # type: ignore[call-overload]
    if as_json:
        print(json.dumps({"action": what, **d}))
        return
    for w in d.pop("warnings", []):
        print(f"cpt: warning: {w}", file=sys.stderr)
    parts = []
    for k, v in d.items():
        if isinstance(v, float):
            parts.append(f"{k}={v * 1000:.1f}ms")
        else:
            parts.append(f"{k}={v}")
    print(f"{what}: " + " ".join(parts))


def chkpnt(
    veid: VeidArg = None,
    pid: Annotated[int | None, Option("--pid", help="root of the process tree")] = None,
    dumpfile: DumpfileOpt = None,
    suspend: Annotated[bool, Option("--suspend", help="stage: freeze the tree")] = False,
    dump: Annotated[bool, Option("--dump", help="stage: dump the suspended tree")] = False,
    kill: Annotated[bool, Option("--kill", help="stage: kill the suspended tree")] = False,
    resume: Annotated[bool, Option("--resume", help="stage: resume the tree")] = False,
    leave_running: Annotated[
        bool, Option("--leave-running", help="suspend, dump, resume: a snapshot")
    ] = False,
    compress: Annotated[bool, Option("--compress", help="zstd-compress the pages")] = False,
    ext_unix_sk: Annotated[
        bool, Option("--ext-unix-sk", help="allow unix sockets with a peer outside")
    ] = False,
    tcp_established: Annotated[
        bool, Option("--tcp-established", help="checkpoint established TCP connections")
    ] = False,
    tcp_close: Annotated[
        bool,
        Option(
            "--tcp-close", help="connected TCP sockets are saved without state: restored closed"
        ),
    ] = False,
    shell_job: Annotated[
        bool, Option("--shell-job", help="the tree was started from this shell")
    ] = False,
    file_locks: Annotated[
        bool, Option("--file-locks", help="checkpoint flock, POSIX and OFD locks")
    ] = False,
    ghost_limit: Annotated[
        str, Option("--ghost-limit", help="largest deleted file kept (e.g. 1M)")
    ] = "1M",
    skip_arpdetect: Annotated[
        bool, Option("--skip-arpdetect", help="accepted for vzctl compatibility")
    ] = False,
    pre_dump: Annotated[
        bool,
        Option("--pre-dump", help="copy the memory while the tree runs; track its writes"),
    ] = False,
    parent: Annotated[
        str | None,
        Option("--parent", help="an earlier dump of the tree: write only what changed"),
    ] = None,
    parent_dir: ParentDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Checkpoint a VE or a process tree: suspend, dump, kill (or one stage of it)."""
    from cpt.dump.options import DumpOptions
    from cpt.stages.stage import Stage

    stage = _stage(Stage.CHKPNT, suspend=suspend, dump=dump, kill=kill, resume=resume)
    if (veid is None) == (pid is None):
        raise UsageError("chkpnt needs a VEID or --pid PID (one of them)")
    stages = _stages(veid, pid)
    opts = DumpOptions(
        leave_running=leave_running,
        compress=compress,
        ext_unix_sk=ext_unix_sk,
        tcp_established=tcp_established,
        tcp_close=tcp_close,
        shell_job=shell_job,
        file_locks=file_locks,
        ghost_limit=parse_size(ghost_limit, "--ghost-limit"),
        pre_dump=pre_dump,
        parent=parent or "",
        parent_dir=parent_dir or "",
    )
    stats = stages.chkpnt(stage, dumpfile, opts)
    if stats is None:
        print(f"{stages.label} {stage.done}")
    else:
        _report(f"{stage.done} {stages.label} to {stages.dumpfile(dumpfile)}", stats, as_json)


def restore(
    veid: VeidArg = None,
    dumpfile: Annotated[
        str | None,
        Option("--dumpfile", help="the dump file (a VE's default: /var/tmp/Dump.VEID)"),
    ] = None,
    undump: Annotated[bool, Option("--undump", help="stage: restore, left frozen")] = False,
    resume: Annotated[bool, Option("--resume", help="stage: resume")] = False,
    kill: Annotated[bool, Option("--kill", help="stage: kill the frozen tree")] = False,
    pidfile: Annotated[
        str | None,
        Option(
            "--pidfile",
            help="write the restored root PID here (atomically, before the tree runs; "
            "a symlink there is replaced, not followed)",
        ),
    ] = None,
    pidns: Annotated[
        bool, Option("--pidns", help="restore into a new PID namespace (PIDs in use here)")
    ] = False,
    ipcns: Annotated[
        bool, Option("--ipcns", help="restore SysV/POSIX IPC into a new IPC namespace")
    ] = False,
    shell_job: Annotated[
        bool,
        Option(
            "--shell-job",
            help="attach the tree to this shell's terminal; wait until the tree's root exits",
        ),
    ] = False,
    rollback_fs: Annotated[
        bool,
        Option(
            "--rollback-fs",
            help="a VE whose private area changed since the dump: roll it back to the dump's "
            "snapshot first (the live contents are kept as a snapshot)",
        ),
    ] = False,
    parent_dir: ParentDirOpt = None,
    tcp_close: Annotated[
        bool,
        Option("--tcp-close", help="restore TCP connections closed (for programs that reconnect)"),
    ] = False,
    trust: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore a VE or a process tree from a dump file: undump, resume (or one stage)."""
    from cpt.restore.options import RestoreOptions
    from cpt.stages.stage import Stage
    from cpt.stages.trees import TreeStages

    stage = _stage(Stage.RESTORE, undump=undump, resume=resume, kill=kill)
    if veid is not None and pidfile:
        raise UsageError("--pidns, --ipcns, --shell-job and --pidfile are for process trees")
    stages = _stages(veid, None)
    # the pidfile gets the PID this host knows the root by (another one inside a --pidns)
    opts = RestoreOptions(
        pidns=pidns, ipcns=ipcns, shell_job=shell_job, rollback_fs=rollback_fs, trust=trust,
        pidfile=pidfile, parent_dir=parent_dir or "", tcp_close=tcp_close,
    )  # fmt: skip
    stats = stages.restore(stage, dumpfile, opts)
    if stats is None:
        print(f"{stages.label} {stage.done}")
        return
    _report(f"{stage.done} {stages.label} from {stages.dumpfile(dumpfile)}", stats, as_json)
    if shell_job and stage is Stage.RESTORE and isinstance(stages, TreeStages):
        sys.stdout.flush()
        stages.wait_shell_job(stats)
