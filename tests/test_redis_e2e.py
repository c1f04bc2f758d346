"""numd on Redis end to end: two real ``twistd -n numd --db redis://...`` instances, A and B,
on one real redis-server (its append-only file fsynced on every write), and clients on
blocking 127.0.0.1 sockets.

Nothing is mocked: these are the promises of docs/scaling.md, checked the way an operator
would see them. Every socket has a timeout, every wait a deadline, and the fixtures kill
every process they started, also when a test fails. Without Debian's redis-server every
test here skips, saying so.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from numd.store.redis.connection import DEFAULT_TIMEOUT as COMMAND_TIMEOUT

from .daemon import TWISTD, Daemon, free_port, recv_tokens, running_numd, subprocess_env
from .redis_server import RedisServer, skip_without_redis
from .shared_numd import (
    all_values,
    client_number,
    http_json,
    readyz,
    redis_url,
    refused_and_closed,
    register,
    shared_instances,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

LEASE = 2.0
"""``--lease-time`` of these tests: short, so that a dead instance's IDs come free quickly."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EXTREMES = [
    INT64_MIN,
    INT64_MIN + 1,
    -(2**53) - 1,
    -1,
    0,
    2**53,
    2**53 + 1,
    INT64_MAX - 1,
    INT64_MAX,
]
"""Values where a double, a Lua number or a sign would go wrong."""
OUTAGE = COMMAND_TIMEOUT + 1.0
"""How long Redis stays down under load: longer than a request in flight when it stopped
may wait, so that every client asks at least once while it is down."""
PROPAGATION_BOUND = 2.0
"""A generous bound on a change reaching the other instance (bench/redis_propagation.py
measures the real figure: docs/scaling.md)."""


def array(values: list[int]) -> bytes:
    """The counter protocol's array token for `values`, with its delimiter."""
    return b"[" + b",".join(b"%d" % v for v in values) + b"] "


