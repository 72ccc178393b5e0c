"""`cpt ve ...`: VE lifecycle commands (the library is ve/, built with its snapshot hooks by
snapshot.hooks.ve_manager)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

from cpt.errors import InvalidValue, UsageError

from .params import Argument, Exit, Group, Option

if TYPE_CHECKING:
    from ve.lifecycle import VEManager

app = Group(
    help="VEs: containers with their own processes, namespaces, address and private area.",
    no_args_is_help=True,
)
MAX_TIMEOUT = 86400.0


def ve_manager() -> VEManager:
    """The VE layer with its snapshot hooks (imported by the command that runs)."""
    from snapshot.hooks import ve_manager as make

    return make()


VeidArg = Annotated[str, Argument(metavar="VEID", help="the VE's id")]
CmdArg = Annotated[list[str] | None, Argument(metavar="-- CMD...", help="the command")]


@app.command()
def create(
    veid: VeidArg,
    command: CmdArg = None,
    hostname: Annotated[str, Option("--hostname", help="default ve<VEID>")] = "",
    ip: Annotated[str, Option("--ip", help="ADDR/PREFIX inside the VE")] = "",
    template: Annotated[str, Option("--template", help="host or busybox")] = "host",
    privileged: Annotated[
        bool,
        Option(
            "--privileged",
            help="the VE's root is the host's root: no user namespace, no seccomp filter",
        ),
    ] = False,
) -> None:
    """Create a VE: a private area with a minimal root, and its configuration.  Its root
    is root inside it only (a user namespace with ids of its own), unless --privileged."""
    cfg = ve_manager().create(
        veid, hostname=hostname, ip=ip, template=template, command=command, privileged=privileged
    )
    how = "privileged" if cfg.privileged else f"ids {cfg.id_base}-{cfg.id_base + 65535}"
    print(f"VE {veid} created ({how}): {cfg.private}")


@app.command("set")
def set_(
    veid: VeidArg,
    command: CmdArg = None,
    hostname: Annotated[str | None, Option("--hostname")] = None,
    ip: Annotated[str | None, Option("--ip")] = None,
    template: Annotated[str | None, Option("--template")] = None,
    privileged: Annotated[
        bool | None,
        Option(
            "--privileged/--no-privileged",
            help="make a stopped VE privileged, or make it contain its root (its files' "
            "owners move to its own id range)",
        ),
    ] = None,
) -> None:
    """Change a VE's configuration (applied at its next start)."""
    ve_manager().set(
        veid, hostname=hostname, ip=ip, template=template, command=command or None,
        privileged=privileged,
    )  # fmt: skip
    print(f"VE {veid} configured")


@app.command()
def start(
    veid: VeidArg,
    trust: Annotated[
        bool,
        Option(
            "--trust",
            help="vouch for the waiting dump file: restore it although it is not root's "
            "or others may write it",
        ),
    ] = False,
) -> None:
    """Start a VE (or restore it, when a dump file of it waits)."""
    rt = ve_manager().start(veid, trust=trust)
    print(f"VE {veid} started (init {rt.init_pid}, {rt.host_if})")


@app.command()
def stop(
    veid: VeidArg,
    timeout: Annotated[float, Option("--timeout", help="seconds before SIGKILL")] = 10.0,
) -> None:
    """Stop a VE: SIGTERM its processes, SIGKILL what is left after --timeout."""
    if not 0 <= timeout <= MAX_TIMEOUT:  # also nan (no comparison holds) and inf
        raise InvalidValue(f"--timeout {timeout}: use 0 to {MAX_TIMEOUT:.0f} seconds")
    ve_manager().stop(veid, timeout=timeout)
    print(f"VE {veid} stopped")


@app.command()
def status(veid: VeidArg, as_json: Annotated[bool, Option("--json")] = False) -> None:
    """running, suspended or stopped (as vzctl status says); "(privileged)" after it for a
    VE whose root is the host's."""
    info = ve_manager().info(veid)
    if as_json:
        print(json.dumps(info))
        return
    print(f"VE {veid} {info['status']}" + (" (privileged)" if info["privileged"] else ""))


@app.command("list")
def list_(as_json: Annotated[bool, Option("--json")] = False) -> None:
    """Every VE of this node."""
    rows = ve_manager().list_ves()
    if as_json:
        print(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for col in ("VEID", "STATUS", "IP", "HOSTNAME", "TEMPLATE", "IDS", "INIT"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["veid"], r["status"], r["ip"], r["hostname"], r["template"],
            "privileged" if r["privileged"] else r["ids"], str(r["init_pid"] or "-"),
        )  # fmt: skip
    Console(highlight=False).print(t)


@app.command()
def destroy(veid: VeidArg) -> None:
    """Remove a stopped VE: its private area, configuration and dump file."""
    ve_manager().destroy(veid)
    print(f"VE {veid} destroyed")


@app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_(veid: VeidArg, command: Annotated[list[str], Argument(metavar="-- CMD...")]) -> None:
    """Run a command inside a running VE; its exit code is cpt's."""
    if command[:1] == ["--"]:  # options end here; click hands the marker on
        command = command[1:]
    if not command:
        raise UsageError("ve exec needs a command: cpt ve exec VEID -- CMD...")
    raise Exit(ve_manager().exec(veid, command))
