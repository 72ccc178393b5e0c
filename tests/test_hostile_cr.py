"""Hostile command lines and files against `cpt chkpnt` and `cpt restore` (issue 11,
"Medium and low"): each is refused with one `cpt:` line and the exit code SPEC.md section 9
documents, before any process, lock or file is touched, and never blocks.

    --pid 0, -1, 2^70          21 (invalid value), not 31 (not running)
    --dumpfile ''              21, never the default dump file in disguise
    an empty or corrupt image  40 (the image cannot be read), not 17 (restore failed)
    a FIFO as the dump file    40 at once, whatever the stage (open() never waits for a writer)

and what the engine raises past a stage never shows Python's internals (an OSError's bare
"[Errno 22]", an exception's class name such as InjectedFault).  The refusals need no
root: a regression that let one through would fail on a PID that is a `sleep` of the
test's own, never on a process that matters.
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import samples
from cptcli import CptRunner

from cpt.errors import DumpError, InvalidValue, RestoreError, os_error_text
from cpt.fault import InjectedFault
from cpt.stages.stage import Stage
from cpt.stages.tree import fails_as
from cpt.stages.trees import PID_MAX_LIMIT, TreeStages
from snapshot.hooks import CatalogHooks
from ve.node import Node
from ve.stages import VeStages


@pytest.fixture
def cpt(tmp_path: Path) -> CptRunner:
    return CptRunner(tmp_path / "run")


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A process of the test's own: what a chkpnt that wrongly went ahead would reach."""
    p = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait(10)


