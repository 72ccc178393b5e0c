"""Hostile input to the image tools (issue 11): files that are not images, damaged images,
crafted values in images and in the JSON `image encode` reads.  Every case must end in one
`cpt:` line with the documented exit code: never a hang, a traceback, a Python internal in
the message, or 4 KiB of someone's value on one line.

The FIFO cases run `cpt` as a process with a timeout: the bug they guard against is a
hang in open(), which would hang the test run itself in-process.
"""

from __future__ import annotations

import copy
import io
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import samples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.main import run
from cptimage import jsonio
from cptimage import records as R
from cptimage.container import ImageReader, ImageWriter, open_regular
from cptimage.errors import ImageError, printable, quote, shorten
from cptimage.fields import BY_NAME, VarSpec, fields_of
from cptimage.verify import verify

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "fixtures" / "images"
TREE = str(GOLDEN / "tree.img")
TREE_JSON = GOLDEN / "tree.json"
INTERNALS = ("Traceback", "internal error", "Error:", "Errno", "format requires", "argument out")


def _cpt(*args: object, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    """`cpt ARGS` as a process, stdin closed, with a bound: a hang fails the test."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kw,
    )


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = run([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str, code: int, expected: int) -> None:
    assert code == expected, err
    assert err.startswith("cpt: ") and err.count("\n") == 1, err
    assert not any(s in err for s in INTERNALS), err


# --------------------------------------------------------------------------- not an image file


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    path = tmp_path / "dump.fifo"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize(
    "argv",
    [
        ["image", "verify", "F"],
        ["image", "verify", "F", "--json"],
        ["image", "show", "F"],
        ["image", "show", "F", "--maps", "100"],
        ["image", "decode", "F"],
        ["image", "diff", "F", TREE],
        ["image", "diff", TREE, "F"],
        ["image", "encode", "F", "-o", "OUT"],
        ["restore", "--dumpfile", "F"],
    ],
)
def test_a_fifo_is_refused_not_waited_for(fifo: str, tmp_path: Path, argv: list[str]) -> None:
    subst = {"F": fifo, "OUT": str(tmp_path / "out.img")}
    res = _cpt(*(subst.get(a, a) for a in argv), timeout=20)
    _one_line(res.stderr, res.returncode, 40)
    assert f"cpt: {fifo}: not a regular file but a FIFO" in res.stderr
    assert not (tmp_path / "out.img").exists()


def test_the_library_refuses_a_fifo_too(fifo: str) -> None:
    """ImageReader, verify and decode: what restore and every other reader go through."""
    for fn in (ImageReader, verify, jsonio.decode, open_regular):
        with pytest.raises(ImageError, match="not a regular file but a FIFO"):
            fn(fifo)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda p: os.mkdir(p), "a directory"),
        (lambda p: os.symlink(TREE, p), "symbolic link"),
        (lambda p: os.symlink("/dev/zero", p), "symbolic link"),
        (lambda p: socket.socket(socket.AF_UNIX).bind(str(p)), "a socket"),
    ],
)
def test_other_file_types_are_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, make: Callable[[Path], None], kind: str
) -> None:
    path = tmp_path / "x.img"
    make(path)
    for cmd in ("verify", "show", "decode"):
        code, _, err = _run(capsys, "image", cmd, path)
        _one_line(err, code, 40)
        assert kind in err and str(path) in err


def test_an_empty_file_name(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("verify", "show", "decode"):
        code, _, err = _run(capsys, "image", cmd, "")
        _one_line(err, code, 40)
        assert "the file name is empty" in err


def test_devices_are_refused_without_reading_them(capsys: pytest.CaptureFixture[str]) -> None:
    for dev, kind in (("/dev/zero", "a character device"), ("/dev/null", "a character device")):
        code, _, err = _run(capsys, "image", "verify", dev)
        _one_line(err, code, 40)
        assert kind in err


def test_standard_input_still_works() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "cli.main", "image", "verify", "-"],
        cwd=REPO,
        input=Path(TREE).read_bytes(),
        capture_output=True,
        timeout=30,
    )
    assert (p.returncode, p.stdout) == (0, b"-: ok\n")


# --------------------------------------------------------------------------- damaged images


def _damaged_pages(tmp_path: Path) -> str:
    """tree.img with one byte of page data changed: `show` reads no page, so only the
    digest and the PAGES checksum can tell."""
    raw = bytearray(Path(TREE).read_bytes())
    with ImageReader(io.BytesIO(bytes(raw))) as r:
        raw[r.page_blocks()[0].payload_offset + 100] ^= 0x40
    path = tmp_path / "damaged.img"
    path.write_bytes(bytes(raw))
    return str(path)


def test_show_warns_first_about_a_damaged_image(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = _damaged_pages(tmp_path)
    code, out, err = _run(capsys, "image", "show", bad)
    assert code == 0 and "processes" in out
    first = err.splitlines()[0]
    assert first.startswith(f"cpt: warning: {bad}: the image is damaged: the file digest is wrong")
    assert "cpt image verify" in first
    code, out, err = _run(capsys, "image", "show", bad, "--fds", "100")
    assert code == 0 and err.startswith("cpt: warning:") and "damaged" in err
    code, out, err = _run(capsys, "image", "show", bad, "--json")
    doc = json.loads(out)  # still valid JSON: the warning is a field
    assert doc["integrity"]["ok"] is False and err == ""
    assert any("PAGES" in p and "checksum" in p for p in doc["integrity"]["problems"])
    assert any("digest" in p for p in doc["integrity"]["problems"])


def test_show_of_a_clean_image_says_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "image", "show", TREE, "--json")
    assert code == 0 and err == ""
    assert json.loads(out)["integrity"] == {"ok": True, "problems": []}
    code, out, err = _run(capsys, "image", "show", TREE)
    assert code == 0 and err == ""


def _encode(tmp_path: Path, doc: dict[str, Any], name: str = "x.img") -> str:
    path = tmp_path / name
    with open(path, "wb") as f:
        jsonio.encode(doc, f)
    return str(path)


def _tree_doc() -> dict[str, Any]:
    return json.loads(TREE_JSON.read_text())


@pytest.mark.parametrize(
    "comm", ["[/x]", "[bold]big[/bold]", "a\x1b[31mred\x1b[0m", "two\nlines", "\x07bell"]
)
def test_show_prints_image_strings_as_text(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, comm: str
) -> None:
    """rich markup and terminal escapes in a comm, a host name, a mount point: shown as
    text, escaped, never interpreted (a "[/x]" used to crash show with MarkupError)."""
    doc = _tree_doc()
    doc["sections"][0]["records"][0]["comm"] = comm
    doc["header"]["hostname"] = comm
    path = _encode(tmp_path, doc)
    code, out, err = _run(capsys, "image", "show", path)
    assert code == 0 and err == "", err
    assert printable(comm) in out
    assert "\x1b" not in out and "\x07" not in out
    code, out, err = _run(capsys, "image", "show", path, "--fds", "100")
    assert code == 0 and "\x1b" not in out


# --------------------------------------------------------------------------- decode's output


def test_decode_output_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    old = os.umask(0)
    try:
        res = _cpt("image", "decode", TREE, "-o", out)
    finally:
        os.umask(old)
    assert res.returncode == 0 and res.stderr == ""
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, True), (0o600, False)])
def test_decode_to_a_readable_redirection_warns(tmp_path: Path, mode: int, warned: bool) -> None:
    """`cpt image decode F > f.json`: the shell made f.json with its umask."""
    out = tmp_path / "f.json"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, mode)
    os.fchmod(fd, mode)
    try:
        res = subprocess.run(
            [sys.executable, "-m", "cli.main", "image", "decode", TREE],
            cwd=REPO,
            stdout=fd,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
        )
    finally:
        os.close(fd)
    assert res.returncode == 0
    assert out.read_text() == TREE_JSON.read_text()
    if warned:
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("cpt: warning: ")
        assert f"mode {mode:04o}" in res.stderr and "-o FILE" in res.stderr
        assert "memory" in res.stderr
    else:
        assert res.stderr == ""


def test_decode_to_a_pipe_is_quiet() -> None:
    res = _cpt("image", "decode", TREE)
    assert res.returncode == 0 and res.stderr == "" and res.stdout == TREE_JSON.read_text()


def test_decode_documents_its_output_option() -> None:
    res = _cpt("image", "decode", "--help", env={**os.environ, "COLUMNS": "200"})
    assert "-o" in res.stdout and "0600" in res.stdout and "memory" in res.stdout
    readme = (REPO / "README.md").read_text()
    assert "cpt image decode" in readme and "-o" in readme and "0600" in readme


# --------------------------------------------------------------------------- long values


def test_quoting_cuts_long_values() -> None:
    assert quote("x" * 4096) == repr("x" * 4096)[:80] + "... (4096 characters)"
    assert quote("short") == "'short'"
    assert shorten("a\nb") == "a\\nb"
    assert len(shorten("/p" * 3000)) < 120
    assert printable("t\x1b[0m") == "t\\x1b[0m"


BIG = "y" * 4096


@pytest.mark.parametrize(
    ("mutate", "place"),
    [
        (lambda d: d["sections"][0]["records"][0].update({BIG: 1}), "sections[0].records[0]"),
        (lambda d: d["sections"][0]["records"][0].update(state=BIG), "records[0].state"),
        (lambda d: d["sections"][0]["records"][0].update(record=BIG), "sections[0].records[0]"),
        (lambda d: d["sections"][0].update(type=BIG), "sections[0].type"),
        (lambda d: d["sections"][0]["records"][0].update(pid=[1] * 4096), "records[0].pid"),
        (lambda d: d["sections"][0]["records"][0].update(pid=10**4000), "records[0].pid"),
        (lambda d: d["header"].update(cpu_flags=[BIG, 7]), "header.cpu_flags[1]"),
    ],
)
def test_encode_errors_are_short_and_name_the_place(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, mutate: Callable[[Any], None], place: str
) -> None:
    doc = _tree_doc()
    mutate(doc)
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(doc))
    code, _, err = _run(capsys, "image", "encode", src, "-o", tmp_path / "x.img")
    _one_line(err, code, 40)
    assert place in err and len(err) < 300, err


def test_a_long_path_is_cut(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "image", "verify", "/" + "d" * 4000)
    _one_line(err, code, 40)
    assert len(err) < 300 and "(4001 characters)" in err


# --------------------------------------------------------------------------- hostile JSON


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set a value at a dotted path of the document (numbers index arrays)."""

    def edit(doc: dict[str, Any]) -> None:
        *head, last = path.split(".")
        node: Any = doc
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("sections.0.records.0.pid", 2**70), "sections[0].records[0].pid: cannot encode"),
        (_set("sections.0.records.0.pid", -1), "out of range for u32"),
        (_set("sections.0.records.0.exit_status", 2**31), "out of range for i32"),
        (_set("sections.0.records.0.nspid", [2**40]), "sections[0].records[0].nspid[0]"),
        (_set("sections.0.records.0.nspid", ["a"]), "expected an integer"),
        (_set("sections.0.records.0.comm", "\ud800"), "cannot be stored"),
        (_set("sections.0.records.0.comm", 5), "expected text"),
        (_set("header.cpu_flags", [1]), "header.cpu_flags[0]: expected text"),
        (_set("header.uuid", "00"), "header.uuid: 1 bytes"),
        (_set("header.uuid", 5), "header.uuid: expected hex text"),
        (_set("header.page_size", 3), "header.page_size"),
        (_set("version", [1, 2**70]), "version[1]"),
        (_set("sections.0.version", 2**20), "sections[0].version"),
        (
            lambda d: d["sections"][0].update(compression="zstd", level=99),
            "zstd levels go up to 22",
        ),
        (_set("sections.3.base", 2**70), "sections[3].base"),
        (_set("sections.0.compression", "zstd"), None),  # fine: stored compressed
        (_set("sections.1.records.0", {"record": "Process", "pid": 1}), "belongs in section"),
        (_set("sections.0.records", "x"), "expected an array"),
        (_set("sections.4.records", []), "holds data, not records"),
        (lambda d: d["sections"][0].update(data="AAAA", records=None), "expected an array"),
        (lambda d: d["sections"][0].pop("records"), "holds records, not data"),
        (_set("sections.0.data", "AAAA"), None),  # beside "records": not read
        (
            _set("sections.0.records.0", {"record": None, "tag": 0x01F0, "raw": "AAAAAAAAAAA="}),
            "does not describe",
        ),
        (
            _set("sections.0.records.0", {"record": None, "tag": 2**40, "raw": "AAAAAAAAAAA="}),
            "tag",
        ),
    ],
)
def test_hostile_json_is_refused_by_encode(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], message: str | None
) -> None:
    doc = _tree_doc()
    edit(doc)
    if message is None:
        jsonio.encode(doc, io.BytesIO())
        return
    with pytest.raises(ImageError, match=".*" + message.replace("[", r"\[").replace("]", r"\]")):
        jsonio.encode(doc, io.BytesIO())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"a": ' + "9" * 5000 + "}", "invalid JSON"),
        (b"\xff\xfe{}".decode("latin-1"), "invalid JSON"),
        ("[1, 2]", "expected an object"),
    ],
)
def test_unreadable_json_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    src = tmp_path / "bad.json"
    src.write_bytes(text.encode("latin-1"))
    code, _, err = _run(capsys, "image", "encode", src, "-o", tmp_path / "x.img")
    _one_line(err, code, 40)
    assert message in err


