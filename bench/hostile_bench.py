"""Hostile-input soak (issue 11): mutated images against the image tools and restore.

(a) image tools: --mutants mutants (tests/mutants.py: raw byte damage, and sealed semantic
    mutations whose checksums and digest are right) of the golden images and of real dumps,
    each through `cpt image verify`, `show` (text, --json, --maps and --fds of a process),
    `decode -o` and `diff` against its base, run in-process through cli.main.run with a
    10 s alarm per command.  Counted: tried, refused cleanly (verify exit 1, or exit 21/40
    with one `cpt:` line), accepted (verify exit 0: a mutant that is still a valid image),
    tracebacks ("internal error", an exception out of run()), unclear messages (Python
    internals in a message, or more than one line), hangs.
(b) restore: --restore sealed mutants of real dumps of two workloads (fixtures/workloads
    tree.c: sessions, groups, zombies; files.c: files, pipes, a FIFO, shared offsets),
    built statically so that every file their images name lives in the bench's own
    directory.  Each is restored by `cpt restore --dumpfile` in a forked child of this
    process (the interpreter's start-up is paid once), under a timeout; this process is a
    child subreaper, so whatever the restore leaves behind comes to it.  Counted: tried,
    refused cleanly (one `cpt:` line, nothing left), restored (exit 0; the tree is then
    killed), tracebacks, unclear messages, hangs, and workloads left half-alive (a refused
    restore that left processes).  Needs root; run it under the tests' lock:

    flock /tmp/cpt-tests.lock .venv/bin/python bench/hostile_bench.py [--mutants 10000]
        [--restore 10000] [--seed 1] [--part all|image|restore] [--json FILE]

Targets: 0 tracebacks, 0 hangs, 0 half-alive.  Exit 1 when a target is missed.  The
distinct unclear messages (digits masked) are printed with one example each.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # samples, mutants, workloads: test data and helpers

import mutants  # noqa: E402
import samples  # noqa: E402
import workloads  # noqa: E402

from cptimage.container import ImageReader  # noqa: E402
from cptimage.errors import ImageError  # noqa: E402

CMD_TIMEOUT = 10  # seconds per image command
RESTORE_TIMEOUT = 60.0
# what a message must not show: Python internals
INTERNALS = re.compile(
    r"Traceback|internal error|\[Errno \d+\]|\w+Error\b|Exception|object has no attribute|"
    r"format requires|argument out of range|invalid literal|unhashable|NoneType|"
    r"not subscriptable|index out of range|codec can't"
)
ALLOWED = re.compile(r"ImageError")  # none so far: the error class name never shows


class Hang(BaseException):
    """A command ran past its alarm."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang()


def _shape(message: str) -> str:
    """A message with its numbers and paths masked: one entry per kind of message."""
    s = re.sub(r"/[^\s:;,)']*", "PATH", message)
    s = re.sub(r"0x[0-9a-f]+", "HEX", s)
    return re.sub(r"\d+", "N", s)[:160]


class Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.unclear: dict[str, str] = {}
        self.tracebacks: dict[str, str] = {}
        self.messages: Counter[str] = Counter()  # every error line's shape
        self.example: dict[str, str] = {}

    def note_message(self, err: str, code: int, what: str) -> bool:
        """Record a problem with an error output; True when it was clean."""
        lines = err.splitlines()
        errors = [ln for ln in lines if not ln.startswith("cpt: warning:")]
        if code not in (0, 1) and errors:
            shape = _shape(errors[0])
            self.messages[shape] += 1
            self.example.setdefault(shape, f"{what}: {errors[0][:300]}")
        if "internal error" in err or "Traceback" in err:
            self.tracebacks.setdefault(_shape(err), f"{what}: {err.strip()[:600]}")
            self.counts["tracebacks"] += 1
            return False
        bad = code not in (0, 1) and (
            len(errors) != 1 or not errors[0].startswith("cpt: ") or INTERNALS.search(errors[0])
        )
        if bad:
            self.unclear.setdefault(_shape(err), f"{what}: {err.strip()[:600]}")
            self.counts["unclear"] += 1
            return False
        return True


