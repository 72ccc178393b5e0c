"""`cpt chkpnt` and `cpt restore`: the staged commands of vzctl, for VEs (by VEID) and for
process trees (--pid, --dumpfile)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Annotated

import typer

from cpt.checkpoint import Tree, default_dumpfile, open_for_restore, tree_of
from cpt.dump.options import DumpOptions
from cpt.errors import InvalidValue, UsageError
from cpt.restore.options import RestoreOptions
from cpt.restore.tty import wait_shell_job
from snapshot.hooks import ve_manager

DumpfileOpt = Annotated[
    str | None,
    typer.Option("--dumpfile", help="the dump file (default /var/tmp/Dump.VEID, or Dump.pid-PID)"),
]
VeidArg = Annotated[
    str | None, typer.Argument(metavar="[VEID]", help="the VE (else --pid / --dumpfile)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the statistics as JSON")]


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


def _one_stage(**stages: bool) -> str | None:
    chosen = [name for name, on in stages.items() if on]
    if len(chosen) > 1:
        raise UsageError(
            "at most one stage option: " + ", ".join("--" + c.replace("_", "-") for c in chosen)
        )
    return chosen[0] if chosen else None


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
    pid: Annotated[int | None, typer.Option("--pid", help="root of the process tree")] = None,
    dumpfile: DumpfileOpt = None,
    suspend: Annotated[bool, typer.Option("--suspend", help="stage: freeze the tree")] = False,
    dump: Annotated[bool, typer.Option("--dump", help="stage: dump the suspended tree")] = False,
    kill: Annotated[bool, typer.Option("--kill", help="stage: kill the suspended tree")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="stage: resume the tree")] = False,
    leave_running: Annotated[
        bool, typer.Option("--leave-running", help="suspend, dump, resume: a snapshot")
    ] = False,
    compress: Annotated[bool, typer.Option("--compress", help="zstd-compress the pages")] = False,
    ext_unix_sk: Annotated[
        bool, typer.Option("--ext-unix-sk", help="allow unix sockets with a peer outside")
    ] = False,
    tcp_established: Annotated[
        bool, typer.Option("--tcp-established", help="checkpoint established TCP connections")
    ] = False,
    shell_job: Annotated[
        bool, typer.Option("--shell-job", help="the tree was started from this shell")
    ] = False,
    file_locks: Annotated[
        bool, typer.Option("--file-locks", help="checkpoint flock, POSIX and OFD locks")
    ] = False,
    ghost_limit: Annotated[
        str, typer.Option("--ghost-limit", help="largest deleted file kept (e.g. 1M)")
    ] = "1M",
    skip_arpdetect: Annotated[
        bool, typer.Option("--skip-arpdetect", help="accepted for vzctl compatibility")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Checkpoint a VE or a process tree: suspend, dump, kill (or one stage of it)."""
    stage = _one_stage(suspend=suspend, dump=dump, kill=kill, resume=resume)
    if (veid is None) == (pid is None):
        raise UsageError("chkpnt needs a VEID or --pid PID (one of them)")
    if leave_running and stage is not None:
        raise UsageError("--leave-running is a full checkpoint; it takes no stage option")
    if stage == "dump" and dumpfile is None and veid is None:
        raise UsageError("chkpnt --dump needs --dumpfile F")
    opts = DumpOptions(
        leave_running=leave_running,
        compress=compress,
        ext_unix_sk=ext_unix_sk,
        tcp_established=tcp_established,
        shell_job=shell_job,
        file_locks=file_locks,
        ghost_limit=parse_size(ghost_limit, "--ghost-limit"),
    )
    if veid is not None:
        _chkpnt_ve(veid, stage, dumpfile, opts, as_json)
        return
    assert pid is not None
    tree = Tree(pid)
    with tree.locked():
        if stage == "suspend":
            tree.suspend(opts)
            print(f"tree {pid} suspended")
        elif stage == "dump":
            assert dumpfile is not None
            _report(f"dumped tree {pid} to {dumpfile}", tree.dump(dumpfile, opts), as_json)
        elif stage == "kill":
            tree.kill()
            print(f"tree {pid} killed")
        elif stage == "resume":
            tree.resume()
            print(f"tree {pid} resumed")
        else:
            path = dumpfile or default_dumpfile(pid)
            _report(f"checkpointed tree {pid} to {path}", tree.checkpoint(path, opts), as_json)


