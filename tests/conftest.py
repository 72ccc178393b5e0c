"""Shared test fixtures: the repository's paths, and `cpt` (the command as a process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cptcli import CptRunner

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
