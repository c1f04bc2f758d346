"""A real numd under a flooding client: the others are still answered promptly and numd's
memory stays bounded (a `twistd -n numd` subprocess, clients on 127.0.0.1 sockets)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .daemon import free_port, recv_tokens, running_numd

pytestmark = pytest.mark.timeout(90)

FLOODER = Path(__file__).resolve().parent.parent / "bench" / "flood_arrays.py"
"""The flooding client (shared with the bench's fairness part)."""


def rss_bytes(pid: int) -> int:
    """The resident memory of process `pid`."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def fill_list(api_port: int, count: int = 10_000) -> None:
    """Put `count` large values in the shared list through the API (replies hit the 64 KiB cap)."""
    for start in range(0, count, 1000):
        body = json.dumps(list(range(10**12 + start, 10**12 + start + 1000))).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{api_port}/api/v1/values",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read RSS")
@pytest.mark.parametrize("kind", ["arrays", "pickles"])
@pytest.mark.parametrize("reads", [True, False], ids=["flooder-reads", "flooder-never-reads"])
def test_a_flood_neither_starves_others_nor_grows_memory(
    tmp_path: Path, kind: str, reads: bool
) -> None:
    """While one connection sends 64 KiB reads of `[1] ` (counter port) or of pickles of `[1]`
    (legacy array port) against a list of 10,000 values (every counter reply at the 64 KiB
    cap), another client's requests are answered within 50 ms at p99 and numd's RSS grows by
    less than 100 MB."""
    legacy = free_port()
    with running_numd(
        tmp_path, "--seed", "3", "--legacy-array-listen", f"tcp:{legacy}:interface=127.0.0.1"
    ) as numd:
        fill_list(numd.api_port)
        with numd.connect() as polite:
            polite.sendall(b"1 ")
            assert recv_tokens(polite, 1) == [b"0"]
            for _ in range(20):  # warm up
                polite.sendall(b"even ")
                recv_tokens(polite, 1)
            before = rss_bytes(numd.process.pid)
            target = legacy if kind == "pickles" else numd.port
            flooder = subprocess.Popen(
                [sys.executable, str(FLOODER), str(target), "4", "read" if reads else "hold", kind],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                time.sleep(0.3)
                latencies, peak = [], before
                for _ in range(250):
                    started = time.perf_counter()
                    polite.sendall(b"even ")
                    (reply,) = recv_tokens(polite, 1)
                    latencies.append(time.perf_counter() - started)
                    assert int(reply) % 2 == 0
                    peak = max(peak, rss_bytes(numd.process.pid))
                    time.sleep(0.01)
                out, _ = flooder.communicate(timeout=30)
            finally:
                if flooder.poll() is None:
                    flooder.kill()
                    flooder.wait(10)
            sent, received = map(int, out.split())
            assert sent > 0
            if reads:
                assert received > 10 * 64 * 1024  # the flood was really served meanwhile
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        assert p99 < 0.050, f"p99 {p99 * 1000:.1f} ms"
        assert peak - before < 100 * 1024 * 1024, f"RSS grew by {(peak - before) >> 20} MiB"
        assert numd.stop(signal.SIGTERM) == 0
    assert "Traceback" not in numd.output.read_text()