# JSON values a mutation puts in place of another
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
_DOC = _tree_doc()


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:6]):  # the first few of each list: enough variety
            out += _paths(v, (*prefix, i))
    return out


_PATHS = [p for p in _paths(_DOC) if p]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from(_PATHS),
    value=_JSON_VALUES,
    drop=st.booleans(),
)
def test_mutated_json_encodes_or_is_an_image_error(
    where: tuple[Any, ...], value: Any, drop: bool
) -> None:
    """Any value anywhere (or a key removed): encode writes an image or raises ImageError,
    whose message is one line; an image it writes is read back by verify without a
    traceback."""
    doc = copy.deepcopy(_DOC)
    node: Any = doc
    for k in where[:-1]:
        node = node[k]
    if drop and isinstance(node, dict):
        del node[where[-1]]
    else:
        node[where[-1]] = value
    buf = io.BytesIO()
    try:
        jsonio.encode(doc, buf)
    except ImageError as e:
        assert "\n" not in str(e) and len(str(e)) < 400, str(e)
        return
    verify(io.BytesIO(buf.getvalue()))  # problems are fine; an exception is not


def test_hostile_image_strings_survive_every_reader(tmp_path: Path) -> None:
    """Control characters, markup and huge strings in paths, names and comms of a sealed
    image: verify, show (text and JSON), decode and diff run to the end."""
    buf = io.BytesIO()
    samples.tree_image(buf)
    doc = jsonio.decode(io.BytesIO(buf.getvalue()))
    nasty = "[/x]\x1b[2J\n" + "z" * 5000
    for sec in doc["sections"]:
        for rec in sec.get("records", []):
            for key, spec in fields_of(BY_NAME[rec["record"]].cls):
                if isinstance(spec, VarSpec) and spec.kind == "text":
                    rec[key] = nasty
    path = _encode(tmp_path, doc)
    for argv in (
        ["image", "verify", path],
        ["image", "show", path],
        ["image", "show", path, "--json"],
        ["image", "show", path, "--maps", "100"],
        ["image", "show", path, "--fds", "101"],
        ["image", "decode", path, "-o", str(tmp_path / "d.json")],
        ["image", "diff", path, TREE],
    ):
        res = _cpt(*argv, env={**os.environ, "COLUMNS": "120"})
        assert res.returncode in (0, 1), (argv, res.stderr)
        assert not any(s in res.stderr for s in INTERNALS), res.stderr
        assert "\x1b" not in res.stdout or "--json" in argv, argv
    report = [str(p) for p in verify(path)]
    assert report and all(len(p) < 400 and "\n" not in p for p in report), report


