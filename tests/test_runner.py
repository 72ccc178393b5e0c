"""The command runner: argv logged, failures named (command, exit code, last stderr line),
never a hang (stdin closed, timeouts that kill the whole process group)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from cpt.errors import CommandError, CommandTimeout
from cpt.sys import runner


def test_success_returns_output_and_logs_the_argv(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cpt.runner")
    result = runner.run(["sh", "-c", "echo out; echo err >&2", "arg with space"])
    assert (result.returncode, result.stdout, result.stderr) == (0, b"out\n", b"err\n")
    logged = [r.getMessage() for r in caplog.records if r.name == "cpt.runner"]
    assert logged[0] == "run: sh -c 'echo out; echo err >&2' 'arg with space'"
    assert logged[1].startswith("exit 0 in ")


def test_failure_names_command_exit_code_and_last_stderr_line() -> None:
    with pytest.raises(CommandError) as e:
        runner.run(["sh", "-c", "echo first >&2; echo 'ERROR: the reason' >&2; exit 3"])
    err = e.value
    assert err.returncode == 3
    assert err.argv[:2] == ["sh", "-c"]
    assert str(err).startswith("sh -c ")
    assert str(err).endswith("failed with exit code 3: ERROR: the reason")
    assert "first" in err.stderr


def test_check_false_returns_the_failure() -> None:
    assert runner.run(["false"], check=False).returncode == 1


def test_input_and_closed_stdin() -> None:
    assert runner.run(["cat"], input=b"data").stdout == b"data"
    # Without input, stdin is /dev/null: a tool that reads it never waits for a terminal.
    started = time.monotonic()
    assert runner.run(["cat"], timeout=5).stdout == b""
    assert time.monotonic() - started < 2


def test_missing_tool() -> None:
    with pytest.raises(CommandError) as e:
        runner.run(["/nonexistent/cpt-tool", "x"])
    assert e.value.returncode is None
    assert "cannot run /nonexistent/cpt-tool x" in str(e.value)


def test_environment_is_c_locale_plus_extras() -> None:
    out = runner.run(["sh", "-c", "echo $LC_ALL $CPT_X"], env={"CPT_X": "1"}).stdout
    assert out == b"C 1\n"


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    """A grandchild keeps the output pipe open: killing only the child would leave the
    runner waiting for EOF. The group dies, the runner returns at once."""
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as e:
        runner.run(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=0.5)
    assert time.monotonic() - started < 5
    assert "timed out after 0.5 s" in str(e.value)
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild)


def test_runner_is_the_only_place_tools_run() -> None:
    """The storage layer (filesystems and the pool) starts no process but through the runner."""
    root = Path(__file__).resolve().parent.parent / "storage"
    offenders = []
    for path in root.glob("*.py"):
        text = path.read_text()
        if "subprocess.run" in text or "Popen" in text or "os.system" in text:
            offenders.append(str(path))
    assert offenders == []
