"""A node: the state directory holding VE configs, private areas and dump files.

    <root>/ve/<VEID>.toml          configs
    <root>/pool/private/<VEID>     private areas (subvolumes of the node's btrfs)
    <root>/pool/snapshots/<VEID>   snapshots of a VE and their catalog (snapshot/catalog.py)
    <root>/pool/migrate/<VEID>     snapshots a migration sends or receives (ve/migrate.py)
    <root>/ve/<VEID>.toml.migrated the config of a VE that migrated to another node
    <root>/dump/Dump.<VEID>        dump files (the default root uses /var/tmp/Dump.<VEID>,
                                   as the OpenVZ documentation gives it)
pool/private, pool/snapshots and dump are root's alone (0700, as OpenVZ's /vz/private):
what a VE's root puts in its area (a set-uid program, a device node) is out of a host
user's reach; the areas themselves keep the VE root's mode, being the VEs' "/".
The root is /var/lib/cpt, or --root / CPT_ROOT.  What a running VE leaves in the run
directory is runtime.py's.
"""

from __future__ import annotations

import os
import stat

from cpt.errors import InvalidValue
from cpt.stages.store import DEFAULT_ROOT
from cptimage.errors import quote
from storage import pool

from .config import VEConfig, check_veid


class Node:
    def __init__(self, root: str | None = None) -> None:
        self.root = os.path.abspath(root or os.environ.get("CPT_ROOT") or DEFAULT_ROOT)

    @property
    def ve_dir(self) -> str:
        return os.path.join(self.root, "ve")

    def config_path(self, veid: str) -> str:
        return os.path.join(self.ve_dir, f"{veid}.toml")

    def config(self, veid: str) -> VEConfig:
        """The configuration of VE `veid`; InvalidValue if there is no such VE."""
        path = self.config_path(check_veid(veid))
        if not os.path.exists(path):
            raise InvalidValue(f"VE {veid} does not exist (no {path}); create it first")
        cfg = VEConfig.load(path)
        if cfg.veid != veid:
            raise InvalidValue(f"{path}: veid {quote(cfg.veid)} is not {veid}; correct the file")
        return cfg

    def veids(self) -> list[str]:
        try:
            names = os.listdir(self.ve_dir)
        except FileNotFoundError:
            return []
        return sorted(n[: -len(".toml")] for n in names if n.endswith(".toml"))

    def migrated_veids(self) -> list[str]:
        """The VEs that migrated away from this node (only their .migrated config left)."""
        try:
            names = os.listdir(self.ve_dir)
        except FileNotFoundError:
            return []
        here = set(self.veids())
        out = (n[: -len(".toml.migrated")] for n in names if n.endswith(".toml.migrated"))
        return sorted(v for v in out if v not in here)

    def default_dumpfile(self, veid: str) -> str:
        if self.root == DEFAULT_ROOT:
            return f"/var/tmp/Dump.{veid}"
        return os.path.join(self.root, "dump", f"Dump.{veid}")

    def make_dump_dir(self) -> None:
        """<root>/dump, root's alone as the dumps in it (0700, also when an older cpt
        made it); the default root's /var/tmp is left as it is."""
        if self.root != DEFAULT_ROOT:
            _root_only(os.path.join(self.root, "dump"))

    def private_dir(self) -> str:
        """Where private areas live: the node's btrfs (the embedded pool if need be)."""
        return self._pool_dir("private")

    def snapshots_dir(self, veid: str) -> str:
        """Where snapshot/ keeps a VE's snapshots and their catalog: beside the private
        areas, on the same filesystem (a btrfs snapshot cannot leave it)."""
        return os.path.join(self._pool_dir("snapshots"), veid)

    def migrate_dir(self, veid: str) -> str:
        """Where a migration keeps a VE's snapshots (sent from here, or received here):
        in the pool, as the private areas they are made of and into."""
        return os.path.join(self._pool_dir("migrate"), veid)

    def migrated_path(self, veid: str) -> str:
        """The config of a VE that migrated away (`cpt migrate` keeps it, as vzmigrate)."""
        return self.config_path(veid) + ".migrated"

    def _pool_dir(self, name: str) -> str:
        """The pool's directory `name`, there and root's alone (0700)."""
        d = os.path.join(pool.ensure(self.root), name)
        _root_only(d)
        return d


def _root_only(d: str) -> None:
    """The directory `d`, there and 0700 (made so by an older cpt too)."""
    os.makedirs(d, mode=0o700, exist_ok=True)
    if stat.S_IMODE(os.stat(d).st_mode) != 0o700:
        os.chmod(d, 0o700)
