"""The run-dir store of a VE (ve/runtime.py): the names on disk, the runtime facts, and
the frozen state read through cpt's stage-state store, in a run directory of the test's
own."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cpt.errors import InvalidValue
from cpt.procfs import Proc
from cpt.stages.store import TreeState
from cpt.stages.tree import Tree
from ve.runtime import RunState, object_name


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CPT_RUN_DIR", str(tmp_path))
    return tmp_path


def test_every_per_ve_object_is_named_ve_veid(run_dir: Path) -> None:
    run = RunState("101")
    assert object_name("101") == "ve-101"
    assert run.path == str(run_dir / "ve-101.runtime.json")
    assert run.freezer().name == "ve-101"
    tree = run.tree()
    assert (tree.name, tree.ve_id, tree.store.path) == (
        "ve-101",
        "101",
        str(run_dir / "ve-101.json"),
    )
    with run.locked():
        assert sorted(os.listdir(run_dir)) == ["ve-101.lock"]
    with pytest.raises(InvalidValue, match="VE id"):
        RunState("../x")


def test_runtime_facts_name_a_live_init_only(run_dir: Path) -> None:
    run = RunState("102")
    assert run.runtime() is None and not run.recorded()
    rt = run.record(os.getpid(), "cpt102")
    assert (rt.init_pid, rt.host_if) == (os.getpid(), "cpt102")
    assert rt.starttime == Proc().stat(os.getpid()).starttime
    assert run.runtime() == rt
    assert json.loads(Path(run.path).read_text()) == {
        "init_pid": os.getpid(), "host_if": "cpt102", "starttime": rt.starttime,
    }  # fmt: skip
    # The same PID started at another time is another process: not the VE's init.
    Path(run.path).write_text(
        json.dumps({**json.loads(Path(run.path).read_text()), "starttime": 1})
    )
    assert run.runtime() is None and run.recorded()
    run.tree().store.save(TreeState(0, "suspended", {}))
    run.clear()
    assert os.listdir(run_dir) == []


def test_undumped_is_what_the_tree_state_says(run_dir: Path) -> None:
    run = RunState("103")
    assert not run.undumped()
    tree = Tree(0, name="ve-103", ve_id="103")
    tree.store.save(TreeState(0, "undumped", {}))
    assert run.undumped()
    tree.store.save(TreeState(0, "suspended", {}))
    assert not run.undumped()
    Path(tree.store.path).write_text("{not json")
    assert not run.undumped()
