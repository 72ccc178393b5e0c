"""cpt.sys: the ctypes layer (ptrace, memory, pidfds, clone3, namespaces) on real processes."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_proc import Procs, compile_c, proc_state, wait_until

from cpt.errors import NoSuchProcess
from cpt.procfs import open_pagemap
from cpt.sys import files, mem, ptrace, task
from cpt.sys.arch import Regs, to_signed
from cpt.sys.syscalls import NR, syscall_name

PAGE = mmap.PAGESIZE

# Fills `npages` anon pages with a pattern (byte = page index & 0xff, first 8 bytes = index),
# touches pages 3, 10, 11, 40 of a 64-page mapping for writing and READS page 20 (zero page),
# leaves a hole in the middle of a 3-page mapping; prints the three addresses, then pauses.
MEM_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/mman.h>
int main(int argc, char **argv) {
    size_t n = strtoul(argv[1], 0, 0);
    unsigned char *p = mmap(0, n * 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < n; i++) {
        memset(p + i * 4096, i & 0xff, 4096);
        memcpy(p + i * 4096, &i, 8);
    }
    unsigned char *q = mmap(0, 64 * 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
    madvise(q, 64 * 4096, MADV_NOHUGEPAGE);
    q[3 * 4096] = 1; q[10 * 4096 + 5] = 2; q[11 * 4096] = 3; q[40 * 4096 + 4095] = 4;
    volatile unsigned char c = q[20 * 4096]; (void)c;
    unsigned char *r = mmap(0, 3 * 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
    memset(r, 0x5a, 3 * 4096);
    munmap(r + 4096, 4096);
    printf("READY %lx %lx %lx\n", (unsigned long)p, (unsigned long)q, (unsigned long)r);
    fflush(stdout);
    for (;;) pause();
}
"""

# Two seccomp filters: F1 makes getppid fail with EPERM, F2 (newer) allows everything.
# Prints the raw sock_filter bytes of both in hex.
SECCOMP_C = r"""
#include <stdio.h>
#include <stddef.h>
#include <errno.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
static void hex(const void *v, size_t n) {
    const unsigned char *b = v; for (size_t i = 0; i < n; i++) printf("%02x", b[i]);
}
int main(void) {
    struct sock_filter f1[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_filter f2[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
    struct sock_fprog p1 = { 4, f1 }, p2 = { 1, f2 };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &p1)
        || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &p2)) { perror("seccomp"); return 1; }
    long r = syscall(__NR_getppid);
    printf("READY %d ", r == -1 && errno == EPERM);
    hex(f1, sizeof f1); printf(" "); hex(f2, sizeof f2); printf("\n");
    fflush(stdout);
    for (;;) pause();
}
"""

# A glibc program with one extra thread; blocks SIGUSR1 so it stays pending.
THREADS_C = r"""
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
static void *worker(void *a) { (void)a; for (;;) pause(); }
int main(void) {
    sigset_t s; sigemptyset(&s); sigaddset(&s, SIGUSR1); sigprocmask(SIG_BLOCK, &s, 0);
    pthread_t t; pthread_create(&t, 0, worker, 0);
    usleep(10000);
    printf("READY\n"); fflush(stdout);
    for (;;) pause();
}
"""


@pytest.fixture(scope="module")
def helpers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cbin")
    return {
        "mem": compile_c(d, "mem", MEM_C),
        "seccomp": compile_c(d, "seccomp", SECCOMP_C),
        "threads": compile_c(d, "threads", THREADS_C),
    }


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


def _status(pid: int, key: bytes) -> bytes:
    for line in Path(f"/proc/{pid}/status").read_bytes().splitlines():
        if line.startswith(key + b":"):
            return line.split(b":", 1)[1].strip()
    raise KeyError(key)


