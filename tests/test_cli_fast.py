"""The CLI's start-up (issue 13): command lines parsed without typer (cli/params.py
parse, cli/main.py fast_call) give the values typer gives, a command line the fast path
does not take goes to typer (same messages, same exit codes), and a command imports only
what it uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.main import get_command

from cli import app as tree
from cli import params
from cli.main import fast_call, help_call, run

try:  # typer >= 0.16 vendors click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer depends on click
    from click import exceptions as click_exc  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
TREE_IMG = str(REPO / "fixtures" / "images" / "tree.img")
HOT = ["chkpnt", "restore", "image show", "ve status", "ve list"]


def commands() -> dict[str, Callable[..., Any]]:
    """Every command of the tree, by its command line ("image show"), and the root's
    options (as "--root")."""
    out: dict[str, Callable[..., Any]] = {"--root": tree.root_options}
    for name in tree.TREE:
        found = tree.node(name)
        if isinstance(found, params.Group):
            out.update({f"{name} {c}": cmd.func for c, cmd in found.commands.items()})
        else:
            assert found is not None
            out[name] = found
    return out


COMMANDS = commands()


def typer_parse(func: Callable[..., Any], args: list[str]) -> dict[str, Any] | None:
    """The keyword arguments typer's command for `func` gets from `args`; None when
    typer refuses them (or prints help)."""
    app = typer.Typer(add_completion=False)
    app.command()(params.typer_command(func))
    cmd = get_command(app)
    try:
        ctx = cmd.make_context("cpt", list(args))
    except (click_exc.ClickException, typer.Exit):
        return None
    return dict(ctx.params)


def test_every_command_declares_its_parameters_once() -> None:
    """Every parameter of every command has its Option/Argument (params() raises
    otherwise), and typer builds the whole app from them."""
    for func in COMMANDS.values():
        params.params(func)
    assert get_command(tree.build())


def test_the_hot_commands_take_the_fast_path() -> None:
    """chkpnt, restore, image show, ve status and ve list run without typer for ordinary
    command lines (they are not all declined)."""
    lines = [
        ["chkpnt", "--pid", "42", "--dumpfile", "/tmp/d.img", "--leave-running", "--json"],
        ["chkpnt", "101", "--suspend"],
        ["chkpnt", "--pid=42", "--ghost-limit", "4M", "--tcp-established"],
        ["restore", "--dumpfile", "/tmp/d.img", "--pidfile", "/tmp/p", "--pidns"],
        ["restore", "101", "--undump"],
        ["image", "show", TREE_IMG],
        ["image", "show", TREE_IMG, "--json", "--maps", "100"],
        ["ve", "status", "101"],
        ["ve", "list", "--json"],
        ["--root", "/tmp/node", "ve", "status", "101"],
        ["--root=/tmp/node", "chkpnt", "--pid", "1"],
    ]
    for args in lines:
        assert fast_call(args) is not None, args
    for name in HOT:
        assert params._fast(params.params(COMMANDS[name])), name


def test_fast_and_typer_agree_on_examples() -> None:
    cases = {
        "chkpnt": [
            ["--pid", "5", "--pid", "6"],
            ["101", "--dump", "--dump"],
            ["--dumpfile=--json", "--pid", "3"],
            ["--dumpfile=", "--pid", "3"],
            ["--pid", "007"],
            [""],
        ],
        "image show": [[TREE_IMG, "--fds", "1", "--maps=2"], ["a b"]],
        "restore": [["--pidfile", "p", "x", "--kill"]],
    }
    for name, lines in cases.items():
        for args in lines:
            fast = params.parse(COMMANDS[name], args)
            assert fast is not None, (name, args)
            assert fast == typer_parse(COMMANDS[name], args), (name, args)


def _tokens(func: Callable[..., Any]) -> st.SearchStrategy[list[str]]:
    names = [d for p in params.params(func) for d in getattr(p.decl, "decls", ())]
    values = ["0", "7", "0042", "-3", "+5", "0x1", "1_0", "\u0663", "a", "a b", "", "-", "x=y"]
    odd = ["--help", "--bogus", "--", "-x", "-o", "--json=1", "--pid=", "--root"]
    token = st.one_of(
        st.sampled_from(names or ["--x"]),
        st.sampled_from(values + odd),
        st.builds(
            lambda n, v: f"{n}={v}", st.sampled_from(names or ["--x"]), st.sampled_from(values)
        ),
        st.text(alphabet="ab-=1 ", max_size=5),
    )
    return st.lists(token, max_size=8)


@pytest.mark.parametrize("name", sorted(COMMANDS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_parse_gives_typers_values(name: str, data: st.DataObject) -> None:
    """Whenever the fast parser takes a command line, typer takes it too, with the same
    values; whatever typer refuses, the fast parser declines (and typer then answers)."""
    func = COMMANDS[name]
    args = data.draw(_tokens(func))
    fast = params.parse(func, args)
    if fast is not None:
        assert typer_parse(func, args) == fast, args


BAD = [
    [],
    ["--root"],
    ["nosuch"],
    ["image"],
    ["image", "show"],
    ["image", "show", "a", "b"],
    ["image", "show", "--maps", "x", "/nonexistent"],
    ["image", "show", "/nonexistent"],
    ["image", "show", "--maps", "12345", TREE_IMG],
    ["chkpnt"],
    ["chkpnt", "--pid"],
    ["chkpnt", "--pid", "abc"],
    ["chkpnt", "--pid", "-3"],
    ["chkpnt", "--bogus"],
    ["chkpnt", "--json=1", "--pid", "3"],
    ["chkpnt", "--pid", "1", "--suspend", "--dump"],
    ["chkpnt", "--pid", "1", "--ghost-limit", "lots"],
    ["chkpnt", "101", "--pid", "5"],
    ["restore", "101", "--pidfile", "p"],
    ["restore", "--dumpfile", "/nonexistent/x.img", "--undump", "--resume"],
    ["restore", "--dumpfile", "/nonexistent/x.img"],
    ["ve", "status"],
    ["ve", "status", "a", "b"],
    ["ve", "list", "--json=yes"],
]


@pytest.mark.parametrize("args", BAD, ids=lambda a: " ".join(a) or "(none)")
def test_a_bad_command_line_fails_alike_either_way(
    args: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The same exit code and the same output through the fast path and through typer."""
    args = ["--root", str(tmp_path), *args] if args[:1] == ["ve"] else args
    code = run(args)
    fast = capsys.readouterr()
    assert code == run(args, fast=False), args
    assert fast == capsys.readouterr(), args
    assert code != 0


