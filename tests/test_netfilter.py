"""run_nft on the command runner: the script on stdin, the output back, a failure named by
its command and first stderr line, a hang cut by a timeout.  A fake `nft` first in PATH
stands in for the real one (the drop rules themselves: test_sockets_e2e.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cpt.errors import CommandTimeout, SystemError_
from cpt.sys import netfilter

FAKE_NFT = """#!/bin/sh
case "$1" in
  -f) cat ;;
  fail) echo "Error: first line" >&2; echo "second line" >&2; exit 1 ;;
  hang) sleep 30 ;;
  *) echo "args: $*" ;;
esac
"""


@pytest.fixture
def fake_nft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    exe = tmp_path / "nft"
    exe.write_text(FAKE_NFT)
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    return exe


def test_output_script_and_logged_argv(fake_nft: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cpt.runner")
    assert netfilter.run_nft("list", "table", "inet", "cpt") == "args: list table inet cpt\n"
    assert netfilter.run_nft("-f", "-", script="add table inet cpt\n") == "add table inet cpt\n"
    logged = [r.getMessage() for r in caplog.records if r.name == "cpt.runner"]
    assert f"run: {fake_nft} -f -" in logged


def test_failure_names_the_command_and_the_first_stderr_line(fake_nft: Path) -> None:
    with pytest.raises(SystemError_) as e:
        netfilter.run_nft("fail")
    assert str(e.value) == f"{fake_nft} fail failed: Error: first line"


def test_a_hanging_nft_is_killed(fake_nft: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netfilter, "NFT_TIMEOUT", 0.5)
    with pytest.raises(CommandTimeout) as e:
        netfilter.run_nft("hang")
    assert isinstance(e.value, SystemError_) and "timed out after 0.5 s" in str(e.value)


def test_rules_without_a_table_is_empty(fake_nft: Path) -> None:
    fake_nft.write_text("#!/bin/sh\necho 'Error: No such file or directory' >&2\nexit 1\n")
    assert netfilter.rules() == {}


def test_missing_nft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemError_, match="nft is not installed"):
        netfilter.run_nft("list", "ruleset")
