"""`make demo` for now: the image tools on the golden images in fixtures/images.

Runs real `cpt image` command lines in-process and shows what each prints.  The lead
replaces this with the checkpoint/restore job once the engine exists.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.rule import Rule
from rich.syntax import Syntax

from .main import run

GOLDENS = Path(__file__).resolve().parent.parent / "fixtures" / "images"
DECODE_LINES = 12
WIDTH = 100


def _cpt(con: Console, *argv: str) -> tuple[int, str]:
    """Run one cpt command line, show it and what it printed."""
    con.print(Rule(f"[bold cyan]$ cpt {' '.join(argv)}", align="left"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(list(argv))
    return code, out.getvalue() + err.getvalue()


def main() -> int:
    con = Console(highlight=False)
    tree, other = (os.path.relpath(GOLDENS / n) for n in ("tree.img", "tree-zstd.img"))
    if not os.path.exists(tree):
        con.print(f"[red]no golden image at {tree}")
        return 1
    con.print("[bold]cpt image tools on the golden images of format 1.0[/]\n")
    # show renders rich tables itself: let it print straight to the terminal
    con.print(Rule(f"[bold cyan]$ cpt image show {tree}", align="left"))
    run(["image", "show", tree])
    for argv in (
        ["image", "show", tree, "--maps", "101"],
        ["image", "show", tree, "--fds", "101"],
        ["image", "verify", tree],
    ):
        code, text = _cpt(con, *argv)
        con.print(text.rstrip(), markup=False)
        con.print(f"[dim]exit {code}[/]\n")
    with tempfile.TemporaryDirectory() as tmp:
        js = os.path.join(tmp, "tree.json")
        img = os.path.join(tmp, "tree.img")
        _cpt(con, "image", "decode", tree, "-o", js)
        lines = Path(js).read_text().splitlines()[:DECODE_LINES]
        excerpt = "\n".join(ln if len(ln) <= WIDTH else ln[: WIDTH - 3] + "..." for ln in lines)
        con.print(Syntax(excerpt + "\n ...", "json"))
        _cpt(con, "image", "encode", js, "-o", img)
        same = Path(img).read_bytes() == Path(tree).read_bytes()
        con.print(f"re-encoded image is byte-identical to the original: [bold]{same}[/]\n")
    code, text = _cpt(con, "image", "diff", tree, other)
    con.print(text.rstrip(), markup=False)
    con.print(f"[dim]exit {code} (1: the images differ)[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
