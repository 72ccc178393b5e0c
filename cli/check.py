"""`cpt check`: what this host supports for checkpoint and restore."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

from .params import Exit, Option


def check(
    as_json: Annotated[bool, Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Check this host, feature by feature, like `criu check`.

    Exit 0 when everything checkpoint and restore need is present (optional features,
    used only by some operations, are reported but never fail the check), 1 otherwise.
    """
    from cpt.host.check import run_checks

    features = run_checks()
    ok = all(f.ok for f in features if f.required)
    if as_json:
        print(json.dumps({"ok": ok, "features": [dataclasses.asdict(f) for f in features]}))
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(title="cpt check", title_justify="left")
        for col in ("feature", "status", "needed for", "detail"):
            t.add_column(col)
        for f in features:
            if f.ok:
                status = "[green]ok"
            else:
                status = "[red]MISSING" if f.required else "[yellow]absent (optional)"
            t.add_row(f.name, status, f.used_for, f.detail)
        Console(highlight=False).print(t)
        print("everything checkpoint and restore need is present" if ok else "missing features")
    if not ok:
        raise Exit(1)