def _chkpnt_ve(
    veid: str, stage: str | None, dumpfile: str | None, opts: DumpOptions, as_json: bool
) -> None:
    ve = ve_manager().cr
    path = ve.dumpfile(veid, dumpfile)
    stats = ve.chkpnt(veid, stage, dumpfile, opts)
    if stage == "dump":
        _report(f"dumped VE {veid} to {path}", stats, as_json)
    elif stage is None:
        _report(f"checkpointed VE {veid} to {path}", stats, as_json)
    else:
        done = {"suspend": "suspended", "kill": "killed", "resume": "resumed"}[stage]
        print(f"VE {veid} {done}")


def restore(
    veid: VeidArg = None,
    dumpfile: Annotated[
        str | None,
        typer.Option("--dumpfile", help="the dump file (a VE's default: /var/tmp/Dump.VEID)"),
    ] = None,
    undump: Annotated[bool, typer.Option("--undump", help="stage: restore, left frozen")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="stage: resume")] = False,
    kill: Annotated[bool, typer.Option("--kill", help="stage: kill the frozen tree")] = False,
    pidfile: Annotated[
        str | None, typer.Option("--pidfile", help="write the restored root PID here")
    ] = None,
    pidns: Annotated[
        bool, typer.Option("--pidns", help="restore into a new PID namespace (PIDs in use here)")
    ] = False,
    ipcns: Annotated[
        bool, typer.Option("--ipcns", help="restore SysV/POSIX IPC into a new IPC namespace")
    ] = False,
    shell_job: Annotated[
        bool,
        typer.Option(
            "--shell-job",
            help="attach the tree to this shell's terminal; wait until the tree's root exits",
        ),
    ] = False,
    rollback_fs: Annotated[
        bool,
        typer.Option(
            "--rollback-fs",
            help="a VE whose private area changed since the dump: roll it back to the dump's "
            "snapshot first (the live contents are kept as a snapshot)",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore a VE or a process tree from a dump file: undump, resume (or one stage)."""
    stage = _one_stage(undump=undump, resume=resume, kill=kill)
    if veid is not None:
        if pidns or ipcns or shell_job or pidfile:
            raise UsageError("--pidns, --ipcns, --shell-job and --pidfile are for process trees")
        _restore_ve(veid, stage, dumpfile, as_json, rollback_fs)
        return
    if rollback_fs:
        raise UsageError("--rollback-fs is for a VE: cpt restore VEID --rollback-fs")
    if dumpfile is None:
        raise UsageError("restore needs a VEID or --dumpfile F")
    if stage in ("resume", "kill"):
        tree = tree_of(dumpfile)
        with tree.locked():
            if stage == "resume":
                tree.resume()
                print(f"tree {tree.root} resumed")
            else:
                tree.kill()
                print(f"tree {tree.root} killed")
        return
    if (pidns or ipcns or shell_job) and stage in ("resume", "kill"):
        raise UsageError("--pidns, --ipcns and --shell-job belong to a full restore or --undump")
    opts = RestoreOptions(pidns=pidns, ipcns=ipcns, shell_job=shell_job)
    reader = open_for_restore(dumpfile, opts)
    with reader:
        root = reader.header.root_pid
        # a full restore into a new PID namespace may run beside the original tree: its
        # freezer (used only while restoring) must not be the original's
        private = pidns and stage != "undump"
        tree = Tree(root, name=f"pid-{root}-ns{os.getpid()}" if private else None)
        with tree.locked():
            stats = tree.restore(reader, opts, undump=stage == "undump")
    if pidfile:  # the PID this host knows the root by (another one inside a --pidns)
        with open(pidfile, "w") as f:
            f.write(f"{stats.host_pid}\n")
    what = "undumped" if stage == "undump" else "restored"
    _report(f"{what} tree {stats.root_pid} from {dumpfile}", stats, as_json)
    if shell_job and stage is None:
        sys.stdout.flush()
        wait_shell_job(stats.pidns_init or stats.host_pid)


def _restore_ve(
    veid: str, stage: str | None, dumpfile: str | None, as_json: bool, rollback_fs: bool
) -> None:
    ve = ve_manager().cr
    stats = ve.restore(veid, stage, dumpfile, rollback_fs=rollback_fs)
    if stats is not None:
        what = "undumped" if stage == "undump" else "restored"
        _report(f"{what} VE {veid} from {ve.dumpfile(veid, dumpfile)}", stats, as_json)
    else:
        print(f"VE {veid} {'resumed' if stage == 'resume' else 'killed'}")
