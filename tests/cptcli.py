"""The `cpt` command as the end-to-end tests run it: a separate process of this
interpreter (`python -m cli.main`), started in the repository with no standard input and
with a run directory of the test's own (CPT_RUN_DIR), so that its lock and frozen-state
files never meet another test's."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

CPT = [sys.executable, "-m", "cli.main"]
REPO = Path(__file__).resolve().parent.parent


class CptRunner:
    """`run(*args)` -> (exit code, stdout, stderr).  `fault` sets CPT_FAULT (cpt/fault.py);
    `nofile=(soft, hard)` runs the command with that RLIMIT_NOFILE; `timeout` guards
    against a hang (subprocess.TimeoutExpired fails the test)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.env = dict(os.environ, CPT_RUN_DIR=str(run_dir))

    def __call__(
        self,
        *args: object,
        timeout: float = 120,
        fault: str | None = None,
        nofile: tuple[int, int] | None = None,
    ) -> tuple[int, str, str]:
        def limit(soft_hard: tuple[int, int]) -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, soft_hard)

        p = subprocess.run(
            [*CPT, *map(str, args)],
            cwd=REPO,
            env=dict(self.env, CPT_FAULT=fault) if fault else self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            preexec_fn=(lambda: limit(nofile)) if nofile is not None else None,
        )
        return p.returncode, p.stdout, p.stderr
