"""The `cpt` command: dispatch, and the one place errors become exit codes.

The command tree is cli/app.py's TREE; each command declares its parameters once
(cli/params.py).  A command line the fast parser reads as typer would (params.parse) runs
its command without importing typer or any other command's module; every other one (help,
an unknown option, a bad value, ...) goes to the typer app, whose help, messages and exit
codes are the only ones.  Commands raise domain errors (cptimage.errors, cpt.errors);
``run`` prints one line, ``cpt: <message>``, on stderr and returns the exit code
cli/exitcodes.py documents.  Set CPT_DEBUG=1 to get the traceback of an unexpected error
instead.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from cpt import interrupts
from cptimage.errors import printable, shorten

from . import app as tree
from . import exitcodes
from .params import Exit, Group, parse

_built: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """`cli.main.app`: the typer app (built on first use: it imports typer)."""
    if name == "app":
        if "app" not in _built:
            _built["app"] = tree.build()
        return _built["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _say(message: str) -> None:
    """The one line of an error: control characters a value brought in are escaped, so a
    newline in a VE id, a path or a tool's output cannot make it two."""
    print(f"cpt: {printable(message)}", file=sys.stderr)


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{shorten(str(e.filename), 160)}: {e.strerror}" if e.filename else e.strerror
    return str(e) or type(e).__name__


def fast_call(args: list[str]) -> Callable[[], Any] | None:
    """The command `args` name, with its arguments bound, when params.parse reads all of
    them (root options, command, its parameters); None: typer must parse them."""
    i = 0
    while i < len(args) and args[i].startswith("-"):  # the root's options
        i += 1 if "=" in args[i] else 2
    if i >= len(args):
        return None
    root = parse(tree.root_options, args[:i])
    found = tree.node(args[i])
    rest = args[i + 1 :]
    if isinstance(found, Group):
        cmd = found.commands.get(rest[0]) if rest else None
        if cmd is None or cmd.kwargs:  # context_settings & co.: typer's
            return None
        found, rest = cmd.func, rest[1:]
    if root is None or found is None:
        return None
    kwargs = parse(found, rest)
    if kwargs is None:
        return None
    func = found

    def call() -> Any:
        tree.root_options(**root)
        return func(**kwargs)

    return call


def help_call(args: list[str]) -> Callable[[], Any] | None:
    """`cpt NAME [SUB] --help`: the help of that command or group from a click command
    of it alone (build_one), with the same text as the whole app's.  Through the whole
    app, typer would process the root's --root option first, and coerce its value
    (None) with a pydantic TypeAdapter: importing pydantic cost ~80 ms of the ~170 such
    a help took (issue 13); and every command's module would be imported."""
    if len(args) not in (2, 3) or args[-1] != "--help":
        return None
    names = args[:-1]
    if any(n.startswith("-") for n in names):
        return None
    cmd = tree.build_one(names[0])
    for name in names[1:]:
        cmd = getattr(cmd, "commands", {}).get(name)
    if cmd is None:
        return None
    return lambda: cmd.main(
        args=["--help"], prog_name=f"cpt {' '.join(names)}", standalone_mode=False
    )


class _Pacified:
    """A stream whose flush ignores EPIPE (click's PacifyFlushWrapper: the reader left)."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def flush(self) -> None:
        try:
            self.wrapped.flush()
        except OSError as e:
            if e.errno != errno.EPIPE:
                raise

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.wrapped, attr)


def _invoke(call: Callable[[], Any]) -> Any:
    """Run a fast-path command as typer's main runs one (standalone_mode=False)."""
    try:
        return call()
    except EOFError:
        print(file=sys.stderr)
        _say("aborted")
        return exitcodes.INTERRUPTED
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise
        sys.stdout = _Pacified(sys.stdout)
        sys.stderr = _Pacified(sys.stderr)
        sys.exit(1)
    except Exception as e:  # typer.Exit (or click's) raised by a command body
        exit_class = getattr(sys.modules.get("typer"), "Exit", None)
        if exit_class is not None and isinstance(e, exit_class):
            return e.exit_code
        raise


