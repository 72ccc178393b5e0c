"""The floors of the library, checked on its source (STYLE.md, issue 10):

* every /proc read and every /proc path goes through the /proc layer (cpt/procfs/): no
  string constant of another library module contains "/proc", docstrings aside, but the
  few listed in PROC_LITERALS_ALLOWED, each with its reason;
* only the system layer (cpt/sys/) imports ctypes;
* nothing outside cpt/sys/ imports its private modules (cpt.sys._libc).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("cptimage", "cpt", "storage", "ve", "snapshot", "cli")

PROC_LAYER = "cpt/procfs/"
# At most five, each with the reason it is not a /proc access of cpt's own.
PROC_LITERALS_ALLOWED = {
    "cli/image.py": "help text: --maps and --fds print an image's processes in the format "
    "of /proc/PID/maps and ls -l /proc/PID/fd; nothing is read from /proc",
    "cli/demo.py": "a shell command the demo runs inside the VE (`ls /proc` there); the "
    "demo script leaves cli/ in a later step of issue 10",
}
CTYPES_ALLOWED = {
    "cli/demo.py": "the demo script (it leaves cli/ in a later step of issue 10)",
}


def library_files() -> Iterator[tuple[str, ast.Module]]:
    for top in LIBRARY:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            yield rel, ast.parse(path.read_text(), rel)


def docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring constants of the module, its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                out.add(id(body[0].value))
    return out


def proc_literals(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, text) of every str or bytes constant holding "/proc", docstrings aside
    (the pieces of an f-string are constants too)."""
    skip = docstrings(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) not in skip:
            v = node.value
            text = v if isinstance(v, str) else v.decode("latin-1") if isinstance(v, bytes) else ""
            if "/proc" in text:
                out.append((node.lineno, text))
    return sorted(out)


def imported_modules(tree: ast.Module, rel: str) -> Iterator[str]:
    """Absolute names of the modules a file imports (function-local imports included)."""
    package = rel.removesuffix(".py").split("/")[:-1]  # a package's __init__ is in it
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[: len(package) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def test_proc_literals_only_in_the_proc_layer() -> None:
    assert len(PROC_LITERALS_ALLOWED) <= 5
    found: dict[str, list[tuple[int, str]]] = {}
    for rel, tree in library_files():
        if not rel.startswith(PROC_LAYER) and (hits := proc_literals(tree)):
            found[rel] = hits
    unexpected = {f: hits for f, hits in found.items() if f not in PROC_LITERALS_ALLOWED}
    assert not unexpected, (
        "build /proc paths and read /proc through cpt.procfs (or, with a reason, list the "
        f"file in PROC_LITERALS_ALLOWED): {unexpected}"
    )
    stale = set(PROC_LITERALS_ALLOWED) - set(found)
    assert not stale, f"PROC_LITERALS_ALLOWED lists files without a /proc literal: {stale}"


def test_the_scan_sees_fstrings_and_skips_docstrings() -> None:
    tree = ast.parse(
        '"""/proc in a docstring"""\n'
        "def f(pid):\n"
        '    """/proc/PID"""\n'
        '    return f"/proc/{pid}/fd", "/proc", b"/proc/self"\n'
    )
    assert [t for _, t in proc_literals(tree)] == ["/proc", "/proc/", "/proc/self"]


def test_only_the_system_layer_imports_ctypes() -> None:
    users = {
        rel
        for rel, tree in library_files()
        if not rel.startswith("cpt/sys/")
        and any(m == "ctypes" or m.startswith("ctypes.") for m in imported_modules(tree, rel))
    }
    assert users == set(CTYPES_ALLOWED)


def test_private_system_modules_stay_private() -> None:
    users = {
        rel
        for rel, tree in library_files()
        if not rel.startswith("cpt/sys/")
        and any(m.startswith("cpt.sys._") for m in imported_modules(tree, rel))
    }
    assert not users, f"import a public module of cpt.sys instead: {users}"
