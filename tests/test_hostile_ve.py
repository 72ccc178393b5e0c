"""Hostile input to the VE commands (issue 11): VE ids, host names, addresses, a VE's
configuration file, snapshot names and ages, timeouts and sizes.  Each is refused with
one `cpt:` line and exit 21 before anything is made (no pool, no file, no route); none
needs root resources: every case fails in validation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cpt.errors import InvalidValue
from snapshot.manager import check_name, parse_age
from ve.config import VEConfig, check_hostname, check_ip, check_veid, default_hostname
from ve.node import Node

REPO = Path(__file__).resolve().parent.parent
INTERNALS = ("Traceback", "internal error", "Error:", "Errno")


def _cpt(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "--root", str(root), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "veid", ["7002\n", "7002\n\n", "\n7002", "70 02", "-7", ".7", "a" * 33, "", "7/2", "7\x00"]
)
def test_bad_veids(veid: str) -> None:
    with pytest.raises(InvalidValue, match="VE id"):
        check_veid(veid)


@pytest.mark.parametrize("veid", ["7002", "a", "a" * 32, "web-1.prod_2"])
def test_good_veids(veid: str) -> None:
    assert check_veid(veid) == veid


@pytest.mark.parametrize(
    "name",
    [
        "x\n198.18.0.9 evil",
        "x\n",
        "-a",
        "a-",
        "a..b",
        ".a",
        "a_b",
        "a b",
        "é",
        "a" * 64 + ".b",
        "a" * 65,
        "",
        "a" * 64,  # one label of 64: labels are at most 63
    ],
)
def test_bad_hostnames(name: str) -> None:
    with pytest.raises(InvalidValue, match="hostname"):
        check_hostname(name)


@pytest.mark.parametrize("name", ["ve7002", "a", "web-1.example.org", "1.2", "a" * 63])
def test_good_hostnames(name: str) -> None:
    assert check_hostname(name) == name


def test_default_hostname_is_always_valid() -> None:
    for veid in ("7002", "a_b", "a..b", "x.", "web-1.prod_2", "a" * 32):
        check_hostname(default_hostname(veid))
    assert default_hostname("7002") == "ve7002"


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("198.18.0.2/0", "not an IPv4"),
        ("198.18.0.2/33", "1-32"),
        ("198.18.0.2/024", "not an IPv4"),
        ("198.18.0.2/255.255.255.0", "not an IPv4"),
        (" 198.18.0.2", "not an IPv4"),
        ("198.18.0.2\n", "not an IPv4"),
        ("198.18.0.02", "Leading zeros"),
        ("198.18.0.256", "198.18.0.256"),
        ("198.18.0.0/24", "the network's own address"),
        ("198.18.0.255/24", "the network's own address"),
        ("127.0.0.1", "not a unicast host address"),
        ("0.0.0.0", "not a unicast host address"),
        ("224.0.0.1", "not a unicast host address"),
        ("255.255.255.255", "not a unicast host address"),
        ("169.254.0.5", "not a unicast host address"),
        ("fe80::1", "not an IPv4"),
        ("x", "not an IPv4"),
    ],
)
def test_bad_ips(ip: str, why: str) -> None:
    with pytest.raises(InvalidValue, match=why):
        check_ip(ip)


def test_ips_are_normalised() -> None:
    assert check_ip("198.18.0.2") == "198.18.0.2/32"
    assert check_ip("198.18.0.2/24") == "198.18.0.2/24"
    assert check_ip("198.18.0.1/31") == "198.18.0.1/31"
    assert VEConfig(veid="7", private="/p/7", ip="198.18.0.2").ip == "198.18.0.2/32"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('hostname = "a\\nb"', "hostname 'a\\nb'"),
        ("hostname = 5", "hostname 5: not a string"),
        ('ip = "198.18.0.2/0"', "--ip"),
        ("command = [1]", "command"),
        ('command = ["a\\u0000b"]', "without NUL"),
        ('template = "x"', "template"),
        ('private = "rel"', "private 'rel'"),
        ('private = "/a/../b"', "private"),
        ("nonsense = 1", "unknown setting(s) nonsense"),
        ('veid = "8"', "veid '8' is not 7"),
    ],
)
def test_a_hostile_config_file_is_named(tmp_path: Path, text: str, field: str) -> None:
    node = Node(str(tmp_path))
    path = Path(node.config_path("7"))
    path.parent.mkdir(parents=True)
    base = {"veid": '"7"', "private": '"/p/7"'}
    key = text.split(" = ")[0]
    lines = [f"{k} = {v}" for k, v in base.items() if k != key] + [text]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidValue) as e:
        node.config("7")
    assert str(path) in str(e.value) and field in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_a_config_that_is_not_utf8(tmp_path: Path) -> None:
    node = Node(str(tmp_path))
    path = Path(node.config_path("7"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe = 1\n")
    with pytest.raises(InvalidValue, match="not valid TOML"):
        node.config("7")


# --------------------------------------------------------------------------- snapshots


@pytest.mark.parametrize("name", ["a\nb", "x" * 65, " a", "a\x1b[31m", "12"])
def test_bad_snapshot_names(name: str) -> None:
    with pytest.raises(InvalidValue, match="--name"):
        check_name(name)


@pytest.mark.parametrize("age", ["nan", "inf", "1e999", "-inf", "", "x", "-1d", "1e308w"])
def test_bad_ages(age: str) -> None:
    with pytest.raises(InvalidValue, match="--max-age"):
        parse_age(age)


# --------------------------------------------------------------------------- the commands


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ve", "create", "7002\n"], "VE id '7002\\n'"),
        (["ve", "create", "7002", "--hostname", "x\n198.18.0.9 evil"], "hostname 'x\\n198"),
        (["ve", "create", "7002", "--ip", "198.18.0.0/24"], "the network's own address"),
        (["ve", "create", "7002", "--ip", "y" * 4096], "(4096 characters)"),
        (["ve", "create", "7002", "--template", "z" * 4096], "(4096 characters)"),
        (["ve", "status", "7002\n"], "VE id"),
        (["ve", "stop", "7002", "--timeout", "nan"], "--timeout nan"),
        (["ve", "stop", "7002", "--timeout", "-1"], "--timeout -1"),
        (["ve", "stop", "7002", "--timeout", "1e999"], "--timeout inf"),
        (["snapshot", "cleanup", "7002", "--max-age", "nan"], "not a finite age"),
        (["snapshot", "cleanup", "7002", "--max-age", ""], "--max-age ''"),
        (["snapshot", "list", "x" * 4096], "(4096 characters)"),
        (["pool", "init", "--size", "99999999999T"], "at most 1024T"),
        (["pool", "init", "--size", "s" * 4096], "(4096 characters)"),
    ],
)
def test_refused_before_anything_is_made(tmp_path: Path, args: list[str], message: str) -> None:
    res = _cpt(tmp_path, *args)
    assert res.returncode == 21, res.stderr
    assert res.stderr.startswith("cpt: ") and res.stderr.count("\n") == 1, res.stderr
    assert message in res.stderr and len(res.stderr) < 300, res.stderr
    assert not any(s in res.stderr for s in INTERNALS), res.stderr
    assert not (tmp_path / "pool.img").exists() and not (tmp_path / "pool").exists()
    assert not os.path.exists(tmp_path / "ve")


def test_a_newline_in_any_value_stays_on_one_line(tmp_path: Path) -> None:
    """cli/main.py escapes what reaches an error line: here a --root with a newline."""
    res = _cpt(tmp_path / "x\nY", "ve", "status", "1")
    assert res.returncode == 21 and res.stderr.count("\n") == 1, res.stderr
    assert "x\\nY" in res.stderr
