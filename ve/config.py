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

VEID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
TEMPLATES = ("host", "busybox")


def check_veid(veid: str) -> str:
    if not VEID_RE.match(veid):
        raise InvalidValue(
            f"VE id {veid!r}: use 1-32 letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit"
        )
    return veid


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
        if not self.privileged and self.id_base <= 0:
            raise InvalidValue(f"VE {self.veid}: not privileged, but no id range (id_base)")
        if self.template not in TEMPLATES:
            raise InvalidValue(f"template {self.template!r}: one of {', '.join(TEMPLATES)}")
        if self.ip:
            try:
                iface = ipaddress.ip_interface(self.ip)
            except ValueError:
                raise InvalidValue(f"--ip {self.ip!r}: not an ADDR/PREFIX") from None
            if iface.version != 4:
                raise InvalidValue(f"--ip {self.ip!r}: only IPv4 addresses for now")
            if "/" not in self.ip:
                self.ip = f"{self.ip}/32"
        if not self.hostname:
            self.hostname = f"ve{self.veid}"

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
            except tomllib.TOMLDecodeError as e:
                raise InvalidValue(f"{path}: not valid TOML: {e}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidValue(f"{path}: unknown setting(s) {', '.join(unknown)}")
        return cls(**data)


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