def _stopped(pid: int, options: int = 0) -> None:
    """Seize + interrupt + wait for PTRACE_EVENT_STOP, with the bare ptrace layer."""
    ptrace.seize(pid, options)
    ptrace.interrupt(pid)
    _, status = ptrace.waitpid(pid, ptrace.WALL)
    assert ptrace.is_event_stop(status), ptrace.describe_status(status)


# ---- pure ---------------------------------------------------------------------------------------


def test_regs_layout_and_roundtrip() -> None:
    raw = struct.pack("<27Q", *range(1, 28))
    r = Regs.from_bytes(raw)
    assert Regs.SIZE == 216 and len(r.to_bytes()) == 216
    assert (Regs.OFFSETS["rax"], Regs.OFFSETS["orig_rax"], Regs.OFFSETS["rip"]) == (80, 120, 128)
    assert (Regs.OFFSETS["eflags"], Regs.OFFSETS["rsp"]) == (144, 152)
    assert (Regs.OFFSETS["fs_base"], Regs.OFFSETS["gs_base"]) == (168, 176)
    assert r.r15 == 1 and r.rax == 11 and r.rip == 17 and r.gs == 27
    assert r.to_bytes() == raw
    c = r.copy()
    c.orig_rax = -1
    assert r.orig_rax == 16 and c.signed("orig_rax") == -1
    assert struct.unpack_from("<Q", c.to_bytes(), 120)[0] == 2**64 - 1
    assert c != r and Regs.from_bytes(c.to_bytes()) == c
    assert to_signed(2**64 - 14) == -14
    with pytest.raises(AttributeError):
        r.foo = 1  # type: ignore[attr-defined]


def test_syscall_table() -> None:
    assert (NR.read, NR.mmap, NR.pause, NR.ptrace, NR.prctl) == (0, 9, 34, 101, 157)
    assert (NR.rseq, NR.pidfd_open, NR.clone3, NR.pidfd_getfd, NR.kcmp) == (334, 434, 435, 438, 312)
    assert (NR.userfaultfd, NR.process_vm_readv, NR.close_range) == (323, 310, 436)
    assert syscall_name(9) == "mmap" and syscall_name(9999) == "syscall_9999"


def test_wait_status_decoding() -> None:
    assert ptrace.is_event_stop((ptrace.PTRACE_EVENT_STOP << 16) | (signal.SIGTRAP << 8) | 0x7F)
    st = (ptrace.PTRACE_EVENT_CLONE << 16) | (signal.SIGTRAP << 8) | 0x7F
    assert ptrace.is_stopped(st) and ptrace.stop_event(st) == ptrace.PTRACE_EVENT_CLONE
    assert ptrace.stop_signal(st) == signal.SIGTRAP and not ptrace.is_event_stop(st)
    assert ptrace.is_exited(3 << 8) and ptrace.exit_code(3 << 8) == 3
    assert ptrace.is_signaled(9) and ptrace.term_signal(9) == 9 and ptrace.is_dead(9)
    assert "SIGKILL" in ptrace.describe_status(9)


# ---- local syscalls -------------------------------------------------------------------------------


def test_tee_peeks_pipe_data_without_consuming() -> None:
    r, w = os.pipe()
    r2, w2 = os.pipe()
    try:
        os.write(w, b"pending data")
        assert files.tee(r, w2, 1 << 16, files.SPLICE_F_NONBLOCK) == 12
        assert os.read(r2, 100) == b"pending data"
        assert os.read(r, 100) == b"pending data"
    finally:
        for fd in (r, w, r2, w2):
            os.close(fd)


def test_ioctl_mutable_buffer_and_memfd() -> None:
    fionread = 0x541B
    r, w = os.pipe()
    try:
        os.write(w, b"12345")
        buf = bytearray(4)
        files.ioctl(r, fionread, buf)
        assert struct.unpack("<i", buf)[0] == 5
        with pytest.raises(OSError) as ei:
            files.ioctl(r, 0x12345678, bytearray(8))
        assert ei.value.errno in (errno.ENOTTY, errno.EINVAL)
    finally:
        os.close(r)
        os.close(w)
    fd = files.memfd_create("cpt-test", files.MFD_CLOEXEC)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:cpt-test")
    finally:
        os.close(fd)