def _one_line(err: str) -> None:
    assert err.startswith("cpt: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "Error:" not in err and "[Errno" not in err, err


# --------------------------------------------------------------------------- --pid


@pytest.mark.parametrize("pid", ["0", "-1", str(2**70), str(PID_MAX_LIMIT + 1)])
def test_a_pid_that_cannot_exist_is_an_invalid_value(
    cpt: CptRunner, tmp_path: Path, pid: str
) -> None:
    rc, _, err = cpt("chkpnt", "--pid", pid, "--dumpfile", tmp_path / "d.img", timeout=30)
    assert rc == 21, err
    _one_line(err)
    assert f"PID {pid}: not a process ID" in err, err
    assert not (tmp_path / "d.img").exists()


def test_the_library_refuses_it_too() -> None:
    for pid in (0, -1, 2**70, PID_MAX_LIMIT + 1):
        with pytest.raises(InvalidValue, match="not a process ID"):
            TreeStages(pid)
    assert TreeStages(PID_MAX_LIMIT).pid == PID_MAX_LIMIT  # a PID; maybe not running


def test_a_pid_that_does_not_run_is_still_not_running(cpt: CptRunner, tmp_path: Path) -> None:
    rc, _, err = cpt("chkpnt", "--pid", PID_MAX_LIMIT, "--dumpfile", tmp_path / "d.img")
    assert rc == 31 and "does not exist" in err, err


# --------------------------------------------------------------------------- --dumpfile ''

EMPTY_DUMPFILE = [
    ["chkpnt", "--pid", "{pid}", "--dumpfile="],
    ["chkpnt", "--pid", "{pid}", "--suspend", "--dumpfile="],
    ["chkpnt", "--pid", "{pid}", "--leave-running", "--dumpfile="],
    ["chkpnt", "7002", "--dumpfile="],
    ["restore", "--dumpfile="],
    ["restore", "--dumpfile=", "--undump"],
    ["restore", "--dumpfile=", "--resume"],
    ["restore", "--dumpfile=", "--kill"],
    ["restore", "7002", "--dumpfile="],
]


@pytest.mark.parametrize("argv", EMPTY_DUMPFILE, ids=" ".join)
def test_an_empty_dumpfile_is_refused(
    cpt: CptRunner, tmp_path: Path, sleeper: int, argv: list[str]
) -> None:
    """'' used to mean the default (a VE's /var/tmp/Dump.VEID) or fail deep in the write
    with a bare errno after the tree was frozen."""
    rc, _, err = cpt("--root", tmp_path / "node", *(a.format(pid=sleeper) for a in argv))
    assert rc == 21, err
    _one_line(err)
    assert "--dumpfile is empty" in err, err
    state = Path(f"/proc/{sleeper}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state in "SR", f"the sleeper was touched: state {state}"
    assert not (tmp_path / "run").exists() or not os.listdir(tmp_path / "run")


def test_a_ve_never_takes_an_empty_name_for_its_default(tmp_path: Path) -> None:
    node = Node(str(tmp_path))
    ve = VeStages("101", CatalogHooks(node), node)
    with pytest.raises(InvalidValue, match="--dumpfile is empty"):
        ve.dumpfile("")
    assert ve.dumpfile() == str(tmp_path / "dump" / "Dump.101")
    for call in (lambda: ve.chkpnt(Stage.CHKPNT, ""), lambda: ve.restore(Stage.RESTORE, "")):
        with pytest.raises(InvalidValue, match="--dumpfile is empty"):
            call()


# --------------------------------------------------------------------------- not an image


def _files(tmp_path: Path) -> dict[str, Path]:
    good = io.BytesIO()
    samples.GOLDENS["tree"](good)
    raw = good.getvalue()
    out = {
        "empty": b"",
        "garbage": os.urandom(5000),
        "truncated": raw[: len(raw) // 2],
        "flipped": raw[:100] + bytes([raw[100] ^ 0x40]) + raw[101:],
    }
    paths = {}
    for name, data in out.items():
        (tmp_path / name).write_bytes(data)
        paths[name] = tmp_path / name
    (tmp_path / "dir").mkdir()
    paths["dir"] = tmp_path / "dir"
    paths["missing"] = tmp_path / "missing"
    return paths


@pytest.mark.parametrize("name", ["empty", "garbage", "truncated", "flipped", "dir", "missing"])
@pytest.mark.parametrize("stage", [[], ["--undump"], ["--resume"], ["--kill"]], ids=str)
def test_no_image_is_exit_40(cpt: CptRunner, tmp_path: Path, name: str, stage: list[str]) -> None:
    """SPEC.md section 9: 40, "the image cannot be read"; 17 says a restore failed."""
    path = _files(tmp_path)[name]
    rc, _, err = cpt("restore", "--dumpfile", path, *stage, timeout=30)
    assert rc == 40, err
    _one_line(err)
    assert str(path) in err, err


@pytest.mark.parametrize("stage", [[], ["--undump"], ["--resume"], ["--kill"]], ids=str)
def test_a_fifo_dump_file_is_refused_at_once(
    cpt: CptRunner, tmp_path: Path, stage: list[str]
) -> None:
    """open() of a FIFO waits for a writer: nobody writes here, so a restore that opened it
    would hang until the timeout (subprocess.TimeoutExpired fails the test)."""
    fifo = tmp_path / "dump.fifo"
    os.mkfifo(fifo)
    rc, _, err = cpt("restore", "--dumpfile", fifo, *stage, timeout=20)
    assert rc == 40, err
    _one_line(err)
    assert "not a regular file but a FIFO" in err, err


# --------------------------------------------------------------------------- internals


class _Tree:
    label = "tree 4242"
    root = 4242


def test_an_os_error_is_said_in_words() -> None:
    assert os_error_text(OSError(errno.EINVAL, "Invalid argument")) == "Invalid argument (EINVAL)"
    e = FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y")
    assert os_error_text(e) == "/x/y: No such file or directory (ENOENT)"
    e2 = OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")
    assert os_error_text(e2) == "/a -> /b: Invalid cross-device link (EXDEV)"
    assert os_error_text(OSError("odd")) == "odd"
    long = os_error_text(OSError(errno.ENAMETOOLONG, "File name too long", "/" + "x" * 5000))
    assert len(long) < 220 and "ENAMETOOLONG" in long and "(5001 characters)" in long
    own = FileExistsError(errno.EEXIST, "exists and is not a regular file", "/d")
    assert os_error_text(own) == "/d: exists and is not a regular file"  # cpt's own words
    assert os_error_text(OSError(errno.EIO, "x", "a\nb")) == "a\\nb: x"  # one line


@pytest.mark.parametrize(
    ("raised", "said"),
    [
        (OSError(errno.EINVAL, "Invalid argument"), "Invalid argument (EINVAL)"),
        (InjectedFault("fault injected at dump:pages (CPT_FAULT)"), "fault injected at dump"),
    ],
)
@pytest.mark.parametrize("cls", [DumpError, RestoreError])
def test_a_stage_failure_shows_no_python_internals(
    monkeypatch: pytest.MonkeyPatch, raised: Exception, said: str, cls: Any
) -> None:
    monkeypatch.delenv("CPT_DEBUG", raising=False)

    @fails_as(cls, "checkpoint")
    def stage(tree: _Tree) -> None:
        raise raised

    with pytest.raises(cls) as info:
        stage(_Tree())
    msg = str(info.value)
    assert msg.startswith("checkpoint of tree 4242 failed: ") and said in msg, msg
    assert "[Errno" not in msg and "InjectedFault" not in msg and "OSError" not in msg, msg
