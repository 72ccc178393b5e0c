"""`cpt image ...`: output through typer's CliRunner, exit codes through main() and the
installed console script (a subprocess), so click's own codes never leak out."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app, run

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "images"
TREE = str(GOLDEN / "tree.img")
OTHER = str(GOLDEN / "tree-zstd.img")
CPT = Path(sys.executable).parent / "cpt"

runner = CliRunner()


def _corrupted(tmp_path: Path) -> str:
    raw = bytearray((GOLDEN / "tree.img").read_bytes())
    raw[300] ^= 0xFF  # inside the PROCESS payload
    p = tmp_path / "bad.img"
    p.write_bytes(bytes(raw))
    return str(p)


def _newer(tmp_path: Path) -> str:
    raw = bytearray((GOLDEN / "tree.img").read_bytes())
    struct.pack_into("<H", raw, 8, 2)
    p = tmp_path / "new.img"
    p.write_bytes(bytes(raw))
    return str(p)


# --------------------------------------------------------------------------- CliRunner


def test_show_summary() -> None:
    res = runner.invoke(app, ["image", "show", TREE])
    assert res.exit_code == 0, res.output
    for text in ("cpt image 1.0", "processes", "\\_ worker", "\\_ logger", "PAGEMAP", "PIDNS"):
        assert text in res.output


def test_show_json() -> None:
    res = runner.invoke(app, ["image", "show", TREE, "--json", "--fds", "103"])
    doc = json.loads(res.output)
    assert [p["pid"] for p in doc["processes"]] == [100, 101, 103]
    assert [f["fd"] for f in doc["fds"]] == [0, 1, 2, 3, 4]


def test_show_maps_and_fds() -> None:
    res = runner.invoke(app, ["image", "show", TREE, "--maps", "100"])
    assert res.exit_code == 0
    assert res.output.splitlines()[2].startswith("00405000-00427000 rw-p 00000000 00:00 0")
    res = runner.invoke(app, ["image", "show", TREE, "--fds", "100"])
    assert res.output.splitlines()[-1] == "4 -> pipe:[9001]; flags 01; cloexec"


def test_decode_to_stdout_is_the_golden_json() -> None:
    res = runner.invoke(app, ["image", "decode", TREE])
    assert res.exit_code == 0
    assert res.output == (GOLDEN / "tree.json").read_text()


def test_decode_encode_files_byte_identical(tmp_path: Path) -> None:
    js, img = tmp_path / "t.json", tmp_path / "t.img"
    assert runner.invoke(app, ["image", "decode", OTHER, "-o", str(js)]).exit_code == 0
    assert runner.invoke(app, ["image", "encode", str(js), "-o", str(img)]).exit_code == 0
    assert img.read_bytes() == Path(OTHER).read_bytes()
    assert img.stat().st_mode & 0o777 == 0o600 and js.stat().st_mode & 0o777 == 0o600


def test_encode_from_stdin(tmp_path: Path) -> None:
    img = tmp_path / "t.img"
    res = runner.invoke(
        app, ["image", "encode", "-", "-o", str(img)], input=(GOLDEN / "tree.json").read_text()
    )
    assert res.exit_code == 0
    assert img.read_bytes() == Path(TREE).read_bytes()


def test_diff() -> None:
    same = runner.invoke(app, ["image", "diff", TREE, TREE])
    assert (same.exit_code, same.output) == (0, "")
    res = runner.invoke(app, ["image", "diff", TREE, OTHER])
    assert res.exit_code == 1
    assert "~ Process[103].comm: logger -> logger2" in res.output.splitlines()
    assert "+ Fd[103:5]:" in res.output
    res = runner.invoke(app, ["image", "diff", TREE, OTHER, "--json"])
    assert {"path": "RegFile[4].pos", "a": 1234, "b": 2048} in json.loads(res.output)


def test_verify(tmp_path: Path) -> None:
    res = runner.invoke(app, ["image", "verify", TREE])
    assert (res.exit_code, res.output) == (0, f"{TREE}: ok\n")
    bad = _corrupted(tmp_path)
    res = runner.invoke(app, ["image", "verify", bad])
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert f"{bad}: PROCESS @216: checksum mismatch: contents not checked" in lines
    assert any("trailer" in ln and "digest" in ln for ln in lines)
    doc = json.loads(runner.invoke(app, ["image", "verify", bad, "--json"]).output)
    assert doc["ok"] is False and {"section", "record", "offset", "message"} <= set(
        doc["problems"][0]
    )


def test_verify_stdin() -> None:
    res = runner.invoke(app, ["image", "verify", "-"], input=Path(OTHER).read_bytes())
    assert (res.exit_code, res.output) == (0, "-: ok\n")


# --------------------------------------------------------------------------- main(): codes


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["image", "show", "--bogus", TREE], 20, "cpt: No such option: --bogus"),
        (["image", "show"], 20, "cpt: Missing argument 'FILE'"),
        (["image", "frobnicate"], 20, "cpt: No such command 'frobnicate'"),
        (["image", "show", TREE, "--maps", "x"], 20, "cpt: Invalid value for '--maps'"),
        (["image", "show", "/nonexistent.img"], 40, "cpt: /nonexistent.img: cannot open"),
        (["image", "show", __file__], 40, "not a cpt image (bad magic)"),
        (["image", "show", TREE, "--maps", "4242"], 21, "cpt: process 4242 is not in the image"),
        (["image", "encode", "/nonexistent.json", "-o", "/tmp/x"], 40, "cannot open"),
        (["image", "verify", "-", "--host"], 20, "--host needs a file"),
    ],
)
def test_errors_are_one_line_with_the_documented_code(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    got, out, err = _run(capsys, *argv)
    assert got == code
    assert err.startswith("cpt: ") and message in err and err.count("\n") == 1, err
    assert "Traceback" not in out + err


def test_verify_host_names_what_this_host_lacks(capsys: pytest.CaptureFixture[str]) -> None:
    """The golden images come from a made-up host: another kernel, files that are not here."""
    code, out, _ = _run(capsys, "image", "verify", TREE, "--host")
    assert code == 1
    assert "host kernel: the image was dumped on kernel" in out
    assert "host file:" in out and "missing" in out


def test_no_arguments_shows_help_and_exits_20(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys)
    assert code == 20 and "image" in out + err and err.rstrip().endswith("cpt: missing command")


def test_newer_version_is_41(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(capsys, "image", "show", _newer(tmp_path))
    assert code == 41 and "is newer than this cpt reads (1.7): upgrade cpt" in err


def test_bad_json_is_40(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"format": "cpt-image", "version": [1, 0]}')
    code, _, err = _run(
        capsys, "image", "encode", str(tmp_path / "x.json"), "-o", str(tmp_path / "x.img")
    )
    assert code == 40 and err.startswith("cpt: ") and not (tmp_path / "x.img").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind


# --------------------------------------------------------------------------- the console script


@pytest.mark.skipif(not CPT.exists(), reason="console script not installed")
@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["image", "show", "--nope", TREE], 20),
        (["image", "show", "/nonexistent.img"], 40),
        (["image", "verify", "NEWER"], 41),
        (["image", "verify", "BAD"], 1),
        (["image", "verify", TREE], 0),
        (["image", "diff", TREE, OTHER], 1),
    ],
)
def test_console_script_exit_codes(tmp_path: Path, args: list[str], code: int) -> None:
    subst = {"NEWER": _newer(tmp_path), "BAD": _corrupted(tmp_path)}
    argv = [str(CPT), *(subst.get(a, a) for a in args)]
    res = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "100"}
    )
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr
    if code in (20, 40, 41):
        assert res.stderr.startswith("cpt: ") and res.stderr.count("\n") == 1
