"""Per-message cost of numd's counter protocol and of the baseline, in process, no sockets.

Both protocols get the same reads through a `StringTransport` (so no kernel, no
reactor, no other process is measured): a registration, then reads of W tokens
(``even``/``odd`` alternating, or reports). numd is built by its own
``makeService`` on a `MemoryReactorClock`, with its message log on a temporary
file, and again with ``--no-message-log``, so the log's share of the per-message
cost shows. Prints JSON: microseconds per token.

``python bench/microbench.py`` (the bench venv has numd installed).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def per_token(
    proto: Any, transport: StringTransport, data: bytes, tokens: int, seconds: float = 1.0
) -> float:
    """Microseconds per token: feed `data` (holding `tokens` tokens) until `seconds` pass."""
    feed = proto.dataReceived
    clear = transport.clear
    best = float("inf")
    for _ in range(3):
        n = 0
        gc.collect()
        start = time.perf_counter()
        while True:
            for _ in range(50):
                feed(data)
                clear()
            n += 50
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / 3:
                break
        best = min(best, elapsed / (n * tokens) * 1e6)
    return best


def connect(factory: Any, port: int) -> tuple[Any, StringTransport]:
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
    proto.makeConnection(transport)
    return proto, transport


def numd_factory(log_path: str, extra: list[str]) -> tuple[Any, Any]:
    from numd.tap import Options, makeService

    options = Options()
    options.parseOptions(
        ["--listen", "tcp:0:interface=127.0.0.1", "--message-log", log_path, *extra]
    )
    reactor = MemoryReactorClock()
    daemon = makeService(options, reactor=reactor)
    daemon.startService()
    return daemon, daemon.counter_factory


def baseline_factory() -> Any:
    import random

    from baseline_server import Baseline
    from sortedcontainers import SortedList
    from twisted.internet.protocol import Factory

    factory = Factory.forProtocol(Baseline)
    factory.rng = random.Random()
    factory.values = SortedList()
    return factory


def main() -> None:
    workloads: dict[str, tuple[bytes, int]] = {
        "requests, 64 per read": (b"even odd " * 32, 64),
        "requests, 1 per read": (b"even ", 1),
        "reports, 1 per read": (b"1234 ", 1),
    }
    out: dict[str, Any] = {"unit": "microseconds per token", "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        servers: dict[str, Callable[[], tuple[Any, Any]]] = {}

        def baseline() -> tuple[Any, Any]:
            return None, baseline_factory()

        servers["baseline"] = baseline
        extra = ["--db", ":memory:"] if "--db" in _numd_help() else []
        servers["numd (log on)"] = lambda: numd_factory(os.path.join(tmp, "m.log"), extra)

        servers["numd (--no-message-log)"] = lambda: numd_factory(
            os.path.join(tmp, "m2.log"), [*extra, "--no-message-log"]
        )

        def numd_bare() -> tuple[Any, Any]:
            daemon, factory = numd_factory(
                os.path.join(tmp, "m3.log"), [*extra, "--no-message-log"]
            )
            factory.service._observers.clear()
            return daemon, factory

        servers["numd (log off, no state observers)"] = numd_bare
        for name, make in servers.items():
            row = {}
            for port, (label, (data, tokens)) in enumerate(workloads.items(), start=40000):
                try:
                    daemon, factory = make()
                    proto, transport = connect(factory, port)
                    proto.dataReceived(b"%d " % (port - 40000 + 1))
                    transport.clear()
                    row[label] = round(per_token(proto, transport, data, tokens), 3)
                    if daemon is not None:
                        daemon.stopService()
                except Exception as e:  # noqa: BLE001 - report, never crash the bench
                    row[label] = f"failed: {e!r}"[:200]
            out["results"][name] = row
    print(json.dumps(out, indent=1))


def _numd_help() -> str:
    from numd.tap import Options

    return " ".join("--" + str(p[0]) for p in Options.optParameters)


if __name__ == "__main__":
    main()
