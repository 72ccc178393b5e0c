"""What a saved workload depends on in its host: kernel, vDSO, CPU features.

The dump records these in the image header; verify-before-restore (cpt/host/verify.py)
compares them with the restoring host and refuses a mismatch with the feature or value
that differs.
"""

from __future__ import annotations

import functools
import os
import struct

import xxhash

from cpt import procfs

# cpuid flags (as /proc/cpuinfo names them) whose absence can make restored code fault:
# glibc and compilers pick implementations by them at start-up (ifuncs), and the saved
# register file holds state of the vector extensions.
ISA_FLAGS = frozenset(
    [
        "sse",
        "sse2",
        "pni",
        "ssse3",
        "sse4_1",
        "sse4_2",
        "sse4a",
        "popcnt",
        "abm",
        "lzcnt",
        "movbe",
        "cx16",
        "cx8",
        "fxsr",
        "avx",
        "avx2",
        "fma",
        "fma4",
        "f16c",
        "bmi1",
        "bmi2",
        "adx",
        "aes",
        "pclmulqdq",
        "sha_ni",
        "rdrand",
        "rdseed",
        "xsave",
        "xsaveopt",
        "xsavec",
        "xsaves",
        "erms",
        "fsrm",
        "clflushopt",
        "clwb",
        "avx512f",
        "avx512dq",
        "avx512cd",
        "avx512bw",
        "avx512vl",
        "avx512ifma",
        "avx512vbmi",
        "avx512_vbmi2",
        "avx512_vnni",
        "avx512_bitalg",
        "avx512_vpopcntdq",
        "avx512_bf16",
        "avx512_fp16",
        "avx_vnni",
        "vaes",
        "vpclmulqdq",
        "gfni",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
        "pku",
        "ospke",
    ]
)

# In an NT_X86_XSTATE regset the kernel stores XCR0 in the first u64 of the fxsave area's
# software-reserved bytes (USER_XSTATE_XCR0_WORD; signal frames use another layout there).
_XFEATURES_OFF = 464


@functools.cache
def cpu_flags() -> frozenset[str]:
    return procfs.cpu_flags()


def isa_flags() -> list[str]:
    """The ISA flags of this CPU that an image records as dependencies."""
    return sorted(cpu_flags() & ISA_FLAGS)


def xfeatures_of(xstate: bytes) -> int:
    """The XSAVE feature mask (XCR0 as the kernel exposes it) from an NT_X86_XSTATE blob."""
    if len(xstate) < _XFEATURES_OFF + 8:
        return 0
    return int(struct.unpack_from("<Q", xstate, _XFEATURES_OFF)[0])


def kernel() -> tuple[str, str, str]:
    u = os.uname()
    return u.machine, u.release, u.version


@functools.cache
def vdso_bytes() -> bytes:
    """This process's vDSO text: the same bytes every process on this kernel maps."""
    for vma in procfs.Proc().maps(os.getpid()):
        if vma.path == "[vdso]":
            return procfs.read_mem("self", vma.start, vma.end - vma.start)
    return b""


def vdso_digest(data: bytes | None = None) -> int:
    return xxhash.xxh3_64_intdigest(vdso_bytes() if data is None else data)
