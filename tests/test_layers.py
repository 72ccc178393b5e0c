"""The floors of the library, checked on its source (STYLE.md, issue 10):

* imports run one way: cli -> snapshot -> ve -> cpt, storage -> cptimage, and inside cpt
  its layers (LAYERS) one way too; no cycle of modules, nor of packages at any level
  (the packages under one parent, each taken whole); function-local imports count,
  `if TYPE_CHECKING:` ones do not, `from . import sibling` is an edge to the sibling;
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
}
CTYPES_ALLOWED: dict[str, str] = {}


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


# -- the import graph ---------------------------------------------------------------------

# The layers, lowest first: a module may import modules of its own layer and of the layers
# below.  A module is in the layer of the longest name it is or starts with ("cpt" itself
# only: its subpackages have layers of their own); a module in none of them fails the
# test (place it).  storage stands on cpt's system layers (sys, procfs, errors) and
# cptimage, beside the engine: the engine never imports it (NEVER).
LAYERS: list[tuple[str, ...]] = [
    ("cptimage",),
    ("cpt", "cpt.errors", "cpt.fault", "cpt.interrupts"),
    ("cpt.procfs",),
    ("cpt.sys",),
    ("storage",),
    ("cpt.trace",),
    ("cpt.dump",),
    ("cpt.restore",),
    ("cpt.host",),
    ("cpt.stages",),
    ("ve",),
    ("snapshot",),
    ("cli",),
]
ITSELF_ONLY = {"cpt"}
NEVER = [("cpt", "storage")]


def module_name(rel: str) -> str:
    return rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the prefix, layer)
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            hit = module == p if p in ITSELF_ONLY else _within(module, p)
            if hit and (best is None or len(p) > best[0]):
                best = (len(p), i)
    return None if best is None else best[1]


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (not its else branch)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def import_edges(tree: ast.Module, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The library modules `module` imports: function-local imports included, those under
    `if TYPE_CHECKING:` not.  `from X import name` is an edge to the module X.name when
    there is one (`from . import sibling`), else to X; `import X.Y` to X.Y."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    skip = _type_checking_only(tree)
    out: set[str] = set()

    def deepest(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[: len(package) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for t in targets:
            m = deepest(t)
            if m is not None and m != module:
                out.add(m)
    return out


def library_graph() -> dict[str, set[str]]:
    files = [(rel, tree) for rel, tree in library_files()]
    known = {module_name(rel) for rel, _ in files}
    return {
        module_name(rel): import_edges(tree, module_name(rel), rel.endswith("__init__.py"), known)
        for rel, tree in files
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(_cycle_in(graph, set(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A closed path inside a strongly connected component, for the message."""
    start = min(comp)
    path, seen = [start], {start}
    while True:
        nxt = min(w for w in graph[path[-1]] if w in comp)
        if nxt in seen:
            return [*path[path.index(nxt) :], nxt]
        path.append(nxt)
        seen.add(nxt)


def package_graphs(graph: dict[str, set[str]]) -> dict[str, dict[str, set[str]]]:
    """For every package ("" for the top), the graph of what lies directly in it (its
    subpackages, each taken whole, and its modules): an edge a -> b for every import
    from inside a to inside b.  An import of a package's own __init__ from inside it is
    not an edge of these graphs (the module graph has it)."""
    out: dict[str, dict[str, set[str]]] = {}
    for a, targets in graph.items():
        for b in targets:
            pa, pb = a.split("."), b.split(".")
            n = 0
            while n < min(len(pa), len(pb)) and pa[n] == pb[n]:
                n += 1
            if n == len(pa) or n == len(pb):
                continue  # one of them is the common package itself
            parent = ".".join(pa[:n])
            child_a, child_b = ".".join(pa[: n + 1]), ".".join(pb[: n + 1])
            out.setdefault(parent, {}).setdefault(child_a, set()).add(child_b)
    return out


def test_every_library_module_has_a_layer() -> None:
    unplaced = sorted(m for m in library_graph() if layer_of(m) is None)
    assert not unplaced, f"place these modules in a layer of LAYERS: {unplaced}"


def test_no_import_goes_up() -> None:
    up = []
    for m, targets in library_graph().items():
        for t in sorted(targets):
            lm, lt = layer_of(m), layer_of(t)
            if lm is not None and lt is not None and lt > lm:
                up.append(f"{m} -> {t}")
            if any(_within(m, a) and _within(t, b) for a, b in NEVER):
                up.append(f"{m} -> {t} (never)")
    assert not up, "imports against the floors (LAYERS: " + "; ".join(up) + ")"


def test_no_module_cycle() -> None:
    found = cycles(library_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_package_cycle() -> None:
    found = [
        f"in {parent or 'the top level'}: " + " -> ".join(c)
        for parent, g in sorted(package_graphs(library_graph()).items())
        for c in cycles(g)
    ]
    assert not found, "package cycles: " + "; ".join(found)


def _graph_of(sources: dict[str, str]) -> dict[str, set[str]]:
    known = {module_name(rel) for rel in sources}
    return {
        module_name(rel): import_edges(
            ast.parse(src), module_name(rel), rel.endswith("__init__.py"), known
        )
        for rel, src in sources.items()
    }


def test_the_graph_counts_local_imports_and_siblings_not_type_checking() -> None:
    g = _graph_of(
        {
            "p/__init__.py": "from .a import A\n",
            "p/a.py": (
                "from typing import TYPE_CHECKING\n"
                "from . import b\n"
                "if TYPE_CHECKING:\n    from q.c import C\n"
                "else:\n    import q\n"
                "def f():\n    from q.c import D\n"
            ),
            "p/b.py": "from p import A\n",
            "q/__init__.py": "",
            "q/c.py": "import p.b\n",
        }
    )
    assert g == {"p": {"p.a"}, "p.a": {"p.b", "q", "q.c"}, "p.b": {"p"}, "q": set(), "q.c": {"p.b"}}
    # p.b needs a name of p's __init__, which imports p.a, which imports p.b
    assert cycles(g) == [["p", "p.a", "p.b", "p"]]
    assert [c for pg in package_graphs(g).values() for c in cycles(pg)] == [["p", "q", "p"]]


def test_layer_of_takes_the_longest_prefix() -> None:
    assert layer_of("cpt.errors") == layer_of("cpt") == 1
    assert layer_of("cpt.sys.ns") == 3 and layer_of("cpt.stages.trees") == 9
    assert layer_of("cptimage.records") == 0 and layer_of("cptx") is None
    assert layer_of("cpt.newmodule") is None