def test_kcmp_pidfd_getfd(procs: Procs) -> None:
    me = os.getpid()
    fd = os.open("/dev/null", os.O_RDONLY)
    dup = os.dup(fd)
    other = os.open("/dev/null", os.O_RDONLY)
    try:
        assert task.kcmp(me, me, task.KCMP_FILE, fd, dup) == 0
        assert task.kcmp(me, me, task.KCMP_FILE, fd, other) != 0
        assert task.kcmp(me, me, task.KCMP_VM) == 0
    finally:
        for f in (fd, dup, other):
            os.close(f)
    # Pull the write end of a pipe out of a child: same open file description.
    r, w = os.pipe()
    p = procs.popen(["sleep", "30"], stdout=w, stdin=subprocess.DEVNULL)
    os.close(w)
    pidfd = task.pidfd_open(p.pid)
    try:
        got = task.pidfd_getfd(pidfd, 1, pid=p.pid)
        try:
            assert task.kcmp(p.pid, me, task.KCMP_FILE, 1, got) == 0
            os.write(got, b"via pidfd_getfd")
            assert os.read(r, 100) == b"via pidfd_getfd"
        finally:
            os.close(got)
        with pytest.raises(OSError) as ei:
            task.pidfd_getfd(pidfd, 999, pid=p.pid)
        assert ei.value.errno == errno.EBADF and str(p.pid) in str(ei.value)
    finally:
        os.close(pidfd)
        os.close(r)


# ---- ptrace on real processes -----------------------------------------------------------------


@pytest.mark.root
def test_seize_interrupt_regsets_detach(procs: Procs) -> None:
    p = procs.popen(["sleep", "30"])
    wait_until(lambda: proc_state(p.pid) == "S", what="sleep to sleep")
    _stopped(p.pid)
    assert proc_state(p.pid) == "t"
    regs = ptrace.getregs(p.pid)
    # Interrupted in clock_nanosleep: the syscall is pending restart.
    assert regs.orig_rax == NR.clock_nanosleep and regs.signed("rax") == -516
    assert len(ptrace.getregset(p.pid, ptrace.NT_PRSTATUS, 4096)) == 216
    fp = ptrace.getregset(p.pid, ptrace.NT_PRFPREG, 4096)
    assert len(fp) == 512
    size = ptrace.xstate_size(p.pid)
    xs = ptrace.getregset(p.pid, ptrace.NT_X86_XSTATE, size)
    assert size > 512 and len(xs) == size and size % 64 == 0
    # Round trips: writing back what was read changes nothing.
    ptrace.setregset(p.pid, ptrace.NT_X86_XSTATE, xs)
    ptrace.setregs(p.pid, regs)
    assert ptrace.getregs(p.pid) == regs
    assert ptrace.getregset(p.pid, ptrace.NT_X86_XSTATE, size) == xs
    mask = ptrace.getsigmask(p.pid)
    want = (1 << (signal.SIGUSR1 - 1)) | (1 << (signal.SIGRTMIN + 1))
    ptrace.setsigmask(p.pid, want)
    assert ptrace.getsigmask(p.pid) == want
    # SIGKILL and SIGSTOP can never be blocked: the kernel drops them silently.
    ptrace.setsigmask(p.pid, (1 << 64) - 1)
    assert ptrace.getsigmask(p.pid) == ((1 << 64) - 1) & ~(1 << 8) & ~(1 << 18)
    ptrace.setsigmask(p.pid, mask)
    ptrace.detach(p.pid)
    wait_until(lambda: proc_state(p.pid) == "S", what="sleep to resume")
    with pytest.raises(OSError) as ei:
        ptrace.getregs(p.pid)  # not our tracee any more
    assert ei.value.errno == errno.ESRCH and str(p.pid) in str(ei.value)


