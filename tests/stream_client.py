"""A TCP client that streams numbered records to an echo server and checks every byte
comes back in order, until STOP exists; writes its verdict (JSON) to OUT.

    python stream_client.py ADDR PORT STOP OUT

The verdict: records sent and echoed, the longest pause between two echoes (seconds),
and the first error (a reset, a byte lost or reordered), if any."""

import json
import os
import socket
import sys
import threading
import time

REC = 64


def main() -> None:
    addr, port, stop, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    s = socket.create_connection((addr, port), timeout=10)
    s.settimeout(60)
    state = {"sent": 0, "echoed": 0, "max_gap_s": 0.0, "error": ""}
    done = threading.Event()

    def reader() -> None:
        buf = b""
        last = time.monotonic()
        try:
            while not done.is_set() or state["echoed"] < state["sent"]:
                data = s.recv(65536)
                if not data:
                    state["error"] = "the server closed the connection"
                    return
                now = time.monotonic()
                state["max_gap_s"] = max(state["max_gap_s"], now - last)
                last = now
                buf += data
                while len(buf) >= REC:
                    rec, buf = buf[:REC], buf[REC:]
                    want = f"{state['echoed']:016d}".encode().ljust(REC, b".")
                    if rec != want:
                        state["error"] = f"record {state['echoed']}: got {rec[:20]!r}"
                        return
                    state["echoed"] += 1
        except OSError as e:
            state["error"] = f"{type(e).__name__}: {e}"

    t = threading.Thread(target=reader)
    t.start()
    try:
        while not os.path.exists(stop) and not state["error"]:
            s.sendall(f"{state['sent']:016d}".encode().ljust(REC, b"."))
            state["sent"] += 1
            time.sleep(0.005)
    except OSError as e:
        state["error"] = state["error"] or f"{type(e).__name__}: {e}"
    done.set()
    t.join(60)
    with open(out + ".tmp", "w") as f:
        json.dump(state, f)
    os.rename(out + ".tmp", out)


main()
