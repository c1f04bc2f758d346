"""A client that floods a counter port with 64 KiB sends of ``[1] `` (16,384 array requests each).

``python bench/flood_arrays.py PORT SECONDS read|hold``: registers as client 9999, then sends at
most 64 such chunks within SECONDS (a send numd does not take within 0.2 s is retried: numd
stopped reading: its backpressure), reading every reply (``read``) or none (``hold``). Prints
``chunks_sent bytes_received``. Traffic goes to 127.0.0.1 only and stops by itself.
Used by ``tests/test_fairness.py`` and the bench's fairness part.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

CHUNK = b"[1] " * 16384
MAX_CHUNKS = 64


def main() -> None:
    port, seconds, read = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "read"
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"9999 ")
    deadline = time.monotonic() + seconds
    received = 0

    def reader() -> None:
        nonlocal received
        while time.monotonic() < deadline:
            try:
                data = sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            received += len(data)

    if read:
        threading.Thread(target=reader, daemon=True).start()
    sock.settimeout(0.2)
    chunk = memoryview(CHUNK)
    sent = offset = 0
    while time.monotonic() < deadline and sent < MAX_CHUNKS:
        try:
            offset += sock.send(chunk[offset:])
        except TimeoutError:
            continue  # numd is not reading us now: its backpressure
        except OSError:
            break
        if offset == len(CHUNK):
            sent, offset = sent + 1, 0
    while time.monotonic() < deadline:
        time.sleep(0.05)
    print(sent, received)
    sock.close()


if __name__ == "__main__":
    main()