# --------------------------------------------------------------------------- (a) image tools


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    from cli.main import run

    out, err = io.StringIO(), io.StringIO()
    signal.alarm(CMD_TIMEOUT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(argv)
    except Hang:
        return -1, out.getvalue(), err.getvalue() + "\nHANG"
    except BaseException:
        return -2, out.getvalue(), err.getvalue() + "\nTraceback\n" + traceback.format_exc()
    finally:
        signal.alarm(0)
    return code, out.getvalue(), err.getvalue()


def _pids(path: str) -> list[int]:
    try:
        with ImageReader(path) as r:
            from cptimage import show

            return [p["pid"] for p in show.process_tree(r)][:2]
    except ImageError:
        return []


def image_part(bases: list[mutants.Base], n: int, rng: random.Random, tmp: Path) -> Tally:
    tally = Tally()
    base_paths = {}
    for b in bases:
        p = tmp / f"base-{b.name}.img"
        p.write_bytes(b.raw)
        base_paths[b.name] = str(p)
    path = str(tmp / "mutant.img")
    out_json = str(tmp / "mutant.json")
    signal.signal(signal.SIGALRM, _alarm)
    t0 = time.monotonic()
    for i in range(n):
        b = rng.choice(bases)
        kind, raw = mutants.mutant(rng, b)
        tally.kinds[kind] += 1
        with open(path, "wb") as f:
            f.write(raw)
        tally.counts["tried"] += 1
        code, out, err = _run_cli(["image", "verify", path])
        clean = tally.note_message(err, code, f"verify [{kind}]")
        if code == -1:
            tally.counts["hangs"] += 1
        elif code == 0:
            tally.counts["accepted"] += 1
        elif code in (1, 40, 41) and clean:
            tally.counts["refused cleanly"] += 1
        commands = [
            ["image", "show", path],
            ["image", "show", path, "--json"],
            ["image", "decode", path, "-o", out_json],
            ["image", "diff", base_paths[b.name], path],
        ]
        for pid in _pids(path):
            commands.append(["image", "show", path, "--maps", str(pid)])
            commands.append(["image", "show", path, "--fds", str(pid)])
        for argv in commands:
            code, out, err = _run_cli(argv)
            tally.counts["commands"] += 1
            if code == -1:
                tally.counts["hangs"] += 1
            tally.note_message(err, code, f"{argv[1]} [{kind}]")
            if argv[-1] == "--json" and code == 0:
                try:
                    json.loads(out)
                except ValueError:
                    tally.counts["invalid json"] += 1
        if (i + 1) % 1000 == 0:
            rate = (i + 1) / (time.monotonic() - t0)
            print(f"  image: {i + 1}/{n} mutants ({rate:.0f}/s)", flush=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out_json)
    return tally


# --------------------------------------------------------------------------- (b) restore


def _build_static(name: str, bindir: Path) -> Path:
    """A workload linked statically: its image then names no file outside our directory."""
    bindir.mkdir(exist_ok=True)
    out = bindir / name
    subprocess.run(
        [
            workloads.CC,
            *workloads.CFLAGS,
            "-static",
            "-o",
            str(out),
            str(workloads.source(name)),
        ],
        check=True,
        capture_output=True,
    )
    return out


def _start(binary: Path, d: Path) -> int:
    d.mkdir(parents=True)
    with open(d / "log", "wb") as log:
        p = subprocess.Popen(
            [str(binary), str(d)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=d,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
            start_new_session=True,
        )
    deadline = time.monotonic() + 10
    while not (d / "ready").exists():
        if time.monotonic() > deadline or p.poll() is not None:
            raise RuntimeError(f"{binary.name} did not start: {(d / 'log').read_text()[-500:]}")
        time.sleep(0.01)
    time.sleep(0.2)  # let its members set up (tree.c's report HELLO)
    return p.pid


def _ours() -> set[int]:
    """Every process below this one (the restore's leftovers come to us: subreaper)."""
    return workloads.descendants(os.getpid())


def _alive_after(grace: float = 2.0) -> set[int]:
    """The processes below this one that are alive, once those a failed restore killed had
    `grace` seconds to die (their zombies, ours as subreaper, are reaped here)."""
    deadline = time.monotonic() + grace
    while True:
        alive = set()
        for p in _ours():
            if workloads._reap_if_zombie_child(p) is not None:
                continue
            info = workloads.proc_info(p)
            if info is not None and info.state not in "ZX":
                alive.add(p)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def _dump(name: str, tmp: Path, run_dir: Path) -> bytes:
    binary = _build_static(name, tmp / "bin")
    pid = _start(binary, tmp / f"wl-{name}")
    img = tmp / f"{name}.img"
    env = dict(os.environ, CPT_RUN_DIR=str(run_dir))
    # a full checkpoint (the tree is killed: its files stay as the image names them); the
    # killed tree is ours to reap while cpt waits for its PIDs to be free
    cpt = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "chkpnt", "--pid", str(pid), "--dumpfile", str(img)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while cpt.poll() is None and time.monotonic() < deadline:
        for p in _ours() - {cpt.pid}:
            workloads._reap_if_zombie_child(p)
        time.sleep(0.01)
    if cpt.poll() is None:
        cpt.kill()
    _, err = cpt.communicate()
    left = _ours()
    if left:
        workloads.kill_tree(left)
    if cpt.returncode:
        raise RuntimeError(f"chkpnt of {name} failed: {err}")
    return img.read_bytes()


def _restore_child(path: str, out: str) -> None:
    """In the forked child: `cpt restore --dumpfile path`, output to `out`; never returns."""
    code = 98
    try:
        os.setsid()
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
        sys.stderr = sys.stdout
        from cli.main import run

        code = run(["restore", "--dumpfile", path])
    except BaseException:
        with contextlib.suppress(BaseException):
            sys.stderr.write("Traceback\n" + traceback.format_exc())
        code = 99
    finally:
        os._exit(code)


def _attempt(path: str, out: str) -> tuple[int | None, str]:
    """Restore one image in a forked child; (exit code or None on a hang, its output)."""
    if FILES is not None:
        FILES.put_back()
    pid = os.fork()
    if pid == 0:
        _restore_child(path, out)
    deadline = time.monotonic() + RESTORE_TIMEOUT
    code: int | None = None
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.002)
    try:
        text = Path(out).read_text(errors="replace")
    except OSError:
        text = ""
    return code, text


class Files:
    """The regular files of the workloads' directories as the dump saw them: put back (same
    inode, contents, times) before each restore, since a restored workload writes them and
    restore refuses a file changed since the checkpoint."""

    def __init__(self, dirs: list[Path]) -> None:
        self.saved = []
        for d in dirs:
            for p in sorted(d.iterdir()):
                st = p.lstat()
                if p.is_file() and not p.is_symlink():
                    self.saved.append((p, p.read_bytes(), (st.st_atime_ns, st.st_mtime_ns)))

    def put_back(self) -> None:
        for p, data, times in self.saved:
            try:
                fd = os.open(p, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
            except OSError:
                continue  # a mutant's restore may have removed or replaced it: it says so
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.utime(p, ns=times, follow_symlinks=False)


def real_bases(tmp: Path) -> list[mutants.Base]:
    """Dumps of the two workloads (left running while dumped, then killed)."""
    run_dir = tmp / "run"
    run_dir.mkdir()
    os.environ["CPT_RUN_DIR"] = str(run_dir)  # lock and state files of our own
    workloads.make_subreaper()
    bases = [mutants.Base(name, _dump(name, tmp, run_dir)) for name in ("tree", "files")]
    global FILES
    FILES = Files([tmp / f"wl-{b.name}" for b in bases])
    return bases


FILES: Files | None = None


def restore_part(
    bases: list[mutants.Base], n: int, rng: random.Random, tmp: Path, keep: Path | None = None
) -> tuple[Tally, list[str]]:
    """``keep``: a directory where each mutant whose restore gave an unclear message, a
    traceback, a hang or a half-alive tree is kept (with what cpt said) to reproduce it."""
    tally = Tally()
    notes: list[str] = []
    path, out = str(tmp / "restore.img"), str(tmp / "restore.out")
    for b in bases:  # the unmutated images restore: the soak measures something
        Path(path).write_bytes(b.raw)
        code, text = _attempt(path, out)
        left = _ours()
        notes.append(f"base {b.name}: exit {code}, {len(left)} processes restored")
        if left:
            workloads.kill_tree(left)
        if code != 0:
            raise RuntimeError(f"the unmutated {b.name} image does not restore: {text}")
    t0 = time.monotonic()
    kept = 0
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    for i in range(n):
        if stop:
            notes.append(f"stopped by signal {stop[0]} after {i} mutants")
            break
        b = rng.choice(bases)
        kind, raw = mutants.mutant(rng, b, sealed_share=0.9)
        tally.kinds[kind] += 1
        with open(path, "wb") as f:
            f.write(raw)
        tally.counts["tried"] += 1
        code, text = _attempt(path, out)
        left = _ours() if code == 0 else _alive_after()
        if code is None:
            tally.counts["hangs"] += 1
            tally.unclear.setdefault("HANG", f"[{kind}] {text.strip()[:300]}")
        elif code == 0:
            tally.counts["restored"] += 1
        else:
            clean = tally.note_message(text, code, f"restore [{kind}]")
            if left:
                tally.counts["half-alive"] += 1
                what = "; ".join(
                    f"{p} {i.state} {i.comm}" for p in sorted(left) if (i := workloads.proc_info(p))
                )
                tally.unclear.setdefault(
                    "HALF-ALIVE " + _shape(text),
                    f"HALF-ALIVE [{kind}] exit {code}: {text.strip()[:300]} (left: {what})",
                )
            elif clean:
                tally.counts["refused cleanly"] += 1
            tally.kinds[f"exit {code}"] += 1
        bad_before = sum(tally.counts[k] for k in ("unclear", "tracebacks", "hangs", "half-alive"))
        if keep is not None and bad_before > kept:
            kept = bad_before
            keep.mkdir(parents=True, exist_ok=True)
            if not (keep / f"{b.name}.img").exists():  # `cpt image diff` shows the mutation
                (keep / f"{b.name}.img").write_bytes(b.raw)
            shutil.copyfile(path, keep / f"{b.name}-{i}.img")
            (keep / f"{b.name}-{i}.txt").write_text(f"[{kind}] exit {code}\n{text}")
        if left:
            try:
                workloads.kill_tree(left)
            except workloads.WorkloadError as e:
                tally.counts["unkillable"] += 1
                notes.append(str(e)[:300])
        if (i + 1) % 500 == 0:
            rate = (i + 1) / (time.monotonic() - t0)
            print(f"  restore: {i + 1}/{n} mutants ({rate:.1f}/s)", flush=True)
    return tally, notes


# --------------------------------------------------------------------------- main


def _golden() -> list[mutants.Base]:
    out = []
    for name, build in samples.GOLDENS.items():
        buf = io.BytesIO()
        build(buf)
        out.append(mutants.Base(name, buf.getvalue()))
    return out


def _print(title: str, tally: Tally, keys: list[str]) -> None:
    print(title)
    for k in keys:
        print(f"  {k:18} {tally.counts.get(k, 0)}")
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(tally.kinds.items()))
    print(f"  mutations: {kinds}")
    for what, table in (("tracebacks", tally.tracebacks), ("unclear messages", tally.unclear)):
        if table:
            print(f"  {what} ({len(table)} kinds):")
            for example in table.values():
                print(f"    - {example[:400]}")


@contextlib.contextmanager
def _tmpdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cpt-hostile-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=int, default=10_000, help="image-tool mutants")
    ap.add_argument("--restore", type=int, default=10_000, help="restore mutants")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--part", choices=("all", "image", "restore"), default="all")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--keep", help="keep the restore mutants that went wrong in this directory")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    figures: dict[str, Any] = {"seed": args.seed}
    failed = False
    root = os.geteuid() == 0
    with _tmpdir() as tmp:
        # the real dumps are made (under ptrace) only when the run restores too
        real = real_bases(tmp) if root and args.part != "image" else []
        if args.part in ("all", "image"):
            bases = _golden() + real
            t = time.monotonic()
            tally = image_part(bases, args.mutants, rng, tmp)
            keys = ["tried", "refused cleanly", "accepted", "commands", "tracebacks"]
            keys += ["unclear", "hangs", "invalid json"]
            _print(f"image tools ({time.monotonic() - t:.0f} s)", tally, keys)
            figures["image"] = dict(tally.counts)
            failed |= any(tally.counts.get(k) for k in ("tracebacks", "hangs", "invalid json"))
        if args.part in ("all", "restore"):
            if not root:
                print("restore: needs root; skipped")
            else:
                t = time.monotonic()
                keep = Path(args.keep) if args.keep else None
                tally, notes = restore_part(real, args.restore, rng, tmp, keep)
                keys = ["tried", "refused cleanly", "restored", "tracebacks", "unclear"]
                keys += ["hangs", "half-alive", "unkillable"]
                _print(f"restore ({time.monotonic() - t:.0f} s)", tally, keys)
                for n in notes:
                    print(f"  {n}")
                print(f"  refusals ({len(tally.messages)} kinds, most frequent first):")
                for shape, count in tally.messages.most_common(60):
                    print(f"    {count:5}  {tally.example[shape]}")
                figures["restore"] = dict(tally.counts)
                figures["restore_exits"] = {
                    k: v for k, v in tally.kinds.items() if k.startswith("exit")
                }
                figures["restore_unclear"] = list(tally.unclear.values())
                figures["restore_messages"] = [
                    [count, tally.example[shape]] for shape, count in tally.messages.most_common()
                ]
                figures["restore_tracebacks"] = list(tally.tracebacks.values())
                failed |= any(
                    tally.counts.get(k) for k in ("tracebacks", "hangs", "half-alive", "unkillable")
                )
    if args.json:
        with open(args.json, "w") if args.json != "-" else contextlib.nullcontext(sys.stdout) as f:
            json.dump(figures, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
