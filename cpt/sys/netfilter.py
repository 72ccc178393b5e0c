"""Drop rules that keep a checkpointed TCP connection's peer from being reset.

Between the dump of an established connection and its restore, no socket of this host
owns the connection: a packet of the peer that reached the host would be answered with
a RST.  So before a connection's state is read, a rule of our own nftables table
(`inet cpt`, chain `input`) drops the peer's packets to it; the peer retransmits into
the void until the restored socket leaves repair mode and its rule is removed.

Lifetime of a rule (one per connection, named by a comment holding its 4-tuple):
  - added by a full `cpt chkpnt` before the connection's state is read;
  - removed at the end of that command when the tree keeps running (--leave-running, or
    a dump that failed), and by a successful restore (full or --undump) of the image;
  - left in place after a kill, for as long as the dump file is to be restored: an
    abandoned dump leaves them; `nft delete table inet cpt` removes them all.
Every nft command runs through `run_nft`, on the command runner (cpt.sys.runner: the argv
logged, a timeout), and a failure becomes SystemError_ naming the command.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import shutil

from cpt.errors import SystemError_

from . import runner

TABLE = "cpt"
CHAIN = "input"
_PREFIX = "cpt "
# nft answers in milliseconds; a wait this long means it hangs (on the netlink socket)
NFT_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class Conn:
    """A TCP connection as the local socket sees it."""

    local: str
    lport: int
    remote: str
    rport: int

    @property
    def tag(self) -> str:
        return f"{_PREFIX}{_addr(self.local)}:{self.lport} {_addr(self.remote)}:{self.rport}"

    def __str__(self) -> str:
        return f"{self.local}:{self.lport} <-> {self.remote}:{self.rport}"


def _addr(a: str) -> str:
    """IPv4-mapped IPv6 addresses travel as IPv4 packets."""
    ip = ipaddress.ip_address(a)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def run_nft(*args: str, script: str | None = None) -> str:
    """`nft ARGS` (with `script` on stdin for `-f -`); raises SystemError_ on failure."""
    exe = shutil.which("nft")
    if exe is None:
        raise SystemError_(
            "nft is not installed (Debian package nftables): needed to checkpoint "
            "established TCP connections without resetting their peers"
        )
    argv = [exe, *args]
    stdin = script.encode() if script is not None else None
    p = runner.run(argv, check=False, input=stdin, timeout=NFT_TIMEOUT)
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace").strip().splitlines()
        raise SystemError_(f"{' '.join(argv)} failed: {err[0] if err else p.returncode}")
    return p.stdout.decode()


def _rule(c: Conn) -> str:
    fam = "ip" if ipaddress.ip_address(_addr(c.local)).version == 4 else "ip6"
    return (
        f"add rule inet {TABLE} {CHAIN} {fam} saddr {_addr(c.remote)} {fam} daddr "
        f"{_addr(c.local)} tcp sport {c.rport} tcp dport {c.lport} drop "
        f'comment "{c.tag}"'
    )


def drop(conns: list[Conn]) -> None:
    """Drop the peers' packets to these connections (one nft transaction)."""
    if not conns:
        return
    lines = [
        f"add table inet {TABLE}",
        f"add chain inet {TABLE} {CHAIN} "
        "{ type filter hook input priority -300; policy accept; }",
        *(_rule(c) for c in conns),
    ]
    run_nft("-f", "-", script="\n".join(lines) + "\n")


def rules() -> dict[str, int]:
    """Our drop rules: comment -> handle (empty when the table does not exist)."""
    try:
        out = run_nft("-j", "list", "table", "inet", TABLE)
    except SystemError_:
        return {}
    found = {}
    for obj in json.loads(out).get("nftables", []):
        r = obj.get("rule")
        if r and r.get("chain") == CHAIN and str(r.get("comment", "")).startswith(_PREFIX):
            found[r["comment"]] = r["handle"]
    return found


def undrop(conns: list[Conn]) -> None:
    """Remove the rules of these connections, and our table once it holds no rule."""
    if not conns:
        return
    have = rules()
    tags = {c.tag for c in conns}
    lines = [f"delete rule inet {TABLE} {CHAIN} handle {h}" for t, h in have.items() if t in tags]
    if len(lines) == len(have):
        lines = [f"delete table inet {TABLE}"] if have else []
    if lines:
        run_nft("-f", "-", script="\n".join(lines) + "\n")
