"""The `cpt` command: the root Typer app and the one place errors become exit codes.

A command group is one Typer() in its own module, joined here with one add_typer line.
Commands raise domain errors (cptimage.errors, cpt.errors); ``main`` prints one line,
``cpt: <message>``, on stderr and exits with the code cli/exitcodes.py documents.
Set CPT_DEBUG=1 to get the traceback of an unexpected error instead.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from cptimage.errors import printable, shorten

from . import check, cr, exitcodes, ve
from . import pool as pool_cli
from . import snapshot as snapshot_cli
from .image import app as image_app

try:  # typer >= 0.16 vendors click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer depends on click
    from click import exceptions as click_exc  # type: ignore[no-redef]

app = typer.Typer(
    name="cpt",
    help="Checkpoint/restore of Linux process trees and containers.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
app.add_typer(image_app, name="image")
app.command("chkpnt")(cr.chkpnt)
app.command("restore")(cr.restore)
app.command("check")(check.check)
app.add_typer(ve.app, name="ve")
app.add_typer(pool_cli.app, name="pool")
app.add_typer(snapshot_cli.app, name="snapshot")


@app.callback()
def _global(
    root: Annotated[
        str | None,
        typer.Option("--root", help="the node's state directory (default /var/lib/cpt; CPT_ROOT)"),
    ] = None,
) -> None:
    """Checkpoint/restore of Linux process trees and containers."""
    if root:
        os.environ["CPT_ROOT"] = os.path.abspath(root)


def _say(message: str) -> None:
    """The one line of an error: control characters a value brought in are escaped, so a
    newline in a VE id, a path or a tool's output cannot make it two."""
    print(f"cpt: {printable(message)}", file=sys.stderr)


def _usage(e: click_exc.UsageError) -> int:
    if isinstance(e, click_exc.NoArgsIsHelpError):
        print(e.format_message(), file=sys.stderr)
        _say("missing command")
        return exitcodes.USAGE
    cmd = e.ctx.command_path if e.ctx is not None else "cpt"
    _say(f"{e.format_message().rstrip('.')}; see `{cmd} --help`")
    return exitcodes.USAGE


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{shorten(str(e.filename), 160)}: {e.strerror}" if e.filename else e.strerror
    return str(e) or type(e).__name__


def run(argv: list[str] | None = None) -> int:
    """Run one cpt command line; returns its exit code."""
    try:
        rv = app(args=argv, prog_name="cpt", standalone_mode=False)
    except click_exc.UsageError as e:
        return _usage(e)
    except click_exc.ClickException as e:
        _say(e.format_message())
        return exitcodes.USAGE
    except typer.Abort:
        _say("aborted")
        return exitcodes.INTERRUPTED
    except Exception as e:
        code = exitcodes.code_for(e)
        if code is None:
            if os.environ.get("CPT_DEBUG"):
                raise
            _say(
                f"internal error: {type(e).__name__}: {shorten(str(e), 200)} "
                "(CPT_DEBUG=1 shows the traceback)"
            )
            return exitcodes.SYSTEM
        _say(_message(e))
        return code
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    return rv if isinstance(rv, int) else exitcodes.OK


def main() -> int:
    """Console-script entry point (pyproject: cpt = "cli.main:main")."""
    return run()


if __name__ == "__main__":
    sys.exit(main())
