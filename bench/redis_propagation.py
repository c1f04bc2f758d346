"""How soon a value merged on one numd instance shows on another's API, both on one Redis.

Usage: ``python bench/redis_propagation.py [--merges 200] [--pace 0.01] [--appendfsync always]
[--json]``

Starts one redis-server (``appendonly yes`` with the given fsync policy) and two
``twistd -n numd --db redis://...`` instances, A and B, on 127.0.0.1, as
tests/test_redis_e2e.py does. Then, `--merges` times, alternately from A to B and
from B to A: send a one-value array (a new value each time) on a counter
connection to one instance, wait for its reply (the acknowledgement: Redis applied
it and that instance's copy holds it), and poll the other instance's
``GET /api/v1/values?min=V&max=V`` on a kept-alive HTTP connection until the value
is there. Three figures per merge:

- **after the reply**: from the acknowledgement to the first page on the other
  instance that shows the value (what a second client sees after the first was told);
- **after the send**: from sending the array to that page;
- **reply**: from sending the array to its reply (what an acknowledgement costs).

A poll takes a fraction of a millisecond (its median is printed), so each figure is
late by at most one poll. Nothing is pinned to a core: the two instances, Redis and
this script share the machine. Prints a Markdown section (or JSON with ``--json``)
with the machine's facts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.daemon import Daemon, recv_tokens  # noqa: E402
from tests.redis_server import REDIS_SERVER, RedisServer  # noqa: E402
from tests.shared_numd import shared_instances  # noqa: E402

POLL_TIMEOUT = 5.0
"""Seconds a value may take to show on the other instance before the run fails."""


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def seen_after(api: http.client.HTTPConnection, value: int, polls: list[float]) -> float:
    """Poll the instance behind `api` until `value` is in its list; the time it first was."""
    deadline = time.perf_counter() + POLL_TIMEOUT
    while True:
        started = time.perf_counter()
        api.request("GET", f"/api/v1/values?min={value}&max={value}&limit=1")
        page = json.loads(api.getresponse().read())
        now = time.perf_counter()
        polls.append(now - started)
        if page["matched"]:
            return now
        if now > deadline:
            raise RuntimeError(f"{value} not on the other instance within {POLL_TIMEOUT} s")


def measure(a: Daemon, b: Daemon, merges: int, pace: float) -> dict[str, Any]:
    """Merge `merges` values, alternately on A and on B; time each to the other's API."""
    counters = [a.connect(), b.connect()]
    apis = [http.client.HTTPConnection("127.0.0.1", d.api_port, timeout=5) for d in (a, b)]
    after_reply: list[float] = []
    after_send: list[float] = []
    replies: list[float] = []
    polls: list[float] = []
    first_poll = 0
    try:
        for i in range(merges):
            here, there = i % 2, 1 - i % 2  # A to B, then B to A
            value = 2**62 + i
            sock = counters[here]
            sent = time.perf_counter()
            sock.sendall(b"[%d] " % value)
            (reply,) = recv_tokens(sock, 1)
            acknowledged = time.perf_counter()
            if not reply.startswith(b"["):
                raise RuntimeError(f"merge {i} answered {reply!r}")
            before = len(polls)
            seen = seen_after(apis[there], value, polls)
            first_poll += len(polls) == before + 1
            after_reply.append(seen - acknowledged)
            after_send.append(seen - sent)
            replies.append(acknowledged - sent)
            time.sleep(pace)
    finally:
        for sock in counters:
            sock.close()
        for api in apis:
            api.close()

    def figures(seconds: list[float]) -> dict[str, float]:
        return {
            "p50_ms": percentile(seconds, 0.50) * 1000,
            "p90_ms": percentile(seconds, 0.90) * 1000,
            "p99_ms": percentile(seconds, 0.99) * 1000,
            "max_ms": max(seconds) * 1000,
        }

    return {
        "merges": merges,
        "after_reply": figures(after_reply),
        "after_send": figures(after_send),
        "reply": figures(replies),
        "poll_median_ms": statistics.median(polls) * 1000,
        "polls": len(polls),
        "seen_at_first_poll": first_poll,
    }


def machine() -> dict[str, str]:
    """The facts a reader needs to compare figures: CPU, cores, versions, commit."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def output(*command: str) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, cwd=REPO).stdout.strip()
        except OSError:
            return "unknown"

    import twisted

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "redis": output(REDIS_SERVER, "--version").split(" sha=")[0],
        "commit": output("git", "rev-parse", "--short", "HEAD"),
    }


def markdown(result: dict[str, Any], facts: dict[str, str], appendfsync: str) -> str:
    """The result as a Markdown table, with the machine's facts."""
    quantiles = ("p50_ms", "p90_ms", "p99_ms", "max_ms")
    labels = {
        "after_reply": "from one instance's reply to the other's page",
        "after_send": "from sending the array to the other's page",
        "reply": "from sending the array to its reply (the acknowledgement)",
    }
    rows = [
        f"| {label} | " + " | ".join(f"{result[key][q]:.2f}" for q in quantiles) + " |"
        for key, label in labels.items()
    ]
    return "\n".join(
        [
            f"{result['merges']} merges, alternately A to B and B to A, Redis `appendfsync "
            f"{appendfsync}`; a poll of the other instance took {result['poll_median_ms']:.2f} ms "
            f"(median of {result['polls']}); {result['seen_at_first_poll']} of {result['merges']} "
            "values were there at the first poll after the reply.",
            "",
            "| ms | p50 | p90 | p99 | max |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            "Machine: "
            + ", ".join(f"{k} {v}" for k, v in facts.items())
            + ". Nothing pinned: both instances, Redis and the script share the cores.",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merges", type=int, default=200)
    parser.add_argument("--pace", type=float, default=0.01, help="seconds between merges")
    parser.add_argument("--appendfsync", choices=("always", "everysec"), default="always")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not os.access(REDIS_SERVER, os.X_OK):
        print(f"{REDIS_SERVER} not found (Debian package redis-server)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="numd-propagation-") as tmp:
        directory = Path(tmp)
        redis = RedisServer(directory / "redis", appendfsync=args.appendfsync).start()
        try:
            with shared_instances(directory, redis) as (a, b):
                result = measure(a, b, args.merges, args.pace)
        finally:
            redis.stop()
    facts = machine()
    if args.json:
        print(json.dumps({**result, "machine": facts, "appendfsync": args.appendfsync}))
    else:
        print(markdown(result, facts, args.appendfsync))
    return 0


if __name__ == "__main__":
    sys.exit(main())
