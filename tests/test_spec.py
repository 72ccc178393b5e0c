"""SPEC.md and the code cannot drift apart: the generated tables and the exit codes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from cli import exitcodes
from cptimage import spec

SPEC = (Path(__file__).resolve().parent.parent / "SPEC.md").read_text()


def test_spec_embeds_the_generated_tables() -> None:
    assert spec.embedded(SPEC) == spec.render()


def test_python_m_cptimage_spec_prints_them() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cptimage.spec"], capture_output=True, text=True, check=True
    ).stdout
    assert out == spec.render() + "\n"
    assert spec.embedded(SPEC) + "\n" == out


def _section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", SPEC, re.S | re.M)
    assert m, title
    return m.group(1)


def test_exit_code_table_equals_cli_exitcodes() -> None:
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", _section("9. Exit codes"), re.M)
    assert {int(code): meaning for code, meaning in rows} == exitcodes.MEANINGS
    assert [int(c) for c, _ in rows] == sorted(exitcodes.MEANINGS)


def test_every_mapped_error_has_a_documented_code() -> None:
    assert {code for _, code in exitcodes.ERRORS} <= set(exitcodes.MEANINGS)