@pytest.mark.root
def test_errors_name_the_pid(procs: Procs) -> None:
    p = procs.popen(["true"])
    p.wait()
    with pytest.raises(NoSuchProcess) as ei:
        ptrace.seize(p.pid)
    assert str(p.pid) in str(ei.value)
    with pytest.raises(NoSuchProcess):
        task.get_robust_list(p.pid)


@pytest.mark.root
def test_rseq_robust_list_sigqueue(procs: Procs, helpers: dict[str, Path]) -> None:
    p, _ = procs.start_ready([str(helpers["threads"])])
    tids = sorted(int(t) for t in os.listdir(f"/proc/{p.pid}/task"))
    assert len(tids) == 2
    os.kill(p.pid, signal.SIGUSR1)  # blocked: stays in the shared queue
    wait_until(
        lambda: int(_status(p.pid, b"ShdPnd"), 16) == 1 << (signal.SIGUSR1 - 1),
        what="SIGUSR1 pending",
    )
    for tid in tids:
        _stopped(tid)
    try:
        for tid in tids:
            ptr, size, sig, flags = ptrace.get_rseq_configuration(tid)
            assert ptr != 0 and size == 32 and sig == 0x53053053 and flags == 0
            head, length = task.get_robust_list(tid)
            assert head != 0 and length == 24
        shared = ptrace.peeksiginfo(p.pid, shared=True)
        assert len(shared) == 1 and len(shared[0]) == 128
        signo, _errno, code = struct.unpack_from("<iii", shared[0])
        assert signo == signal.SIGUSR1 and code == 0  # SI_USER
        assert ptrace.peeksiginfo(p.pid, shared=False) == []
        assert ptrace.peeksiginfo_all(p.pid, shared=True) == shared
    finally:
        for tid in tids:
            ptrace.detach(tid)


@pytest.mark.root
def test_seccomp_filter_readback(procs: Procs, helpers: dict[str, Path]) -> None:
    p, line = procs.start_ready([str(helpers["seccomp"])])
    _, blocked, f1hex, f2hex = line.split()
    assert blocked == b"1"
    _stopped(p.pid)
    try:
        # idx 0 is the OLDEST filter (ENGINE-NOTES said newest; the kernel says otherwise).
        assert ptrace.seccomp_get_filter(p.pid, 0) == bytes.fromhex(f1hex.decode())
        assert ptrace.seccomp_get_filter(p.pid, 1) == bytes.fromhex(f2hex.decode())
        with pytest.raises(OSError) as ei:
            ptrace.seccomp_get_filter(p.pid, 2)
        assert ei.value.errno == errno.ENOENT
        assert len(ptrace.seccomp_get_filters(p.pid)) == 2
        assert ptrace.seccomp_get_metadata(p.pid, 0) == 0
    finally:
        ptrace.detach(p.pid)
    q = procs.popen(["sleep", "30"])
    _stopped(q.pid)
    try:
        assert ptrace.seccomp_get_filters(q.pid) == []
    finally:
        ptrace.detach(q.pid)


# ---- process_vm_readv / writev, PAGEMAP_SCAN on another process --------------------------------


def _pattern(npages: int) -> bytes:
    return b"".join(struct.pack("<Q", i) + bytes([i & 0xFF]) * (PAGE - 8) for i in range(npages))