def test_a_client_resumes_on_b_after_a_is_killed_once_the_lease_runs_out(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A client registered on A reports; A dies (SIGKILL). Until A's lease runs out B refuses
    the ID (``error:id-in-use``); within the lease time B accepts it with the last number the
    client reported on A, and serves it."""
    with shared_instances(tmp_path, redis_server, "--lease-time", str(LEASE)) as (a, b):
        sock, start = register(a, 4242)
        with sock:
            assert start == b"0"
            for number in range(1, 31):
                sock.sendall(b"%d " % number)
                time.sleep(0.01)
            # The reports reached Redis (B's copy shows them): what a SIGKILL cannot take back.
            wait_until(lambda: client_number(b.api_port, 4242) == 30, PROPAGATION_BOUND)
            a.stop(signal.SIGKILL)
            killed = time.monotonic()
        refused, reply = register(b, 4242)
        with refused:
            assert reply == b"error:id-in-use"
            assert refused_and_closed(refused)
        assert time.monotonic() - killed < LEASE / 2  # the refusal came well within the lease

        def resumed() -> socket.socket | None:
            sock, reply = register(b, 4242)
            if reply == b"error:id-in-use":
                sock.close()
                return None
            assert reply == b"30", reply
            return sock

        took = wait_until(resumed, LEASE + 2, interval=0.05)
        assert time.monotonic() - killed <= LEASE + 1.0, took


def test_a_clean_stop_of_a_frees_its_ids_at_once(tmp_path: Path, redis_server: RedisServer) -> None:
    """A stopped with SIGTERM frees its clients' IDs as it stops: B's very first answer to the
    ID is its last reported number, with no wait for the (long) lease."""
    with shared_instances(tmp_path, redis_server, "--lease-time", "30") as (a, b):
        sock, start = register(a, 17)
        with sock:
            assert start == b"0"
            sock.sendall(b"5 6 7 ")
            wait_until(lambda: client_number(b.api_port, 17) == 7, PROPAGATION_BOUND)
            assert a.stop(signal.SIGTERM) == 0
            assert refused_and_closed(sock)
        stopped = time.monotonic()
        resumed, reply = register(b, 17)
        with resumed:
            assert reply == b"7"
            assert time.monotonic() - stopped < 1.0
            resumed.sendall(b"odd ")
            assert int(recv_tokens(resumed, 1)[0]) % 2 == 1
        assert "Traceback" not in a.output.read_text()


def test_a_live_talking_id_is_in_use_on_the_other_instance(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """An ID live and talking on one instance is refused on the other (``error:id-in-use``,
    connection closed) for longer than the lease time, both ways; the holders keep working."""
    with shared_instances(tmp_path, redis_server, "--lease-time", str(LEASE)) as (a, b):
        on_a, start_a = register(a, 501)
        on_b, start_b = register(b, 502)
        with on_a, on_b:
            assert (start_a, start_b) == (b"0", b"0")
            number = 0
            ends = time.monotonic() + LEASE * 1.5  # the leases are renewed at least once
            while time.monotonic() < ends:
                number += 1
                on_a.sendall(b"%d " % number)
                on_b.sendall(b"%d " % number)
                for daemon, client_id in ((b, 501), (a, 502)):
                    other, reply = register(daemon, client_id)
                    with other:
                        assert reply == b"error:id-in-use", (daemon.port, client_id, number)
                        assert refused_and_closed(other)
                time.sleep(0.2)
            on_a.sendall(b"even ")
            on_b.sendall(b"odd ")
            assert int(recv_tokens(on_a, 1)[0]) % 2 == 0
            assert int(recv_tokens(on_b, 1)[0]) % 2 == 1


def test_arrays_merged_through_both_instances_give_the_union_on_both(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Arrays (duplicates, 64-bit extremes) merged through three connections on each of A and
    B, interleaved, some two in one write: every reply is the whole list of what was merged
    so far (on either instance), and both instances' pages hold exactly the union."""
    rng = random.Random(15)
    with shared_instances(tmp_path, redis_server) as (a, b):
        connections = [(d, d.connect()) for d in (a, b, a, b, a, b)]
        merged: Counter[int] = Counter()
        try:
            for step in range(48):
                _, sock = connections[step % len(connections)]
                first = [rng.choice(EXTREMES), rng.randint(-(10**6), 10**6), rng.choice(EXTREMES)]
                first.append(first[1])  # a duplicate inside the array
                before = merged.copy()
                if step % 5 == 4:  # two arrays in one write
                    second = [rng.choice(EXTREMES), rng.randint(0, 9)]
                    sock.sendall(array(first) + array(second))
                    replies = recv_tokens(sock, 2)
                    merged.update(first + second)
                    shown = Counter(json.loads(replies[0]))
                    assert before + Counter(first) <= shown <= merged, step
                    assert json.loads(replies[1]) == sorted(merged.elements()), step
                else:
                    sock.sendall(array(first))
                    merged.update(first)
                    (reply,) = recv_tokens(sock, 1)
                    assert json.loads(reply) == sorted(merged.elements()), step
        finally:
            for _, sock in connections:
                sock.close()
        union = sorted(merged.elements())
        wait_until(
            lambda: http_json(b.api_port, "/api/v1/values?limit=0")[1]["size"] == len(union),
            PROPAGATION_BOUND,
        )
        assert all_values(a.api_port, limit=7) == union
        assert all_values(b.api_port, limit=7) == union
        for value in (INT64_MIN, 2**53, 2**53 + 1, INT64_MAX):  # exact, not rounded to a double
            for daemon in (a, b):
                query = f"/api/v1/values?min={value}&max={value}&limit=1000"
                status, page = http_json(daemon.api_port, query)
                assert (status, page["values"]) == (200, [value] * merged[value])


def test_a_change_on_one_instance_is_on_its_next_page_and_soon_on_the_other(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A value merged on one instance is on that instance's very next page, and on the other
    instance's pages within the bound docs/scaling.md gives (both ways)."""
    with shared_instances(tmp_path, redis_server) as (a, b):
        for here, there in ((a, b), (b, a)):
            with here.connect() as sock:
                for i in range(10):
                    value = 2**62 + here.port * 100 + i
                    sock.sendall(array([value]))
                    assert recv_tokens(sock, 1)[0].startswith(b"[")
                    query = f"/api/v1/values?min={value}&max={value}"
                    assert http_json(here.api_port, query)[1]["values"] == [value]
                    wait_until(
                        lambda q=query, port=there.api_port: http_json(port, q)[1]["matched"] == 1,
                        PROPAGATION_BOUND,
                        interval=0.005,
                    )


class Merger(threading.Thread):
    """A counter client that merges one new value per array, paced, until told to stop; it
    reconnects when the connection closes, and records what each reply said and when."""

    PACE = 0.01
    """Seconds between a reply and the next array."""
    REPLY_TIMEOUT = 5.0
    """The socket's timeout: a reply later than this is a hang."""

    def __init__(self, daemon: Daemon, first_value: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.target = daemon
        self.next_value = first_value
        self.stop = stop
        self.sent: list[int] = []
        self.acknowledged: list[tuple[int, float]] = []
        """Values whose array reply came, with the time it came."""
        self.unavailable: list[float] = []
        """When ``error:unavailable`` came."""
        self.other: list[bytes] = []
        self.slowest = 0.0
        self.failure: BaseException | None = None

    def run(self) -> None:
        """Merge until stopped; a timeout or an unexpected error ends the thread as `failure`."""
        sock: socket.socket | None = None
        try:
            while not self.stop.is_set():
                if sock is None:
                    sock = self.target.connect(self.REPLY_TIMEOUT)
                value, self.next_value = self.next_value, self.next_value + 1
                sent_at = time.monotonic()
                self.sent.append(value)
                sock.sendall(array([value]))
                (reply,) = recv_tokens(sock, 1)
                now = time.monotonic()
                self.slowest = max(self.slowest, now - sent_at)
                if reply.startswith(b"["):
                    self.acknowledged.append((value, now))
                elif reply == b"error:unavailable":
                    self.unavailable.append(now)
                elif reply == b"":  # closed: try again on a new connection
                    sock.close()
                    sock = None
                else:
                    self.other.append(reply)
                self.stop.wait(self.PACE)
        except BaseException as e:  # reported by the test
            self.failure = e
        finally:
            if sock is not None:
                sock.close()


@pytest.mark.parametrize(
    "stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"]
)
def test_redis_restarted_under_load_keeps_every_acknowledged_value(
    tmp_path: Path, redis_server: RedisServer, stop_signal: signal.Signals
) -> None:
    """Clients keep merging through A and B while Redis (``appendfsync always``) is stopped
    (SIGTERM, or killed with SIGKILL) and restarted on its port and directory: meanwhile
    they get ``error:unavailable`` at once, never a hang; both instances serve again without
    a restart; afterwards every acknowledged value is in the list on both instances, and
    no value is there twice."""
    with shared_instances(tmp_path, redis_server, "--reply-cap", "256") as (a, b):
        stop = threading.Event()
        mergers = [Merger(d, 2**62 + k * 10**6, stop) for k, d in enumerate((a, b, a, b))]
        for merger in mergers:
            merger.start()
        try:
            time.sleep(0.7)
            redis_server.kill() if stop_signal == signal.SIGKILL else redis_server.stop()
            down = time.monotonic()
            time.sleep(OUTAGE)
            redis_server.start()
            up = time.monotonic()
            for daemon in (a, b):
                assert readyz(daemon.api_port)[0] in (200, 503)
            wait_ready(a, 10)
            wait_ready(b, 10)
            wait_until(lambda: all(m.acknowledged[-1][1] > up for m in mergers), 10)
        finally:
            stop.set()
            for merger in mergers:
                merger.join(10)
        for merger in mergers:
            assert merger.failure is None, merger.failure
            assert not merger.other, merger.other
            assert merger.slowest < COMMAND_TIMEOUT + 1.0
            assert any(down <= t <= up for t in merger.unavailable), merger.target.port
        acknowledged = [v for m in mergers for v, _ in m.acknowledged]
        sent = {v for m in mergers for v in m.sent}
        wait_until(
            lambda: (
                len({http_json(d.api_port, "/api/v1/values?limit=0")[1]["size"] for d in (a, b)})
                == 1
            ),
            PROPAGATION_BOUND,
        )
        on_a, on_b = all_values(a.api_port), all_values(b.api_port)
        assert on_a == on_b
        assert max(Counter(on_a).values()) == 1  # none twice
        assert set(on_a) <= sent
        missing = set(acknowledged) - set(on_a)
        assert not missing, f"{len(missing)} acknowledged values lost of {len(acknowledged)}"
    for daemon in (a, b):
        assert "Traceback" not in daemon.output.read_text()


def test_startup_with_redis_down_and_exit_ends_with_one_line(tmp_path: Path) -> None:
    """``--redis-startup exit`` with nothing listening at Redis's address: exit status 1 and
    one line naming the address, no traceback, no listener left behind."""
    skip_without_redis()
    port = free_port()
    result = subprocess.run(
        [
            *TWISTD,
            "-n",
            "--pidfile=",
            "numd",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--api-listen",
            "tcp:0:interface=127.0.0.1",
            "--db",
            f"redis://127.0.0.1:{port}/0",
            "--redis-startup",
            "exit",
        ],  # fmt: skip
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        timeout=15,
    )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 1, output
    lines = [line for line in output.splitlines() if "Redis" in line]
    assert lines == [
        f"numd: cannot reach Redis at redis://127.0.0.1:{port}/0: Connection refused "
        "(--redis-startup exit)"
    ], output
    assert "Traceback" not in output


def test_startup_with_redis_down_and_wait_serves_once_redis_comes_up(tmp_path: Path) -> None:
    """``--redis-startup wait`` (the default) with Redis down: numd starts and says so in one
    line, ``/readyz`` is 503 not-ready and requests that need Redis get ``error:unavailable``
    or 503 at once; once Redis comes up (no restart of numd) it is ready and serves."""
    skip_without_redis()
    server = RedisServer(tmp_path / "redis", appendfsync="always")
    server.port = free_port()  # not started yet: nothing listens there
    (tmp_path / "numd").mkdir()
    try:
        with running_numd(tmp_path / "numd", "--db", redis_url(server)) as numd:
            status, body = readyz(numd.api_port)
            assert (status, body["status"], body["checks"]["redis"]) == (503, "not-ready", False)
            sock, reply = register(numd, 9)
            with sock:
                assert reply == b"error:unavailable"
            with numd.connect() as sock:
                asked = time.monotonic()
                sock.sendall(array([1, 2]))
                assert recv_tokens(sock, 1) == [b"error:unavailable"]
                assert time.monotonic() - asked < 1.0
            status, body = http_json(numd.api_port, "/api/v1/values", "POST", [1, 2])
            assert status == 503, body
            wait_until(lambda: "is not reachable yet" in numd.output.read_text(), 5)
            server.start()
            wait_ready(numd, 10)
            sock, reply = register(numd, 9)
            with sock:
                assert reply == b"0"
                sock.sendall(array([2, 1]))
                assert recv_tokens(sock, 1) == [b"[1,2]"]
        output = numd.output.read_text()
        assert output.count("is not reachable yet") == 1
        assert "Traceback" not in output
    finally:
        server.stop()
