"""`cpt node ...`: this node as a migration's destination (the library is ve/agent.py)."""

from __future__ import annotations

from typing import Annotated

from cpt.errors import UsageError

from .params import Exit, Group, Option

app = Group(help="This node as the destination of `cpt migrate`.", no_args_is_help=True)


@app.command()
def serve(
    stdio: Annotated[
        bool, Option("--stdio", help="speak the migration protocol on stdin and stdout")
    ] = False,
) -> None:
    """Serve one migration session (what `cpt migrate` runs over ssh): only the protocol's
    operations, on the VE being migrated, under this node's root."""
    if not stdio:
        raise UsageError("node serve needs --stdio (cpt listens on no port of its own)")
    from snapshot.hooks import ve_manager
    from ve.agent import serve_stdio

    raise Exit(serve_stdio(ve_manager()))
