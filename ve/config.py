"""A VE's configuration: a small TOML file a human can read and `cpt ve set` changes."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import tomllib
from typing import Any

from cpt.errors import InvalidValue
from cptimage.atomic import atomic_output
from cptimage.errors import quote, shorten

# fullmatch, never match + "$": "$" also matches before a trailing newline ("7002\n")
VEID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
TEMPLATES = ("host", "busybox")
# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens; at most
# 64 bytes, what sethostname(2) takes (HOST_NAME_MAX)
LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
HOST_NAME_MAX = 64
# an IPv4 address, optionally /PREFIX: decimal, nothing around it (ipaddress alone also
# takes a netmask after the slash, and a prefix of 0)
IP_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3})(?:/([1-9]\d?))?", re.ASCII)


def check_veid(veid: str) -> str:
    if not isinstance(veid, str) or not VEID_RE.fullmatch(veid):
        raise InvalidValue(
            f"VE id {quote(veid)}: use 1-32 letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit"
        )
    return veid


def check_hostname(name: str) -> str:
    """An RFC 1123 host name that sethostname(2) takes, or InvalidValue."""
    if (
        not isinstance(name, str)
        or len(name) > HOST_NAME_MAX
        or not all(LABEL_RE.fullmatch(label) for label in name.split("."))
    ):
        raise InvalidValue(
            f"hostname {quote(name)}: use dot-separated labels of letters, digits and "
            f"hyphens (not first or last in a label), at most {HOST_NAME_MAX} characters"
        )
    return name


def default_hostname(veid: str) -> str:
    """ve<VEID>, with what a host name cannot hold ('_', empty labels) made '-'."""
    name = f"ve{veid}"
    if all(LABEL_RE.fullmatch(label) for label in name.split(".")):
        return name
    return re.sub(r"[^A-Za-z0-9]+", "-", name).rstrip("-")


def check_ip(ip: str) -> str:
    """ADDR or ADDR/PREFIX (1-32) of a unicast IPv4 host address; returns ADDR/PREFIX."""
    what = f"--ip {quote(ip)}"
    m = IP_RE.fullmatch(ip) if isinstance(ip, str) else None
    if m is None:
        raise InvalidValue(f"{what}: not an IPv4 ADDR/PREFIX (e.g. 198.18.0.2/24)")
    prefix = int(m[2] or 32)
    if prefix > 32:
        raise InvalidValue(f"{what}: the prefix length is 1-32, not {prefix}")
    try:
        iface = ipaddress.IPv4Interface(f"{m[1]}/{prefix}")
    except ValueError as e:  # an octet above 255, or with a leading zero
        raise InvalidValue(f"{what}: {e}") from None
    addr, net = iface.ip, iface.network
    if (
        addr in _NOT_HOSTS
        or addr.is_loopback
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_link_local
    ):
        raise InvalidValue(f"{what}: {addr} is not a unicast host address")
    if net.prefixlen <= 30 and addr in (net.network_address, net.broadcast_address):
        raise InvalidValue(f"{what}: {addr} is the network's own address, not a host's")
    return str(iface)


_NOT_HOSTS = ipaddress.IPv4Network("0.0.0.0/8")  # "this network"


@dataclasses.dataclass
class VEConfig:
    veid: str
    private: str  # the private area (a btrfs subvolume): the VE's root filesystem
    hostname: str = ""
    ip: str = ""  # ADDR/PREFIX, "" for no network but loopback
    template: str = "host"
    command: list[str] = dataclasses.field(default_factory=list)
    # True: the VE's root is the host's root (no user namespace, no seccomp filter), as
    # every VE was before user namespaces; a config without the setting is such a VE
    privileged: bool = True
    # the VE's ids 0..ID_COUNT-1 are host ids id_base.. (ve/idmap.py); 0 when privileged
    id_base: int = 0

    def __post_init__(self) -> None:
        check_veid(self.veid)
        for f in ("private", "hostname", "ip", "template"):
            if not isinstance(getattr(self, f), str):
                raise InvalidValue(f"{f} {quote(getattr(self, f))}: not a string")
        if not isinstance(self.command, list) or not all(
            isinstance(a, str) and "\0" not in a for a in self.command
        ):
            raise InvalidValue(f"command {quote(self.command)}: not a list of strings without NUL")
        if not os.path.isabs(self.private) or os.path.normpath(self.private) != self.private:
            raise InvalidValue(f"private {quote(self.private)}: not an absolute, normal path")
        if not isinstance(self.privileged, bool):
            raise InvalidValue(f"privileged {quote(self.privileged)}: not true or false")
        if not isinstance(self.id_base, int) or isinstance(self.id_base, bool):
            raise InvalidValue(f"id_base {quote(self.id_base)}: not an integer")
        if not self.privileged and self.id_base <= 0:
            raise InvalidValue(f"VE {self.veid}: not privileged, but no id range (id_base)")
        if self.template not in TEMPLATES:
            raise InvalidValue(f"template {quote(self.template)}: one of {', '.join(TEMPLATES)}")
        if self.ip:
            if ":" in self.ip:
                raise InvalidValue(f"--ip {quote(self.ip)}: only IPv4 addresses for now")
            self.ip = check_ip(self.ip)
        if not self.hostname:
            self.hostname = default_hostname(self.veid)
        check_hostname(self.hostname)

    @property
    def address(self) -> str:
        return self.ip.split("/")[0] if self.ip else ""

    def save(self, path: str) -> None:
        with atomic_output(path, mode=0o644) as f:
            f.write(dumps(dataclasses.asdict(self)).encode())

    @classmethod
    def load(cls, path: str) -> VEConfig:
        with open(path, "rb") as f:
            try:
                data = tomllib.load(f)
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                raise InvalidValue(f"{path}: not valid TOML: {shorten(str(e))}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            names = ", ".join(shorten(n, 40) for n in unknown[:5])
            raise InvalidValue(f"{path}: unknown setting(s) {names}")
        missing = sorted({"veid", "private"} - set(data))
        if missing:
            raise InvalidValue(f"{path}: no {' or '.join(missing)}")
        try:
            return cls(**data)
        except InvalidValue as e:
            raise InvalidValue(f"{path}: {e}; correct the file") from None


def dumps(d: dict[str, Any]) -> str:
    """TOML for a flat table of strings, numbers, booleans and lists of strings."""
    lines = ["# cpt VE configuration (change it with `cpt ve set`)"]
    for k, v in d.items():
        lines.append(f"{k} = {_value(v)}")
    return "\n".join(lines) + "\n"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON's string escapes are TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def exists(path: str) -> bool:
    return os.path.exists(path)
