"""`cpt pool ...`: the node's embedded storage (the library is storage.pool)."""

from __future__ import annotations

import json
from typing import Annotated

from cpt.errors import InvalidValue
from cptimage.errors import quote

from .params import Group, Option

MAX_SIZE = 1 << 50  # 1 PiB: far beyond a loop-file pool, far below what overflows
app = Group(
    help="The node's storage: a loop-file btrfs in the state directory when it is not on "
    "btrfs (made on first use).",
    no_args_is_help=True,
)


@app.command()
def init(
    size: Annotated[str, Option("--size", help="size of a new pool image")] = "4G",
) -> None:
    """Create and mount the pool (idempotent: an existing pool keeps its size)."""
    from storage import pool
    from ve.node import Node

    try:
        nbytes = pool.parse_size(size)
    except ValueError as e:
        raise InvalidValue(f"--size: {e}") from None
    if nbytes < 256 << 20:
        raise InvalidValue(f"--size {quote(size)}: a btrfs pool needs at least 256M")
    if nbytes > MAX_SIZE:  # the sparse image's size: the kernel's limit is 2^63 - 1
        raise InvalidValue(f"--size {quote(size)}: at most {MAX_SIZE >> 40}T")
    path = pool.init(Node().root, nbytes)
    print(f"pool ready: {path}")


@app.command()
def status(
    as_json: Annotated[bool, Option("--json", help="print it as JSON")] = False,
) -> None:
    """Where the pool is, how it is set up, its size and use."""
    from storage import pool
    from ve.node import Node

    st = pool.status(Node().root)
    if as_json:
        print(json.dumps(st))
        return
    for key, value in st.items():
        print(f"{key:8} {value if value is not None else '-'}")
