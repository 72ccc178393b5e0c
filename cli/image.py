"""`cpt image`: show, decode, encode, diff and verify dump files (like crit)."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import stat
import sys
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

from cpt.errors import InvalidValue, UsageError
from cptimage.atomic import STDOUT
from cptimage.errors import printable, shorten

from .params import Argument, Exit, Group, Option

if TYPE_CHECKING:  # the others are imported by the commands that use them
    from rich.console import Console
    from rich.text import Text

    from cptimage.container import ImageReader
    from cptimage.diff import Difference

app = Group(
    help="Inspect, convert, compare and check dump files.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

FileArg = Annotated[str, Argument(metavar="FILE", help="a dump file", show_default=False)]
JsonOpt = Annotated[bool, Option("--json", help="print JSON for scripts")]


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def _t(v: Any) -> Text:
    """A value of the image as rich text: no markup, control characters escaped (a comm
    or a host name is whatever the dumped process or the image's author made it)."""
    from rich.text import Text

    return Text(printable(str(v)))


def _warn(message: str) -> None:
    print(f"cpt: warning: {message}", file=sys.stderr)


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    exp = min((n.bit_length() - 1) // 10, 3)
    return f"{n / (1 << (10 * exp)):.1f} {('KiB', 'MiB', 'GiB')[exp - 1]}"


# --------------------------------------------------------------------------- show


def _ids(v: list[int]) -> str:
    return str(v[0]) if len(set(v)) == 1 else "/".join(map(str, v))


def _render_trust(con: Console, s: dict[str, Any]) -> None:
    """What a restore would grant: credentials (and the owner they are held to) and
    every path outside the image it would open or create."""
    from rich.table import Table

    from cptimage.records import SourceKind

    cr = s["credentials"]
    owner = cr["owner"]
    if owner is not None:
        con.print(
            f"owner of the tree (process {owner['pid']}): uid {_ids(owner['uid'])}, "
            f"gid {_ids(owner['gid'])}, groups {','.join(map(str, owner['groups'])) or '-'}, "
            f"permitted capabilities {owner['cap_prm']}"
        )
    elif s["header"]["source_kind"] != SourceKind.VE:
        con.print("owner of the tree: not recorded (format 1.0): a restore needs --trust")
    creds = Table(title="credentials (uid/gid: real/effective/saved/fs)", title_justify="left")
    for col in ("PID", "UID", "GID", "GROUPS", "CAP_EFF", "CAP_PRM", "CAP_BND", "NNP"):
        creds.add_column(col, justify="right" if col == "PID" else "left", overflow="fold")
    creds.add_column("COMMAND")
    for c in cr["processes"]:
        creds.add_row(
            str(c["pid"]), _ids(c["uid"]), _ids(c["gid"]), ",".join(map(str, c["groups"])),
            c["cap_eff"], c["cap_prm"], c["cap_bnd"], "yes" if c["no_new_privs"] else "no",
            _t(c["comm"]),
        )  # fmt: skip
    con.print(creds)
    where = " (a VE's paths: inside its root)" if s.get("ve") else ""
    paths = Table(title=f"paths a restore opens or creates{where}", title_justify="left")
    for col in ("PATH", "HOW", "PROCESSES"):
        paths.add_column(col, overflow="fold")
    for p in s["paths"]:
        paths.add_row(_t(p["path"]), _t(p["how"]), ",".join(map(str, p["pids"])) or "-")
    con.print(paths)


def _flag_names(v: int) -> str:
    from cptimage.records import HeaderFlags

    names = [f.name for f in HeaderFlags if v & f and f.name]
    return f"{v:#x} ({'|'.join(names)})" if names else f"{v:#x}"


def _has_pid(reader: ImageReader, pid: int) -> None:
    from cptimage import show as showmod

    if not any(p["pid"] == pid for p in showmod.process_tree(reader)):
        raise InvalidValue(f"process {pid} is not in the image {shorten(str(reader.path))}")


def _header_value(key: str, v: Any) -> str:
    if key == "flags":
        return _flag_names(v)
    if key == "xcr0":
        return f"{v:#x}"
    if key == "source_kind":
        from cptimage.records import SourceKind

        return SourceKind(v).name if v in SourceKind._value2member_map_ else str(v)
    if key == "created_ns":
        stamp = datetime.datetime.fromtimestamp(v / 1e9, datetime.UTC)
        return f"{v} ({stamp:%Y-%m-%d %H:%M:%S} UTC)"
    return str(v)


def _render_summary(s: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    con = _console()
    h = s["header"]
    title = Text(printable(str(s["path"])), style="bold")
    con.print(title + Text(f": cpt image {s['version']}, {_size(s['size'])}"))
    info = Table.grid(padding=(0, 2))
    for key in (
        "created_ns",
        "source_kind",
        "source_id",
        "root_pid",
        "flags",
        "arch",
        "kernel_release",
        "page_size",
        "xcr0",
        "xstate_size",
        "hostname",
        "uuid",
        "parent_uuid",
        "tool_version",
    ):
        info.add_row(key, _t(_header_value(key, h[key])))
    info.add_row("cpu_flags", _t(" ".join(h["cpu_flags"])))
    con.print(info)
    ve = s.get("ve")
    if ve:
        con.print(_t(f"VE {ve['id']}: hostname {ve['hostname'] or '-'}, "
                     f"addresses {', '.join(ve['addresses']) or '-'}"))  # fmt: skip
        mounts = Table(title=_t(f"mounts of VE {ve['id']}"), title_justify="left")
        for col in ("MOUNTPOINT", "TYPE", "SOURCE"):
            mounts.add_column(col)
        for m in ve["mounts"]:
            mounts.add_row(_t(m["mountpoint"]), _t(m["fstype"]), _t(m["source"]))
        con.print(mounts)
    tree = Table(title="processes", title_justify="left")
    cols = ["pid", "ppid", "pgid", "sid", "threads", "state"]
    names = ["PID", "PPID", "PGID", "SID", "THR", "STATE"]
    if ve:  # the PIDs inside the VE (the others are the dumping host's)
        cols.insert(1, "vpid")
        names.insert(1, "VE PID")
    for col in names:
        tree.add_column(col, justify="right")
    tree.add_column("COMMAND")
    for p in s["processes"]:
        indent = "  " * p["depth"] + ("\\_ " if p["depth"] else "")
        tree.add_row(*(str(p[k]) for k in cols), _t(indent + p["comm"]))
    con.print(tree)
    _render_trust(con, s)
    secs = Table(title="sections", title_justify="left")
    for col in ("TYPE", "SECTIONS", "RECORDS", "STORED", "RAW"):
        secs.add_column(col, justify="left" if col == "TYPE" else "right")
    for r in s["sections"]:
        secs.add_row(
            r["type"], str(r["sections"]), str(r["records"]), _size(r["stored"]), _size(r["raw"])
        )
    con.print(secs)
    for w in s["warnings"]:
        _warn(w)


def _damaged(path: str, problems: list[str]) -> None:
    """The warning `show` prints first, on stderr, for an image whose bytes changed."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    name = shorten(path)
    _warn(
        f"{name}: the image is damaged: {problems[0]}{more}; what follows may be wrong "
        f"(`cpt image verify {name}` lists every problem)"
    )


@app.command()
def show(
    file: FileArg,
    as_json: JsonOpt = False,
    maps: Annotated[
        int | None,
        Option("--maps", metavar="PID", help="the VMAs of PID, like /proc/PID/maps"),
    ] = None,
    fds: Annotated[
        int | None,
        Option("--fds", metavar="PID", help="the fds of PID, like ls -l /proc/PID/fd"),
    ] = None,
) -> None:
    """Header, process tree and sections of a dump file; or one process's maps or fds.

    The file digest and every checksum are checked first: a damaged image is shown with a
    warning on stderr (and "integrity" in --json), as far as it can be read.
    """
    from cptimage import show as showmod
    from cptimage.container import ImageReader

    with ImageReader(file) as reader:
        damage = showmod.integrity(reader)
        if damage["problems"] and not as_json:
            _damaged(file, damage["problems"])
        for pid in (maps, fds):
            if pid is not None:
                _has_pid(reader, pid)
        doc: dict[str, Any] = {}
        if maps is not None:
            doc["maps"] = showmod.maps(reader, maps)
        if fds is not None:
            doc["fds"] = showmod.fds(reader, fds)
        if not doc or as_json:
            summary = showmod.summary(reader, damage)
            doc = {**summary, **doc} if as_json else summary
    if as_json:
        _print_json(doc)
    elif "maps" in doc or "fds" in doc:
        for row in doc.get("maps", []):
            print(printable(showmod.format_maps_line(row)))
        for row in doc.get("fds", []):
            print(printable(showmod.format_fd_line(row)))
    else:
        _render_summary(doc)


# --------------------------------------------------------------------------- decode, encode


def _input(path: str) -> str | BinaryIO:
    return sys.stdin.buffer if path == STDOUT else path


def _exposed_stdout() -> str | None:
    """Why JSON written to standard output could be read by others, or None: a terminal,
    or a regular file that others may read (`> f.json` under umask 022)."""
    try:
        fd = sys.stdout.fileno()
        st = os.fstat(fd)
    except (OSError, ValueError, io.UnsupportedOperation):
        return None  # not a file descriptor (a test's capture): nothing to say
    if os.isatty(fd):
        return "standard output is a terminal"
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        return f"standard output is a file of mode {stat.S_IMODE(st.st_mode):04o}"
    return None


@app.command()
def decode(
    file: Annotated[str, Argument(metavar="FILE", help="a dump file, or - for stdin")],
    output: Annotated[
        str,
        Option(
            "-o",
            "--output",
            metavar="OUT",
            help="write the JSON to OUT, created mode 0600 and written atomically (it holds "
            "every page of memory of the dumped processes); default: standard output",
        ),
    ] = STDOUT,
) -> None:
    """The image as JSON (lossless: `encode` gives back the same bytes).

    The JSON holds the processes' memory, secrets included: write it with -o OUT (mode
    0600) rather than through a shell redirection, which creates the file with the
    shell's umask (often readable by every user).
    """
    from cptimage import jsonio
    from cptimage.atomic import atomic_output
    from cptimage.container import open_regular

    src = sys.stdin.buffer if file == STDOUT else open_regular(file)  # refused before writing
    with contextlib.nullcontext() if file == STDOUT else src:
        if output == STDOUT:
            why = _exposed_stdout()
            if why:
                _warn(
                    f"{why}: the JSON holds the memory of the dumped processes; "
                    "use -o FILE to write it mode 0600"
                )
        with atomic_output(output) as out:  # 0600: the JSON holds memory pages
            text = io.TextIOWrapper(out, encoding="utf-8", newline="\n")
            try:
                jsonio.decode_to(src, text, path=None if file == STDOUT else file)
                text.flush()
            finally:
                text.detach()


@app.command()
def encode(
    input_: Annotated[str, Argument(metavar="IN", help="a JSON document, or - for stdin")],
    output: Annotated[
        str,
        Option("-o", "--output", metavar="FILE", help="the image to write (atomically, mode 0600)"),
    ],
) -> None:
    """Write the image a JSON document (from `decode`) describes."""
    from cptimage import jsonio
    from cptimage.atomic import atomic_output
    from cptimage.container import open_regular

    if input_ == STDOUT:
        doc = jsonio.load(sys.stdin)
    else:
        with io.TextIOWrapper(open_regular(input_, what="a JSON"), encoding="utf-8") as f:
            doc = jsonio.load(f)
    with atomic_output(output) as out:
        jsonio.encode(doc, out)


# --------------------------------------------------------------------------- diff


def _short(v: Any) -> str:
    s = printable(v if isinstance(v, str) else json.dumps(v))
    return s if len(s) <= 40 else f"{s[:32]}...({len(s)} chars)"


def diff_line(d: Difference) -> str:
    """One difference as `image diff` prints it: + added, - removed, ~ changed."""
    if d.a is None:
        return f"+ {d.path}: {_short(d.b)}"
    if d.b is None:
        return f"- {d.path}: {_short(d.a)}"
    return f"~ {d.path}: {_short(d.a)} -> {_short(d.b)}"


@app.command()
def diff(
    a: Annotated[str, Argument(metavar="A", help="a dump file")],
    b: Annotated[str, Argument(metavar="B", help="another dump file")],
    as_json: JsonOpt = False,
) -> None:
    """What differs between two images: processes, threads, VMAs, fds, files, pages.

    Exit 0 when they are the same, 1 when they differ.
    """
    from cptimage.diff import diff as diff_images

    diffs = diff_images(a, b)
    if as_json:
        _print_json([d.to_json() for d in diffs])
    else:
        for d in diffs:
            print(diff_line(d))
    if diffs:
        raise Exit(1)


# --------------------------------------------------------------------------- verify


@app.command()
def verify(
    file: Annotated[str, Argument(metavar="FILE", help="a dump file, or - for stdin")],
    as_json: JsonOpt = False,
    host: Annotated[bool, Option("--host", help="also check the image against this host")] = False,
) -> None:
    """Check checksums, digest, index and structure; one line per problem.

    Exit 0 when the image is clean, 1 when problems were found.
    """
    if host and file == STDOUT:
        raise UsageError("image verify --host needs a file, not standard input")
    from cptimage.verify import verify_report

    report = verify_report(_input(file))
    problems = list(report.problems)
    if host and not problems:
        # the engine's verify-before-restore: kernel, CPU, PIDs, referenced files
        from cpt.host.verify import check_host
        from cptimage.container import ImageReader

        with ImageReader(file) as reader:
            problems += check_host(reader)
    name = "-" if file == STDOUT else printable(file)
    if as_json:
        _print_json(
            {
                "file": name,
                "ok": not problems,
                "problems": [p.to_json() for p in problems],
                "warnings": report.warnings,
            }
        )
    else:
        for w in report.warnings:
            print(f"cpt: warning: {name}: {w}", file=sys.stderr)
        for p in problems:
            print(f"{name}: {p}")
        if not problems:
            print(f"{name}: ok")
    if problems:
        raise Exit(1)
