"""Shared test fixtures: the repository's paths, `cpt` (the command as a process), and `zoo`
(the /proc layer reading a captured tree)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cptcli import CptRunner
from helpers_procfs import FIX as PROC_FIXTURES

from cpt.procfs import Proc

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@pytest.fixture
def fixtures_dir() -> Path:
    """The repository's fixtures/ directory."""
    return FIXTURES


@pytest.fixture
def cpt(tmp_path: Path) -> CptRunner:
    """Run `cpt ARGS` as a separate process; returns (exit code, stdout, stderr)
    (tests/cptcli.py)."""
    return CptRunner(tmp_path / "run")


@pytest.fixture(scope="module")
def zoo() -> Proc:
    """The /proc layer on the captured tree fixtures/proc/zoo (tests/helpers_procfs.py)."""
    return Proc(str(PROC_FIXTURES / "zoo"))
