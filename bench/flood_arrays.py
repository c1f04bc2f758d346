"""A client that floods numd with 64 KiB sends of tiny array requests.

``python bench/flood_arrays.py PORT SECONDS read|hold [arrays|pickles]``: on the counter port
(``arrays``, the default) it registers as client 9999 and each send holds 16,384 ``[1] ``
requests; on the legacy array port (``pickles``) each send holds about 3,600 pickles of
``[1]``. It sends at most 64 such chunks within SECONDS (a send numd does not take within
0.2 s is retried: numd stopped reading, its backpressure), reading every reply (``read``) or
none (``hold``). Prints ``chunks_sent bytes_received``. Traffic goes to 127.0.0.1 only and
stops by itself. Used by ``tests/test_fairness.py`` and the bench's fairness part.
"""

from __future__ import annotations

import pickle
import socket
import sys
import threading
import time

ARRAYS = b"[1] " * 16384
PICKLES = pickle.dumps([1], protocol=2) * (64 * 1024 // len(pickle.dumps([1], protocol=2)))
MAX_CHUNKS = 64


def main() -> None:
    port, seconds, read = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "read"
    pickles = sys.argv[4:] == ["pickles"]
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if not pickles:
        sock.sendall(b"9999 ")
    whole = PICKLES if pickles else ARRAYS
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
    chunk = memoryview(whole)
    sent = offset = 0
    while time.monotonic() < deadline and sent < MAX_CHUNKS:
        try:
            offset += sock.send(chunk[offset:])
        except TimeoutError:
            continue  # numd is not reading us now: its backpressure
        except OSError:
            break
        if offset == len(whole):
            sent, offset = sent + 1, 0
    while time.monotonic() < deadline:
        time.sleep(0.05)
    print(sent, received)
    sock.close()


if __name__ == "__main__":
    main()
