"""The `cpt` command tree: which module holds each command and group, the root's options,
and the typer app built from them (`build`, the only place typer is imported for it).

A command group is a params.Group (`app`) in its own module, joined here with one TREE
line; a command of the root is a function, joined the same way.  cli/main.py dispatches
the command lines it can parse itself (params.parse) through this table without typer,
and hands the others to `build()`'s app.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Annotated, Any

from .params import PLAIN, Group, Option

# name -> "module" (a group: the module's `app`) or "module:function" (a command); in the
# order of `cpt --help`
TREE: dict[str, str] = {
    "image": "image",
    "chkpnt": "cr:chkpnt",
    "restore": "cr:restore",
    "check": "check:check",
    "ve": "ve",
    "pool": "pool",
    "snapshot": "snapshot",
    "migrate": "migrate:migrate",
    "node": "node",
}

HELP = "Checkpoint/restore of Linux process trees and containers."


def root_options(
    root: Annotated[
        str | None,
        Option("--root", help="the node's state directory (default /var/lib/cpt; CPT_ROOT)"),
    ] = None,
) -> None:
    """Checkpoint/restore of Linux process trees and containers."""
    if root:
        os.environ["CPT_ROOT"] = os.path.abspath(root)


def node(name: str) -> Group | Callable[..., Any] | None:
    """The group or root command `name` (importing only its module), or None."""
    where = TREE.get(name)
    if where is None:
        return None
    module, _, func = where.partition(":")
    mod = importlib.import_module(f"{__package__}.{module}")
    return getattr(mod, func or "app")


def build() -> Any:
    """The typer app of every command (imports typer and every command module)."""
    import typer

    from .params import typer_command, typer_group

    app = typer.Typer(
        name="cpt",
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,
        add_completion=False,
        **PLAIN,
    )
    for name in TREE:
        found = node(name)
        if isinstance(found, Group):
            app.add_typer(typer_group(found), name=name)
        else:
            assert found is not None
            app.command(name)(typer_command(found))
    app.callback()(typer_command(root_options))
    return app


def build_one(name: str) -> Any:
    """The click command of the root's command or group `name` alone, as build()'s app
    has it (imports typer and that command's module only), or None."""
    import typer
    from typer.main import get_command

    from .params import typer_command, typer_group

    found = node(name)
    if found is None:
        return None
    app = typer.Typer(add_completion=False, **PLAIN)
    if isinstance(found, Group):  # added as build() does (a group of one stays a group)
        app.add_typer(typer_group(found), name=name)
        group: Any = get_command(app)  # a click Group: the app has a group
        return group.commands[name]
    app.command(name)(typer_command(found))  # a lone command is the app's command
    return get_command(app)