def test_sealed_records_of_every_kind_read_without_tracebacks(tmp_path: Path) -> None:
    """Out-of-range values the format can carry (an address family of 99, a 3-byte
    address): show renders them without a Python error."""
    buf = io.BytesIO()
    hdr = samples.header(
        flags=R.HeaderFlags.VE | R.HeaderFlags.PIDNS,
        source_kind=R.SourceKind.VE,
        created_ns=2**64 - 1,
    )
    with ImageWriter(buf, hdr) as w:
        w.add_section(R.SectionType.PROCESS, [R.Process(pid=100, state=1, comm="x")])
        w.add_section(
            R.SectionType.NAMESPACES,
            [
                R.NetAddr(family=99, prefixlen=200, address=b"\x01\x02\x03"),
                R.NetAddr(family=2, prefixlen=8, address=b"\x01"),
                R.Mount(mnt_id=1, mountpoint="[/m]", fstype="\x1b", source="s"),
            ],
        )
    path = tmp_path / "odd.img"
    path.write_bytes(buf.getvalue())
    for argv in (["image", "show", path], ["image", "show", path, "--json"]):
        res = _cpt(*argv)
        assert res.returncode == 0, res.stderr
        assert not any(s in res.stderr for s in INTERNALS), res.stderr


def test_verify_host_cuts_the_image_strings_it_quotes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`image verify --host` (and restore) name the image's kernel, CPU flags and paths."""
    doc = _tree_doc()
    doc["header"]["kernel_release"] = "k" * 5000
    doc["header"]["cpu_flags"] = ["f" * 5000]
    path = _encode(tmp_path, doc)
    code, out, _ = _run(capsys, "image", "verify", path, "--host")
    assert code == 1
    kernel = next(ln for ln in out.splitlines() if "kernel" in ln)
    cpu = next(ln for ln in out.splitlines() if "lacks" in ln)
    assert "(5000 characters)" in kernel and len(kernel) < 400, kernel
    assert "(5000 characters)" in cpu and len(cpu) < 400, cpu
