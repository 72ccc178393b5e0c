"""A stand-in for cpt.restore.model.ImageModel in unit tests of one opener: the records
the test gives, and one process (pid 1) holding everything with this test's own
credentials, so that cpt.restore.creds acts as it (and switches nothing)."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from cpt.sys.creds import capget, fsgid, fsuid, thread_groups
from cptimage.records import Creds


def fake_model(**records: Any) -> SimpleNamespace:
    eff, _, _ = capget()
    me = Creds(pid=1, fsuid=fsuid(), fsgid=fsgid(), groups=thread_groups(), cap_eff=eff)
    base: dict[str, Any] = dict(
        root_prefix="",
        root=1,
        procs={1: SimpleNamespace(creds=me)},
        holders_of_file=lambda ident: [1],
        holders_of_path=lambda ident: [1],
        open=os.open,
    )
    return SimpleNamespace(**{**base, **records})