def test_a_good_command_line_prints_alike_either_way(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (
        ["image", "show", TREE_IMG],
        ["image", "show", TREE_IMG, "--json"],
        ["image", "show", TREE_IMG, "--fds", "100"],
    ):
        assert fast_call(args) is not None
        assert run(args) == 0
        fast = capsys.readouterr()
        assert run(args, fast=False) == 0
        assert fast == capsys.readouterr(), args


# --------------------------------------------------------------------------- imports

ENGINE = (
    "cpt.dump",
    "cpt.restore",
    "cpt.trace",
    "cpt.stages",
    "cpt.host",
    "ve",
    "snapshot",
    "storage",
)
FRAMEWORK = ("typer", "click", "rich")


def _modules(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code` (which imports cli)."""
    p = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, CPT_RUN_DIR="/nonexistent/cpt-run"),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return set(json.loads(p.stdout.splitlines()[-1]))


def _under(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in prefixes or m.startswith(prefixes))


def _run(args: list[str]) -> str:
    return f"from cli.main import run\nrun({args!r})"


def test_importing_the_cli_imports_no_engine_and_no_typer() -> None:
    mods = _modules("import cli.main")
    assert not _under(mods, ENGINE + FRAMEWORK)
    assert not _under(mods, ("cptimage.container", "cptimage.records", "cpt.procfs", "cpt.sys"))


def test_image_show_imports_the_image_code_alone() -> None:
    mods = _modules(_run(["image", "show", TREE_IMG]))
    assert "cptimage.show" in mods and "rich.table" in mods  # it did run
    assert not _under(mods, (*ENGINE, "typer", "click", "cpt.procfs", "cpt.sys"))


def test_chkpnt_and_restore_import_no_typer_and_no_ve_layer() -> None:
    """... and each only its side of the engine: a chkpnt no restorer, a restore no dumper."""
    mods = _modules(_run(["chkpnt", "--pid", "4194304"]))  # in range, no such process
    assert "cpt.dump.dumper" in mods
    assert not _under(mods, ("typer", "click", "rich", "ve", "snapshot", "cpt.restore"))
    mods = _modules(_run(["restore", "--dumpfile", "/nonexistent/x.img"]))
    assert "cpt.restore.restorer" in mods
    assert not _under(mods, ("typer", "click", "rich", "ve", "snapshot"))
    assert "cpt.dump.dumper" not in mods and "cpt.stages.dump" not in mods


def test_ve_status_imports_no_typer(tmp_path: Path) -> None:
    mods = _modules(_run(["--root", str(tmp_path), "ve", "status", "999"]))
    assert "ve.lifecycle" in mods
    assert not _under(mods, FRAMEWORK)


def test_help_and_errors_do_import_typer() -> None:
    """The check above can fail: help goes through typer."""
    assert "typer" in _modules(_run(["--help"]))
    assert "typer" in _modules(_run(["chkpnt", "--bogus"]))


def test_help_is_plain_and_imports_no_rich() -> None:
    """`cpt --help` in click's plain format: rich's panels would import typer.rich_utils
    (rich.markdown, markdown-it, rich.traceback, pygments), about half its time."""
    mods = _modules(_run(["--help"]))
    assert not _under(mods, ("rich", "typer.rich_utils", "markdown_it", "pygments"))
    p = subprocess.run(
        [sys.executable, "-c", _run(["--help"])], cwd=REPO, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    for name in ("chkpnt", "restore", "check", "image", "ve", "pool", "snapshot", "--root"):
        assert name in p.stdout, p.stdout


def test_each_commands_help_prints_alike_either_way(capsys: pytest.CaptureFixture[str]) -> None:
    """`cpt NAME [SUB] --help` through help_call (a click command of NAME alone) prints
    what the whole typer app prints, with the same exit code, for every command and group."""
    lines = [[name] for name in tree.TREE] + [c.split() for c in COMMANDS if " " in c]
    for args in [[*a, "--help"] for a in lines] + [["ve", "nosuch", "--help"]]:
        if args[-2] != "nosuch":
            assert help_call(args) is not None, args
        code = run(args)
        fast = capsys.readouterr()
        assert code == run(args, fast=False), args
        assert fast == capsys.readouterr(), args
        assert fast.out.startswith(f"Usage: cpt {' '.join(args[:-1])} ") or code, args


def test_a_commands_help_imports_no_pydantic_and_no_other_command() -> None:
    """Through the whole app typer coerces the root's --root (None) with a pydantic
    TypeAdapter first: importing pydantic was half the time of `cpt chkpnt --help`."""
    mods = _modules(_run(["chkpnt", "--help"]))
    assert "typer" in mods and "cli.cr" in mods  # it did print the help
    assert not _under(mods, ("pydantic", "cli.ve", "cli.snapshot", "cli.migrate", "rich"))
    mods = _modules(_run(["ve", "status", "--help"]))
    assert "cli.ve" in mods and not _under(mods, ("pydantic", "cli.cr"))
