"""cpt.sys.ns: the one way a thread visits a namespace and comes back (in_namespace,
entered, unshared), and cpt.sys.uts.  Only the calling thread moves; the process's other
threads stay.  Needs root (unshare, setns)."""

from __future__ import annotations

import os
import threading

import pytest

from cpt.errors import NoSuchProcess
from cpt.sys.ns import PER_THREAD, entered, in_namespace, unshared
from cpt.sys.uts import sethostname, uname

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="unshare and setns need root"),
]
NOT_A_PID = 2**22 + 1


def ns_ino(kind: str, who: str = "thread-self") -> int:
    return os.stat(f"/proc/{who}/ns/{kind}").st_ino


def in_a_thread(fn) -> dict:
    """Run fn(out) in a new thread (its namespaces die with it), return what it put in out."""
    out: dict = {}

    def run() -> None:
        try:
            fn(out)
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert not t.is_alive()
    return out


def test_unshared_moves_the_thread_only_and_comes_back() -> None:
    main = ns_ino("ipc")

    def fn(out: dict) -> None:
        out["before"] = ns_ino("ipc")
        with unshared("ipc"):
            out["inside"] = ns_ino("ipc")
            out["process"] = ns_ino("ipc", "self")  # the main thread's
        out["after"] = ns_ino("ipc")

    got = in_a_thread(fn)
    assert got["before"] == got["after"] == got["process"] == main != got["inside"]


def test_in_namespace_and_entered_visit_another_process() -> None:
    def fn(out: dict) -> None:
        with unshared("uts"):
            sethostname("cpt-ns-test")
            out["uts"] = ns_ino("uts")
            out["host"] = uname()[1]
            # the same thread visits its own process (the host side) and comes back
            with in_namespace(os.getpid(), "uts") as ino:
                out["visited"] = (ino, ns_ino("uts"), uname()[1])
            out["back"] = ns_ino("uts")
            with entered(os.getpid(), ("uts", "ipc")):
                out["entered"] = ns_ino("uts")
            out["back2"] = ns_ino("uts")

    got = in_a_thread(fn)
    assert "error" not in got, got.get("error")
    host = ns_ino("uts")
    assert got["host"] == "cpt-ns-test" != os.uname().nodename
    assert got["visited"] == (host, host, os.uname().nodename)
    assert got["back"] == got["back2"] == got["uts"] != host
    assert got["entered"] == host


def test_errors() -> None:
    for kind in ("mnt", "pid", "user"):
        assert kind not in PER_THREAD
        with pytest.raises(ValueError), in_namespace(os.getpid(), kind):
            pass
    before = ns_ino("net")
    with pytest.raises(NoSuchProcess) as e, in_namespace(NOT_A_PID, "net"):
        pass
    assert e.value.pid == NOT_A_PID and ns_ino("net") == before


def test_uname_matches_os_uname() -> None:
    u = os.uname()
    assert uname()[:5] == (u.sysname, u.nodename, u.release, u.version, u.machine)