@pytest.mark.root
def test_process_vm_readv_writev_batches(procs: Procs, helpers: dict[str, Path]) -> None:
    npages = 2600  # per-page ranges: 3 calls of up to 1024 iovecs
    p, line = procs.start_ready([str(helpers["mem"]), str(npages)])
    base = int(line.split()[1], 16)
    expect = _pattern(npages)
    # One range for everything, into a bytearray.
    buf = bytearray(npages * PAGE)
    assert mem.process_vm_readv(p.pid, [(base, npages * PAGE)], buf) == npages * PAGE
    assert buf == expect
    # Per-page ranges in reverse order, into an mmap: 2600 iovecs in 3 batches.
    ranges = [(base + i * PAGE, PAGE) for i in reversed(range(npages))]
    out = mmap.mmap(-1, npages * PAGE)
    try:
        assert mem.process_vm_readv(p.pid, ranges, out) == npages * PAGE
        rev = b"".join(expect[i * PAGE : (i + 1) * PAGE] for i in reversed(range(npages)))
        assert out[:] == rev
    finally:
        out.close()
    # Write a new pattern from read-only bytes through odd-sized ranges, check via /proc/PID/mem.
    new = bytes((i * 13 + 7) & 0xFF for i in range(256)) * (npages * PAGE // 256)
    odd: list[tuple[int, int]] = []
    off = 0
    while off < len(new):
        n = min(3000 + (len(odd) % 5) * 700, len(new) - off)
        odd.append((base + off, n))
        off += n
    assert len(odd) > 1024
    assert mem.process_vm_writev(p.pid, new, odd) == len(new)
    with open(f"/proc/{p.pid}/mem", "rb") as f:
        f.seek(base)
        assert f.read(len(new)) == new
    # A memoryview slice works as a local buffer too.
    mv = memoryview(bytearray(3 * PAGE))[PAGE:]
    assert mem.process_vm_readv(p.pid, [(base + PAGE, 2 * PAGE)], mv) == 2 * PAGE
    assert mv.tobytes() == new[PAGE : 3 * PAGE]


@pytest.mark.root
def test_process_vm_partial_transfer(procs: Procs, helpers: dict[str, Path]) -> None:
    p, line = procs.start_ready([str(helpers["mem"]), "1"])
    hole = int(line.split()[3], 16)  # page 0 and 2 mapped, page 1 not
    buf = bytearray(3 * PAGE)
    with pytest.raises(mem.MemoryFault) as ei:
        mem.process_vm_readv(p.pid, [(hole, 3 * PAGE)], buf)
    assert ei.value.address == hole + PAGE and ei.value.transferred == PAGE
    assert ei.value.errno == errno.EFAULT and str(p.pid) in str(ei.value)
    assert buf[:PAGE] == b"\x5a" * PAGE
    with pytest.raises(mem.MemoryFault) as ei:
        mem.process_vm_readv(p.pid, [(hole + 2 * PAGE, 100), (hole + PAGE, PAGE)], buf)
    assert ei.value.address == hole + PAGE and ei.value.transferred == 100
    # Ranges split over the hole: skip it and both sides arrive.
    assert mem.process_vm_readv(p.pid, [(hole, PAGE), (hole + 2 * PAGE, PAGE)], buf) == 2 * PAGE
    with pytest.raises(ValueError):
        mem.process_vm_readv(p.pid, [(hole, PAGE)], bytearray(10))


@pytest.mark.root
def test_pagemap_scan_touched_pages(procs: Procs, helpers: dict[str, Path]) -> None:
    p, line = procs.start_ready([str(helpers["mem"]), "1"])
    q = int(line.split()[2], 16)
    end = q + 64 * PAGE
    fd = open_pagemap(p.pid)
    try:
        present = mem.pagemap_scan(
            fd,
            q,
            end,
            category_mask=mem.PAGE_IS_PRESENT,
            return_mask=mem.PAGE_IS_PRESENT | mem.PAGE_IS_PFNZERO,
            pid=p.pid,
        )
        pages = {(s - q) // PAGE: c for s, e, c in present for s in range(s, e, PAGE)}
        # Page 20 was only read: present, but it is the shared zero page.
        assert sorted(pages) == [3, 10, 11, 20, 40]
        assert pages[20] == mem.PAGE_IS_PRESENT | mem.PAGE_IS_PFNZERO
        # The dump's selection: anonymous (not file), not the zero page, present or swapped.
        sel = mem.PAGE_IS_FILE | mem.PAGE_IS_PFNZERO
        dump = mem.pagemap_scan(
            fd,
            q,
            end,
            category_mask=sel,
            category_inverted=sel,
            category_anyof_mask=mem.PAGE_IS_PRESENT | mem.PAGE_IS_SWAPPED,
            return_mask=mem.PAGE_IS_PRESENT,
        )
        assert [((s - q) // PAGE, (e - q) // PAGE) for s, e, _ in dump] == [
            (3, 4),
            (10, 12),
            (40, 41),
        ]
        capped = mem.pagemap_scan(
            fd,
            q,
            end,
            category_mask=sel,
            category_inverted=sel,
            return_mask=mem.PAGE_IS_PRESENT,
            max_pages=2,
        )
        assert sum((e - s) // PAGE for s, e, _ in capped) == 2
    finally:
        os.close(fd)


def test_populate_write_faults_a_shared_file_mapping_in(tmp_path: Path) -> None:
    """MADV_POPULATE_WRITE from two threads: every page of the mapping is present (in the
    page cache behind it) afterwards, none before, and the file still reads as zeros."""
    npages = 64
    with open(tmp_path / "area", "w+b") as f:
        os.ftruncate(f.fileno(), npages * PAGE)
        m = mmap.mmap(f.fileno(), npages * PAGE, flags=mmap.MAP_SHARED)
        anchor = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(anchor)
        del anchor
        fd = open_pagemap("self")
        try:

            def present() -> int:
                got = mem.pagemap_scan(
                    fd,
                    addr,
                    addr + npages * PAGE,
                    category_mask=mem.PAGE_IS_PRESENT,
                    return_mask=mem.PAGE_IS_PRESENT,
                )
                return sum((e - s) // PAGE for s, e, _ in got)

            assert present() == 0
            mem.populate_write(m, threads=2)
            assert present() == npages
        finally:
            os.close(fd)
            m.close()
        assert os.pread(f.fileno(), npages * PAGE, 0) == bytes(npages * PAGE)


# ---- namespaces (in a child process: never in the test process itself) ---------------------------


@pytest.mark.root
@pytest.mark.destructive
def test_ns_wrappers_in_child(tmp_path: Path) -> None:
    code = f"""
import os
from cpt.sys import ns
ns.unshare(ns.CLONE_NEWNS | ns.CLONE_NEWUTS)
ns.mount(None, "/", None, ns.MS_REC | ns.MS_PRIVATE)
root = {str(tmp_path)!r} + "/root"
os.makedirs(root)
ns.mount("tmpfs", root, "tmpfs", 0, "size=1m")
os.makedirs(root + "/old")
os.chdir(root)
ns.pivot_root(".", "old")
os.chdir("/")
assert os.path.isdir("/old/proc")
ns.umount2("/old", ns.MNT_DETACH)
assert not os.path.exists("/old/proc")
fd = os.open("/old", os.O_RDONLY)
os.close(fd)
print("PASS")
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.strip() == b"PASS"
    # setns into our own uts namespace: harmless, proves the wrapper.
    from cpt.sys import ns

    fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
    try:
        ns.setns(fd, ns.CLONE_NEWUTS)
    finally:
        os.close(fd)


@pytest.mark.root
def test_suspend_seccomp_for_injection(procs: Procs, helpers: dict[str, Path]) -> None:
    from cpt.trace.tracee import Tracee

    p, _ = procs.start_ready([str(helpers["seccomp"])])
    # Without PTRACE_O_SUSPEND_SECCOMP the target's filter applies to injected calls too.
    t = Tracee.attach(p.pid, options=0)
    try:
        assert t.syscall(NR.getppid) == -errno.EPERM
    finally:
        t.detach()
    t = Tracee.attach(p.pid)  # DEFAULT_OPTIONS include PTRACE_O_SUSPEND_SECCOMP
    try:
        assert t.syscall(NR.getppid) == os.getpid()
    finally:
        t.detach()
    assert proc_state(p.pid) == "S" or proc_state(p.pid) == "R"