def _typer(args: list[str]) -> Any:
    """Run a command line through the typer app; its usage errors become exit codes."""
    import typer

    try:  # typer >= 0.16 vendors click
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover - older typer depends on click
        from click import exceptions as click_exc  # type: ignore[no-redef]

    try:
        return tree.build()(args=args, prog_name="cpt", standalone_mode=False)
    except click_exc.UsageError as e:
        if isinstance(e, click_exc.NoArgsIsHelpError):
            print(e.format_message(), file=sys.stderr)
            _say("missing command")
            return exitcodes.USAGE
        cmd = e.ctx.command_path if e.ctx is not None else "cpt"
        _say(f"{e.format_message().rstrip('.')}; see `{cmd} --help`")
        return exitcodes.USAGE
    except click_exc.ClickException as e:
        _say(e.format_message())
        return exitcodes.USAGE
    except typer.Abort:
        _say("aborted")
        return exitcodes.INTERRUPTED


def run(argv: list[str] | None = None, *, fast: bool = True) -> int:
    """Run one cpt command line; returns its exit code.  fast=False: always through typer
    (the tests compare the two).

    SIGINT, SIGTERM and SIGHUP stop it the same way (cpt/interrupts.py): what it did is
    undone, and the error says what state things are in; a signal that came after the
    point of no return (a committed dump, a released tree) lets it complete, and says so.
    """
    if threading.current_thread() is not threading.main_thread():
        return _run(argv, fast)
    old = interrupts.install()
    try:
        return _interruptible(argv, fast)
    finally:
        interrupts.uninstall(old)


def _interruptible(argv: list[str] | None, fast: bool = True) -> int:
    code = _run(argv, fast)
    late = interrupts.late()
    interrupts.no_return()  # the command is over: a signal from now on is only noted
    if late is not None and code == exitcodes.OK:
        _say(
            f"{signal.Signals(late).name} came after the point of no return: the command "
            "completed (see above)"
        )
    return code


def _run(argv: list[str] | None, fast: bool) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        call = (fast_call(args) or help_call(args)) if fast else None
        rv = _invoke(call) if call is not None else _typer(args)
    except Exit as e:
        return e.code
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
    except KeyboardInterrupt as e:
        what = e.signame if isinstance(e, interrupts.Interrupted) else "SIGINT"
        _say(f"interrupted by {what}")
        return exitcodes.INTERRUPTED
    if rv == exitcodes.INTERRUPTED and interrupts.unwinding():
        # typer turned an interrupt outside every stage into exit 130, saying nothing: it
        # came before a stage began (or between two), which undid what it had begun
        signo = interrupts.received()
        what = signal.Signals(signo).name if signo else "a signal"
        _say(f"interrupted by {what} before it changed anything")
    return rv if isinstance(rv, int) else exitcodes.OK


def main() -> int:
    """Console-script entry point (pyproject: cpt = "cli.main:main").  The handlers of
    cpt/interrupts.py stay to the end, and the signals are blocked for the exit: a
    SIGTERM while the interpreter exits is never the death of a command that completed."""
    interrupts.install()
    code = _interruptible(None)
    # The interpreter's finalization gives the signals their default action back: one
    # arriving then would kill a command that completed.  Blocked, it dies with us.
    signal.pthread_sigmask(signal.SIG_BLOCK, interrupts.SIGNALS)
    _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """End the process now, without the interpreter's finalization (tearing down every
    module the engine imported: ~15 ms of a command here, issue 13), once the output is
    out.  Every file a command writes is closed (and made durable) by the command
    itself; cpt registers no atexit handler.  Returns (the interpreter then finalizes
    as usual) when a thread other than this one still runs, or when flushing the output
    fails (the interpreter reports that, exit 120, as it would have)."""
    if threading.active_count() != 1:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
