"""Terminal ioctls (x86_64 numbers): termios2, window size, pty index, lock and packet
mode, pending input, job control.

Ioctls on a pty MASTER that concern line settings (termios, window size, foreground group,
session) act on its slave (the kernel's tty_pair_get_tty), so the engine reads and sets
them through the master without being in the slave's session.
"""

from __future__ import annotations

import os
import struct

from cpt.sys.files import ioctl

TCGETS2 = 0x802C542A
TCSETS2 = 0x402C542B
TIOCEXCL = 0x540C
TIOCSCTTY = 0x540E
TIOCGPGRP = 0x540F
TIOCSPGRP = 0x5410
TIOCSTI = 0x5412
TIOCGWINSZ = 0x5413
TIOCSWINSZ = 0x5414
FIONREAD = 0x541B
TIOCPKT = 0x5420
TIOCNOTTY = 0x5422
TIOCGSID = 0x5429
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
TIOCGPKT = 0x80045438
TIOCGPTLCK = 0x80045439
TIOCGEXCL = 0x80045440
TIOCGPTPEER = 0x5441

TERMIOS2_SIZE = 44  # c_iflag c_oflag c_cflag c_lflag u32, c_line u8, c_cc[19], 2 speeds u32
WINSIZE = struct.Struct("<4H")  # rows, cols, xpixel, ypixel
PTS_MAJORS = range(136, 144)  # UNIX98_PTY_SLAVE_MAJOR .. + UNIX98_PTY_MAJOR_COUNT - 1


def _get_int(fd: int, request: int) -> int:
    buf = bytearray(4)
    ioctl(fd, request, buf)
    return int.from_bytes(buf, "little", signed=True)


def _set_int(fd: int, request: int, value: int) -> None:
    ioctl(fd, request, bytearray(struct.pack("<i", value)))


def pts_index(major: int, minor: int) -> int | None:
    """N of /dev/pts/N for a pty slave device number, None for any other device."""
    if major not in PTS_MAJORS:
        return None
    return (major - PTS_MAJORS.start) * 256 + minor


def get_termios2(fd: int) -> bytes:
    buf = bytearray(TERMIOS2_SIZE)
    ioctl(fd, TCGETS2, buf)
    return bytes(buf)


def set_termios2(fd: int, data: bytes) -> None:
    ioctl(fd, TCSETS2, bytearray(data))


def get_winsize(fd: int) -> tuple[int, int, int, int]:
    buf = bytearray(WINSIZE.size)
    ioctl(fd, TIOCGWINSZ, buf)
    rows, cols, xpix, ypix = WINSIZE.unpack(buf)
    return rows, cols, xpix, ypix


def set_winsize(fd: int, rows: int, cols: int, xpixel: int, ypixel: int) -> None:
    ioctl(fd, TIOCSWINSZ, bytearray(WINSIZE.pack(rows, cols, xpixel, ypixel)))


def get_pgrp(fd: int) -> int:
    """The foreground process group (through a master: of its slave)."""
    return _get_int(fd, TIOCGPGRP)


def pty_index(master: int) -> int:
    return _get_int(master, TIOCGPTN)


def pty_locked(master: int) -> bool:
    return _get_int(master, TIOCGPTLCK) != 0


def set_pty_lock(master: int, locked: bool) -> None:
    _set_int(master, TIOCSPTLCK, int(locked))


def packet_mode(master: int) -> bool:
    return _get_int(master, TIOCGPKT) != 0


def set_packet_mode(master: int, on: bool) -> None:
    _set_int(master, TIOCPKT, int(on))


def exclusive(fd: int) -> bool:
    return _get_int(fd, TIOCGEXCL) != 0


def set_exclusive(fd: int) -> None:
    ioctl(fd, TIOCEXCL, 0)


def pending_input(fd: int) -> int:
    """Bytes a read of this side would return (canonical mode: complete lines only)."""
    return _get_int(fd, FIONREAD)


def push_input(fd: int, data: bytes) -> None:
    """Put bytes back into this side's input queue, as if they had just arrived (TIOCSTI:
    needs CAP_SYS_ADMIN for a terminal that is not the caller's controlling one)."""
    for b in data:
        ioctl(fd, TIOCSTI, bytearray((b,)))


def open_pty_peer(master: int, flags: int) -> int:
    """A new open file of the master's slave (TIOCGPTPEER: no path lookup, never the
    caller's controlling terminal thanks to O_NOCTTY)."""
    return ioctl(master, TIOCGPTPEER, flags | os.O_NOCTTY | os.O_CLOEXEC)


# termios2: c_iflag at 0, c_lflag at 12 (u32 each)
_IFLAGS_TRANSLATE = 0o100 | 0o200 | 0o400 | 0o1000 | 0o40  # INLCR IGNCR ICRNL IUCLC ISTRIP
_ISIG, _ICANON, _ECHO, _ECHONL = 0o1, 0o2, 0o10, 0o100


def _with_flags(termios: bytes, iflag_clear: int, lflag_clear: int) -> bytes:
    i = int.from_bytes(termios[0:4], "little") & ~iflag_clear
    lf = int.from_bytes(termios[12:16], "little") & ~lflag_clear
    return i.to_bytes(4, "little") + termios[4:12] + lf.to_bytes(4, "little") + termios[16:]


def take_slave_input(master: int) -> bytes:
    """The input the master wrote that the slave has not read, whole lines and a partial
    one (the slave switched to non-canonical mode for the read, then back): read, then put
    back as typed (TIOCSTI into the slave with echo, signals and input translation off, so
    they are neither echoed nor acted on twice), so the tree finds it unchanged."""
    saved = get_termios2(master)  # a master's termios ioctls act on its slave
    slave = open_pty_peer(master, os.O_RDWR | os.O_NONBLOCK)
    try:
        set_termios2(master, _with_flags(saved, 0, _ICANON))
        chunks = []
        while (n := pending_input(slave)) > 0:
            b = os.read(slave, n)
            if not b:
                break
            chunks.append(b)
        data = b"".join(chunks)
        put_slave_input(master, slave, saved, data)
        return data
    finally:
        set_termios2(master, saved)
        os.close(slave)


def put_slave_input(master: int, slave: int, termios: bytes, data: bytes) -> None:
    """Queue `data` as the slave's unread input, processed as the line discipline of
    `termios` would (lines) but neither echoed, translated nor turned into signals; the
    termios is `termios` afterwards."""
    if data:
        set_termios2(master, _with_flags(termios, _IFLAGS_TRANSLATE, _ISIG | _ECHO | _ECHONL))
        try:
            push_input(slave, data)
        finally:
            set_termios2(master, termios)
