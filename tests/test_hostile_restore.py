"""Hostile images against `cpt restore` of a real dump (issue 11): sealed mutants (every
checksum and the digest right) that only the invariants of SPEC.md section 11 catch are
refused before any process exists, with one line naming the section and the record (exit
40: the image is damaged); a FIFO given as the dump file is refused, not waited on; a fault
injected half-way is reported in one plain line; and after all of them the
unmutated image still restores a workload that passes its own checks.

fixtures/workloads/files.c (files, a pipe holding data, a FIFO, fds sharing descriptions)
is dumped once for the module.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cptcli import CptRunner
from workloads import Workload, reaping, start

from cptimage import jsonio

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="checkpoint/restore needs root (ptrace, clone3 set_tid)"
    ),
]

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def dumped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The files workload, started and checkpointed (killed); its image and JSON."""
    tmp = tmp_path_factory.mktemp("hostile-restore")
    wl = start("files", tmp / "wl")
    try:
        wl.wait_counter()
        pids = wl.refresh()
        img = tmp / "files.img"
        cpt = CptRunner(tmp / "run")
        with reaping(wl):
            rc, _, err = cpt("chkpnt", "--pid", wl.pid, "--dumpfile", img)
        assert rc == 0, err
        doc = jsonio.decode(img)
        yield {"wl": wl, "img": img, "doc": doc, "tmp": tmp, "cpt": cpt, "pids": pids}
    finally:
        wl.kill_tree()


def _records(doc: Doc, name: str) -> list[dict[str, Any]]:
    return [r for s in doc["sections"] for r in s.get("records", []) if r["record"] == name]


def _drop(name: str, which: Callable[[dict[str, Any]], bool] = lambda r: True) -> Any:
    def edit(doc: Doc) -> None:
        for s in doc["sections"]:
            if "records" in s:
                s["records"] = [r for r in s["records"] if not (r["record"] == name and which(r))]

    return edit


def _first(name: str, **values: Any) -> Any:
    def edit(doc: Doc) -> None:
        _records(doc, name)[0].update(values)

    return edit


def _root_creds_dropped(doc: Doc) -> None:
    root = doc["header"]["root_pid"]
    _drop("Creds", lambda r: r["pid"] == root)(doc)


def _limits(doc: Doc) -> None:
    _records(doc, "Rlimits")[0]["limits"][0]["resource"] = 99


def _sigkill(doc: Doc) -> None:
    _records(doc, "Sigactions")[0]["actions"][0]["signo"] = 9


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_root_creds_dropped, "has no Creds"),
        (_first("Creds", uid=2**32 - 1), "(uid_t)-1"),
        (_limits, "resource 99 is not one of the 16"),
        (_drop("Fd"), "is in no fd table"),
        (_drop("PipeData"), "has no PipeData"),
        (_first("PathObj", path="../../etc/passwd"), "is not absolute"),
        (_first("Process", comm="x" * 5000), "the kernel keeps 15"),
        (_sigkill, "signal 9 has no action"),
        (_drop("Thread"), "has no Thread"),
        (_first("Pipe", ino=424242), "has no PipeData"),
    ],
)
def test_sealed_mutants_are_refused_before_any_process(
    dumped: dict[str, Any], edit: Callable[[Doc], None], expected: str
) -> None:
    doc = json.loads(json.dumps(dumped["doc"]))  # a deep copy
    edit(doc)
    out = io.BytesIO()
    jsonio.encode(doc, out)
    img = dumped["tmp"] / "mutant.img"
    img.write_bytes(out.getvalue())
    before = _alive(dumped["pids"])
    rc, _, err = dumped["cpt"]("restore", "--dumpfile", img, timeout=60)
    assert rc == 40, err  # a damaged image (SPEC.md section 9), not a failed restore (17)
    assert err.startswith("cpt: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err and "refusing to restore" in err, err
    assert _alive(dumped["pids"]) == before == set()


def test_a_fifo_dump_file_is_refused(dumped: dict[str, Any]) -> None:
    fifo = dumped["tmp"] / "dump.fifo"
    os.mkfifo(fifo)
    rc, _, err = dumped["cpt"]("restore", "--dumpfile", fifo, timeout=20)
    assert rc == 40 and "not a regular file but a FIFO" in err, err


def _file_pages_beyond_the_file(doc: Doc) -> None:
    """A private file mapping's offset moved 2 GiB past the file's end, where pages were
    written: the restore's page write faults half-way (the soak found it hidden behind a
    BufferError: the image map could not be closed while the fault's traceback held a
    view of it)."""
    runs = [r for r in _records(doc, "PagemapRun") if r["owner_kind"] == "PROCESS"]
    for v in _records(doc, "Vma"):
        if v["kind"] == "FILE_PRIVATE" and any(
            r["owner"] == v["pid"] and v["start"] <= r["vaddr"] < v["end"] and r["flags"] & 1
            for r in runs
        ):
            v["pgoff"] = 2**31
            return
    raise AssertionError("no private file mapping with pages in the image")


def test_a_page_write_that_faults_is_one_plain_line(dumped: dict[str, Any]) -> None:
    doc = json.loads(json.dumps(dumped["doc"]))
    _file_pages_beyond_the_file(doc)
    out = io.BytesIO()
    jsonio.encode(doc, out)
    img = dumped["tmp"] / "pgoff.img"
    img.write_bytes(out.getvalue())
    with reaping(dumped["wl"]):
        rc, _, err = dumped["cpt"]("restore", "--dumpfile", img, timeout=60)
    assert rc == 17, err
    assert err.startswith("cpt: ") and err.count("\n") == 1, err
    assert "BufferError" not in err and "[Errno" not in err, err
    assert _alive(dumped["pids"]) == set()


def test_an_injected_fault_is_one_plain_line(dumped: dict[str, Any]) -> None:
    """CPT_FAULT's exception is a CptError: the line names the point, not the class."""
    with reaping(dumped["wl"]):
        rc, _, err = dumped["cpt"](
            "restore", "--dumpfile", dumped["img"], fault="restore:memory", timeout=60
        )
    assert rc == 17, err
    assert err.startswith("cpt: ") and err.count("\n") == 1, err
    assert "failed: fault injected at restore:memory (CPT_FAULT)" in err, err
    assert "InjectedFault" not in err, err
    assert _alive(dumped["pids"]) == set()


def test_the_unmutated_image_still_restores(dumped: dict[str, Any]) -> None:
    """Last: nothing the mutants did touched the workload's files or left a process."""
    wl: Workload = dumped["wl"]
    rc, _, err = dumped["cpt"]("restore", "--dumpfile", dumped["img"], timeout=60)
    assert rc == 0, err
    wl.refresh()
    wl.wait_counter()
    with reaping(wl):
        assert wl.finish() == "PASS"


def _alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists()}
