"""Shared test fixtures: the repository's paths, `cpt` (the command as a process),
`node` (a cpt node for VE tests) and `zoo` (the /proc layer reading a captured tree)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cptcli import CptRunner
from helpers_procfs import FIX as PROC_FIXTURES
from nodes import Cluster, cluster
from ve_node import Node, node_at

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
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A cpt node of the module's own on an embedded pool (tests/ve_node.py): every VE the
    module created is stopped and destroyed, and the pool removed, afterwards."""
    with node_at(tmp_path_factory.mktemp("node")) as n:
        yield n


@pytest.fixture(scope="module")
def zoo() -> Proc:
    """The /proc layer on the captured tree fixtures/proc/zoo (tests/helpers_procfs.py)."""
    return Proc(str(PROC_FIXTURES / "zoo"))


@pytest.fixture
def nodes() -> Iterator[Cluster]:
    """Nodes A and B (network namespaces with their own node root and sshd) and a client
    on one test LAN (tests/nodes.py); all of it removed afterwards."""
    with cluster() as c:
        yield c
