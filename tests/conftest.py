"""Shared test helpers: generic only (paths), so every test module can rely on them."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@pytest.fixture
def fixtures_dir() -> Path:
    """The repository's fixtures/ directory."""
    return FIXTURES
