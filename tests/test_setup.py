"""`make setup` precompiles every package of the project (issue 13: no command compiles
modules at start, even with PYTHONDONTWRITEBYTECODE set)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_setup_compiles_every_top_level_package() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    top = {p.split(".")[0] for p in packages}
    make = (ROOT / "Makefile").read_text()
    m = re.search(r"^PKGS\s*:=\s*(.+)$", make, re.M)
    assert m, "Makefile: no PKGS"
    assert set(m.group(1).split()) == top
    assert re.search(r"^setup: .*\$\(COMPILED\)", make, re.M)
    assert "-m compileall" in make
