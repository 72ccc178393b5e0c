"""The stages in the library (cpt/stages/, ve/stages.py): the Stage names, the checks every
entry point makes before it touches anything, and the stage state between commands, in a
run directory of the test's own.  The stages themselves run on real processes in
test_engine_e2e.py and test_ve_cr.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli.main import run
from cpt.dump.options import DumpOptions
from cpt.errors import UsageError
from cpt.restore.options import RestoreOptions
from cpt.stages.stage import CHKPNT_STAGES, RESTORE_STAGES, Stage, Stages, check_stage
from cpt.stages.store import StateStore, TreeState, run_path
from cpt.stages.trees import TreeStages, default_dumpfile
from snapshot.hooks import CatalogHooks
from ve.node import Node
from ve.stages import VeStages


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CPT_RUN_DIR", str(tmp_path / "run"))
    return tmp_path / "run"


def test_the_stages_of_each_command() -> None:
    assert {s.value for s in CHKPNT_STAGES} == {"chkpnt", "suspend", "dump", "kill", "resume"}
    assert {s.value for s in RESTORE_STAGES} == {"restore", "undump", "resume", "kill"}
    assert [Stage(v).done for v in ("suspend", "dump", "undump", "chkpnt", "restore")] == [
        "suspended", "dumped", "undumped", "checkpointed", "restored",
    ]  # fmt: skip
    check_stage(Stage.KILL, "chkpnt")
    check_stage(Stage.KILL, "restore")
    with pytest.raises(UsageError, match="chkpnt has no stage undump"):
        check_stage(Stage.UNDUMP, "chkpnt")
    with pytest.raises(UsageError, match="restore has no stage suspend"):
        check_stage(Stage.SUSPEND, "restore")


def test_a_tree_and_a_ve_have_the_same_entry_point(tmp_path: Path) -> None:
    tree: Stages = TreeStages(4242)
    ve: Stages = VeStages("101", CatalogHooks(Node(str(tmp_path))), Node(str(tmp_path)))
    assert (tree.label, tree.dumpfile()) == ("tree 4242", default_dumpfile(4242))
    assert tree.dumpfile("x.img") == "x.img"
    assert (ve.label, ve.dumpfile()) == ("VE 101", str(tmp_path / "dump" / "Dump.101"))


def test_entry_points_refuse_before_touching_anything(run_dir: Path) -> None:
    """Every refusal here comes before a process, a file or a lock is looked at: the PIDs
    and dump files named do not exist."""
    tree = TreeStages(4_000_000 - 7)  # above any default pid_max: no such process
    with pytest.raises(UsageError, match="chkpnt has no stage"):
        tree.chkpnt(Stage.UNDUMP)
    with pytest.raises(UsageError, match="--leave-running is a full checkpoint"):
        tree.chkpnt(Stage.SUSPEND, opts=DumpOptions(leave_running=True))
    with pytest.raises(UsageError, match="--dump needs --dumpfile"):
        tree.chkpnt(Stage.DUMP)
    image = TreeStages()
    with pytest.raises(UsageError, match="--rollback-fs is for a VE"):
        image.restore(Stage.RESTORE, "missing.img", RestoreOptions(rollback_fs=True))
    with pytest.raises(UsageError, match="restore needs a VEID or --dumpfile"):
        image.restore(Stage.RESTORE)
    for opts in (RestoreOptions(pidns=True), RestoreOptions(ipcns=True)):
        for stage in (Stage.RESUME, Stage.KILL):
            with pytest.raises(UsageError, match="belong to a full restore or --undump"):
                image.restore(stage, "missing.img", opts)
    ve = VeStages("101", CatalogHooks(Node(str(run_dir))), Node(str(run_dir)))
    with pytest.raises(UsageError, match="are for process trees"):
        ve.restore(Stage.RESTORE, opts=RestoreOptions(shell_job=True))
    with pytest.raises(UsageError, match="--leave-running is a full checkpoint"):
        ve.chkpnt(Stage.KILL, opts=DumpOptions(leave_running=True))
    assert not run_dir.exists() or os.listdir(run_dir) == []


def test_the_cli_refuses_resume_or_kill_with_restore_options(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--pidns, --ipcns and --shell-job with --resume or --kill: refused (exit 20).  The
    check stood after the branch that returned for those stages, so it never ran and the
    options were silently ignored."""
    for opt in ("--pidns", "--ipcns", "--shell-job"):
        for stage in ("--resume", "--kill"):
            assert run(["restore", "--dumpfile", "missing.img", stage, opt]) == 20
            assert "belong to a full restore or --undump" in capsys.readouterr().err
    assert run(["restore", "101", "--pidfile", "p"]) == 20
    assert "are for process trees" in capsys.readouterr().err


def test_the_stage_state_is_one_file_per_tree(run_dir: Path) -> None:
    store = StateStore("pid-42")
    assert store.path == run_path("pid-42", ".json") == str(run_dir / "pid-42.json")
    assert store.load() is None
    store.save(TreeState(42, "suspended", {42: "/user.slice", 43: "/"}))
    assert store.load() == TreeState(42, "suspended", {42: "/user.slice", 43: "/"})
    store.drop()
    store.drop()  # twice: nothing to drop
    assert store.load() is None
    # a frozen tree is one its freezer still holds: a state file alone is not
    store.save(TreeState(42, "suspended", {}))
    assert TreeStages(42).state() is None
    store.drop()
