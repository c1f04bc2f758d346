"""The dashboard's routes: the snapshot, the event stream (coalescing, heartbeats, the stream
cap, slow readers), the static page and the histogram of the sorted list.

Most tests drive a real `ApiSite` in memory, over a `StringTransport`, on a fake
clock; one connects a real socket over 127.0.0.1 that never reads.
"""

from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from hypothesis import given
from hypothesis import strategies as st
from sortedcontainers import SortedList
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransportWithDisconnection,
)
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from numd.http.api import NumdApi
from numd.http.dashboard import (
    CLIENT_FIELDS,
    DEFAULT_HEARTBEAT,
    Dashboard,
    client_row,
    histogram,
)
from numd.http.site import ApiSite
from numd.service import INT64_MAX, INT64_MIN, NumberService
from numd.stats import Stats
from numd.tap import Options, makeService

INTERVAL = 0.5


# -- helpers ----------------------------------------------------------------------------


class Connection:
    """One HTTP/1.1 connection to a site, in memory: send a request, read the answer as it grows."""

    def __init__(
        self, site: ApiSite, path: bytes = b"/api/v1/events", method: bytes = b"GET"
    ) -> None:
        self.transport = StringTransportWithDisconnection()
        self.protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(
            method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
        )
        self._seen = 0

    @property
    def head(self) -> bytes:
        """The status line and headers."""
        return self.transport.value().split(b"\r\n\r\n", 1)[0]

    @property
    def status(self) -> int:
        """The response status code."""
        return int(self.head.split(b" ", 2)[1])

    def header(self, name: bytes) -> bytes | None:
        """The first value of response header `name`."""
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b": ")
            if key.lower() == name.lower():
                return value
        return None

    @property
    def body(self) -> bytes:
        """The body so far, de-chunked."""
        raw = self.transport.value().split(b"\r\n\r\n", 1)[1]
        if self.header(b"Transfer-Encoding") != b"chunked":
            return raw
        out = b""
        while raw:
            size_line, _, raw = raw.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out += raw[:size]
            raw = raw[size + 2 :]
        return out

    def blocks(self) -> list[bytes]:
        """Every complete block of the event stream so far (events, comments, the retry field)."""
        return [b for b in self.body.split(b"\n\n")[:-1]]

    def new_blocks(self) -> list[bytes]:
        """The blocks that arrived since the last call."""
        blocks = self.blocks()
        fresh = blocks[self._seen :]
        self._seen = len(blocks)
        return fresh

    def new_events(self) -> list[tuple[str, Any]]:
        """The events (name, parsed JSON data) that arrived since the last call; comments dropped."""
        return [parse_event(b) for b in self.new_blocks() if b.startswith(b"event:")]

    def close(self) -> None:
        """The browser goes away."""
        self.transport.loseConnection()


def parse_event(block: bytes) -> tuple[str, Any]:
    """An ``event:`` + ``data:`` block as (name, JSON data)."""
    lines = block.decode("utf-8").split("\n")
    assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
    assert len(lines) == 2, "the data is on one line"
    return lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])


def rows_by_id(rows: list[list[Any]]) -> dict[int, dict[str, Any]]:
    """Client rows as dicts keyed by ID."""
    return {row[0]: dict(zip(CLIENT_FIELDS, row, strict=True)) for row in rows}


@pytest.fixture
def clock() -> Clock:
    """The reactor clock of the service, the dashboard and the site."""
    c = Clock()
    c.advance(1_700_000_000)
    return c


@pytest.fixture
def service(clock: Clock) -> NumberService:
    """A state service with a seeded random source."""
    return NumberService(clock, random.Random(8))


@pytest.fixture
def stats() -> Stats:
    """The counter protocol's message counters."""
    return Stats()


@pytest.fixture
def dashboard(service: NumberService, clock: Clock, stats: Stats) -> Dashboard:
    """A dashboard with two streams at most and a 5 s stall timeout."""
    return Dashboard(
        service,
        clock,
        stats=[stats],
        interval=INTERVAL,
        max_streams=2,
        stall_timeout=5.0,
    )


@pytest.fixture
def api(service: NumberService, dashboard: Dashboard) -> NumdApi:
    """The HTTP API serving that dashboard."""
    return NumdApi(service, dashboard=dashboard)


@pytest.fixture
def site(api: NumdApi, clock: Clock) -> ApiSite:
    """The API's site on the fake clock."""
    return api.site(clock)


def get(api: NumdApi, path: str) -> tuple[int, Any, bytes]:
    """Status, headers and body of one GET through StubTreq."""
    stub = StubTreq(api.resource())
    results: list[Any] = []
    stub.get("http://127.0.0.1:8080" + path).addCallback(
        lambda r: r.content().addCallback(lambda body: (r.code, r.headers, body))
    ).addBoth(results.append)
    stub.flush()
    (result,) = results
    if isinstance(result, Failure):
        result.raiseException()
    return result  # type: ignore[no-any-return]


# -- the histogram -------------------------------------------------------------------------


@given(
    values=st.lists(st.integers(INT64_MIN, INT64_MAX) | st.integers(-50, 50), max_size=200),
    bins=st.integers(1, 60),
)
def test_histogram_matches_a_count_by_scanning(values: list[int], bins: int) -> None:
    """Every bin counts exactly the values within its bounds; bins cover first..last, at most `bins` of them."""
    summary = histogram(SortedList(values), bins)
    assert summary["size"] == len(values)
    if not values:
        assert summary == {
            "size": 0,
            "first": None,
            "last": None,
            "bin_width": None,
            "bins": [],
        }
        return
    first, last, width = min(values), max(values), summary["bin_width"]
    assert (summary["first"], summary["last"]) == (first, last)
    counts = summary["bins"]
    assert 1 <= len(counts) <= bins
    assert first + (len(counts) - 1) * width <= last < first + len(counts) * width
    for i, count in enumerate(counts):
        low = first + i * width
        assert count == sum(1 for v in values if low <= v < low + width)
    assert sum(counts) == len(values)


def test_histogram_of_a_narrow_range_has_one_bin_per_integer() -> None:
    """Values spanning fewer integers than bins get one bin per integer."""
    assert histogram(SortedList([7, 7, 9]), 40) == {
        "size": 3,
        "first": 7,
        "last": 9,
        "bin_width": 1,
        "bins": [2, 0, 1],
    }


class _NoScanList:
    """A sorted list of a million values that fails the test if it is iterated or sliced."""

    def __init__(self) -> None:
        rng = random.Random(1)
        self.values = SortedList(rng.randint(1000, 10_000) for _ in range(1_000_000))
        self.bisections = 0

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> int:
        assert index in (0, -1), "only the first and last values may be read"
        return self.values[index]  # type: ignore[no-any-return]

    def bisect_left(self, value: int) -> int:
        self.bisections += 1
        return self.values.bisect_left(value)  # type: ignore[no-any-return]

    def __iter__(self) -> Any:
        raise AssertionError("the histogram scanned the list")


def test_histogram_of_a_million_values_bisects_instead_of_scanning() -> None:
    """A list of 10^6 values costs one bisection per bin and well under a millisecond per call."""
    values = _NoScanList()
    start = time.perf_counter()
    summary = histogram(values, 40)
    elapsed = time.perf_counter() - start
    assert values.bisections == len(summary["bins"]) == 40
    assert sum(summary["bins"]) == 1_000_000
    assert elapsed < 0.05


# -- the snapshot -----------------------------------------------------------------------------


def test_snapshot_route_shows_clients_totals_and_the_list(
    api: NumdApi, service: NumberService, stats: Stats, clock: Clock
) -> None:
    """GET /api/v1/snapshot: every client's row, the totals and the list's histogram, as JSON."""
    service.register(3)
    service.report(3, 17)
    service.give(3, "even")
    service.register(1)
    service.disconnect(1)
    service.merge([1000, 2000, 2000, 9000])
    stats.received.update({"id": 2, "report": 8})
    stats.sent.update({"start": 2, "even": 1})
    stats.errors.update({"bad-token": 1})
    clock.advance(2)
    code, headers, body = get(api, "/api/v1/snapshot")
    assert code == 200
    assert headers.getRawHeaders("Content-Type") == ["application/json"]
    snapshot = json.loads(body)
    assert snapshot["client_fields"] == [
        "id",
        "number",
        "last_given",
        "connected",
        "last_seen",
    ]
    clients = rows_by_id(snapshot["clients"])
    assert list(clients) == [1, 3]
    assert clients[3] == {
        "id": 3,
        "number": 17,
        "last_given": service.clients[3].last_given,
        "connected": True,
        "last_seen": 1_700_000_000.0,
    }
    assert clients[1]["connected"] is False
    assert snapshot["time"] == 1_700_000_002.0
    totals = snapshot["totals"]
    assert {k: v for k, v in totals.items() if not k.endswith("per_second")} == {
        "clients_known": 2,
        "clients_connected": 1,
        "messages_in": 10,
        "messages_out": 3,
        "errors": 1,
        "list_size": 4,
        "instances": None,  # the embedded state: this process alone
    }
    assert totals["in_per_second"] == 5.0  # 10 messages in the 2 s since the dashboard began
    assert snapshot["list"]["size"] == 4
    assert (snapshot["list"]["first"], snapshot["list"]["last"]) == (1000, 9000)
    assert sum(snapshot["list"]["bins"]) == 4


def test_snapshot_of_10000_clients_and_a_million_values_stays_small(
    service: NumberService, clock: Clock
) -> None:
    """With every possible client and 10^6 values the snapshot is a few hundred KB, the list summarised."""
    for client_id in range(10_001):
        service.register(client_id)
        service.report(client_id, client_id * 3)
    rng = random.Random(2)
    service.merge(rng.randint(1000, 10_000) for _ in range(1_000_000))
    dashboard = Dashboard(service, clock)
    start = time.perf_counter()
    encoded = json.dumps(dashboard.snapshot(), separators=(",", ":"))
    assert time.perf_counter() - start < 1.0
    assert len(encoded) < 600_000
    snapshot = json.loads(encoded)
    assert len(snapshot["clients"]) == 10_001
    assert snapshot["list"]["size"] == 1_000_000
    assert len(snapshot["list"]["bins"]) <= 40


def test_rates_follow_the_counters(dashboard: Dashboard, stats: Stats, clock: Clock) -> None:
    """Messages per second are measured over the last couple of seconds, and fall to 0 when traffic stops."""
    for _ in range(4):
        clock.advance(1)
        stats.received["report"] += 50
        stats.sent["even"] += 10
        totals = dashboard.totals()
    assert (totals["in_per_second"], totals["out_per_second"]) == (50.0, 10.0)
    clock.advance(3)
    dashboard.totals()
    clock.advance(0.5)
    assert dashboard.totals()["in_per_second"] == 0.0


# -- the event stream ----------------------------------------------------------------------------


def test_stream_starts_with_a_snapshot(site: ApiSite, service: NumberService) -> None:
    """An event stream answers 200 text/event-stream, a retry delay, then the snapshot."""
    service.register(5)
    connection = Connection(site)
    assert connection.status == 200
    assert connection.header(b"Content-Type") == b"text/event-stream"
    assert connection.header(b"Cache-Control") == b"no-store"
    blocks = connection.new_blocks()
    assert blocks[0] == b"retry: 3000"
    name, snapshot = parse_event(blocks[1])
    assert name == "snapshot"
    assert rows_by_id(snapshot["clients"])[5]["connected"] is True
    assert len(blocks) == 2
    connection.close()


def test_a_report_arrives_as_an_update_at_the_next_tick(
    site: ApiSite, service: NumberService, clock: Clock
) -> None:
    """A client's report is sent to the browser within one interval, with that client's row only."""
    service.register(1)
    service.register(2)
    connection = Connection(site)
    connection.new_events()
    clock.advance(1)
    service.report(2, 41)
    assert connection.new_events() == []  # nothing is written per change
    clock.advance(INTERVAL)
    ((name, update),) = connection.new_events()
    assert name == "update"
    assert rows_by_id(update["clients"]) == {
        2: {
            "id": 2,
            "number": 41,
            "last_given": None,
            "connected": True,
            "last_seen": 1_700_000_001.0,
        }
    }
    assert update["totals"]["clients_connected"] == 2
    assert "list" not in update  # the list did not change
    connection.close()


def test_many_changes_coalesce_into_one_update_per_tick(
    site: ApiSite, service: NumberService, clock: Clock, stats: Stats
) -> None:
    """Thousands of changes between two ticks make one update holding the last state of each client."""
    for client_id in range(50):
        service.register(client_id)
    connection = Connection(site)
    connection.new_events()
    for step in range(1, 41):
        for client_id in range(50):
            service.report(client_id, step)
            stats.received["report"] += 1
        service.merge([step])
    clock.advance(INTERVAL)
    ((name, update),) = connection.new_events()
    assert name == "update"
    assert [row[1] for row in update["clients"]] == [40] * 50
    assert update["list"]["size"] == 40
    clock.advance(INTERVAL)  # nothing new: the rates change, the rows do not
    later = connection.new_events()
    assert all(event["clients"] == [] and "list" not in event for _, event in later)
    for _ in range(10):
        clock.advance(INTERVAL)
    connection.new_events()
    clock.advance(INTERVAL)
    assert connection.new_events() == []  # once the rates settle, silence
    connection.close()


def test_a_clear_sends_the_empty_histogram(
    site: ApiSite, service: NumberService, clock: Clock
) -> None:
    """Clearing the list sends a list with size 0 and no bins."""
    service.merge([1, 2, 3])
    connection = Connection(site)
    connection.new_events()
    service.clear()
    clock.advance(INTERVAL)
    ((_, update),) = connection.new_events()
    assert update["list"] == {
        "size": 0,
        "first": None,
        "last": None,
        "bin_width": None,
        "bins": [],
    }
    connection.close()


def test_a_silent_stream_gets_heartbeats(site: ApiSite, clock: Clock) -> None:
    """After 15 s without an event the stream gets a comment line, and again 15 s later."""
    connection = Connection(site)
    connection.new_blocks()
    clock.pump([INTERVAL] * int((DEFAULT_HEARTBEAT - 1) / INTERVAL))
    assert connection.new_blocks() == []
    clock.pump([INTERVAL] * int(1 / INTERVAL))
    assert connection.new_blocks() == [b": heartbeat"]
    clock.pump([INTERVAL] * int(DEFAULT_HEARTBEAT / INTERVAL))
    assert connection.new_blocks() == [b": heartbeat"]
    connection.close()


def test_the_stream_cap_answers_503_and_frees_up(site: ApiSite, dashboard: Dashboard) -> None:
    """Past `max_streams` a stream request gets a JSON 503 with Retry-After; a closed stream frees its slot."""
    first, second = Connection(site), Connection(site)
    third = Connection(site)
    assert third.status == 503
    assert third.header(b"Retry-After") == b"5"
    assert third.header(b"Content-Type") == b"application/json"
    assert json.loads(third.body)["error"] == "too-many-streams"
    first.close()
    assert len(dashboard.streams) == 1
    fourth = Connection(site)
    assert fourth.status == 200
    second.close()
    fourth.close()


def test_closing_every_stream_stops_the_timer(
    site: ApiSite, dashboard: Dashboard, clock: Clock
) -> None:
    """With no stream open the dashboard keeps no timer and is not called for changes."""
    service = dashboard.service
    seen: list[str] = []
    dashboard._client_changed = lambda record: seen.append("report")  # type: ignore[method-assign]
    service.register(3)
    assert seen == []  # nobody watches: not an observer
    connections = [Connection(site), Connection(site)]
    assert clock.getDelayedCalls()
    service.report(3, 7)
    assert seen == ["report"]
    for connection in connections:
        connection.close()
    assert dashboard.streams == set()
    assert not clock.getDelayedCalls()
    service.report(3, 8)
    assert seen == ["report"]


def test_a_head_request_gets_headers_only(site: ApiSite, dashboard: Dashboard) -> None:
    """HEAD on the events route answers the stream's headers and ends; no stream stays open."""
    connection = Connection(site, method=b"HEAD")
    assert connection.status == 200
    assert connection.header(b"Content-Type") == b"text/event-stream"
    assert dashboard.streams == set()


def test_a_paused_stream_is_sent_nothing_and_cut_off(
    site: ApiSite, service: NumberService, dashboard: Dashboard, clock: Clock
) -> None:
    """When the connection's buffer is full nothing more is written; after the stall timeout it is aborted."""
    service.register(1)
    connection = Connection(site)
    connection.new_blocks()
    connection.transport.producer.pauseProducing()  # the send buffer is full
    written = len(connection.transport.value())
    for step in range(1, 9):
        service.report(1, step)
        clock.advance(INTERVAL)
    assert len(connection.transport.value()) == written  # no backlog grows in memory
    clock.pump([INTERVAL] * 4)
    assert connection.transport.disconnected  # aborted after 5 s paused
    assert dashboard.streams == set()
    assert dashboard.streams_cut_off == 1
    assert not clock.getDelayedCalls()


def test_a_stream_that_catches_up_gets_a_fresh_snapshot(
    site: ApiSite, service: NumberService, dashboard: Dashboard, clock: Clock
) -> None:
    """A reader that was only slow misses the updates and then gets one snapshot with the current state."""
    service.register(1)
    connection = Connection(site)
    connection.new_events()
    connection.transport.producer.pauseProducing()
    for step in range(1, 5):
        service.report(1, step)
        clock.advance(INTERVAL)
    assert connection.new_events() == []
    connection.transport.producer.resumeProducing()
    ((name, snapshot),) = connection.new_events()
    assert name == "snapshot"
    assert rows_by_id(snapshot["clients"])[1]["number"] == 4
    clock.advance(10)
    assert len(dashboard.streams) == 1  # not cut off: it drained
    connection.close()


class _Collector(Protocol):
    """Keeps every byte of a response body as it arrives."""

    def __init__(self, into: bytearray) -> None:
        self.into = into

    def dataReceived(self, data: bytes) -> None:
        self.into.extend(data)


@pytest.mark.timeout(30)
@pytest_twisted.ensureDeferred
async def test_a_report_reaches_a_reader_over_loopback() -> None:
    """Over a real socket the snapshot arrives at once and a report follows within an interval."""
    from twisted.internet import reactor

    service = NumberService(reactor)
    service.register(7)
    dashboard = Dashboard(service, reactor, interval=0.05)
    site = NumdApi(service, dashboard=dashboard).site(reactor)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    pool = HTTPConnectionPool(reactor, persistent=False)
    received = bytearray()
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/api/v1/events"
        response = await treq.get(url, pool=pool, unbuffered=True).addTimeout(5, reactor)
        assert response.code == 200
        assert response.headers.getRawHeaders("Content-Type") == ["text/event-stream"]
        reader = _Collector(received)
        response.deliverBody(reader)

        async def until(needle: bytes) -> None:
            deadline = reactor.seconds() + 5
            while needle not in received and reactor.seconds() < deadline:
                await deferLater(reactor, 0.01)
            assert needle in received, bytes(received)

        await until(b"event: snapshot")
        service.report(7, 1234)
        await until(b"event: update")
        update = parse_event(bytes(received).split(b"\n\n")[2])[1]
        assert rows_by_id(update["clients"])[7]["number"] == 1234
        reader.transport.stopProducing()  # the browser goes away
    finally:
        await pool.closeCachedConnections()
        await port.stopListening()
    deadline = reactor.seconds() + 5
    while dashboard.streams and reactor.seconds() < deadline:
        await deferLater(reactor, 0.01)
    assert dashboard.streams == set()


@pytest.mark.timeout(30)
@pytest_twisted.ensureDeferred
async def test_a_reader_that_never_reads_is_cut_off_over_loopback() -> None:
    """A real socket that stops reading fills its buffers; the daemon stops writing and aborts it."""
    from twisted.internet import reactor

    service = NumberService(reactor)
    for client_id in range(3000):
        service.register(client_id)
    dashboard = Dashboard(service, reactor, interval=0.02, stall_timeout=0.5)
    site = NumdApi(service, dashboard=dashboard).site(reactor)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    step = [0]

    def churn() -> None:
        step[0] += 1
        for client_id in range(3000):
            service.report(client_id, step[0])

    pump = LoopingCall(churn)
    try:
        reader.connect(("127.0.0.1", port.getHost().port))
        reader.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        deadline = reactor.seconds() + 5
        while not dashboard.streams and reactor.seconds() < deadline:
            await deferLater(reactor, 0.01)
        assert len(dashboard.streams) == 1
        pump.start(0.02)
        deadline = reactor.seconds() + 20
        while dashboard.streams and reactor.seconds() < deadline:
            await deferLater(reactor, 0.05)
        assert dashboard.streams == set(), "the stalled stream is still open"
        assert dashboard.streams_cut_off == 1
        # The reader gets what was in flight, then a reset: the connection is gone.
        reader.settimeout(5)
        with pytest.raises(OSError):
            while reader.recv(65536):
                pass
            raise ConnectionResetError("closed")
    finally:
        if pump.running:
            pump.stop()
        reader.close()
        await port.stopListening()


# -- the page ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_type", "needle"),
    [
        ("/", "text/html; charset=utf-8", b"<title>numd dashboard</title>"),
        ("/static/dashboard.css", "text/css; charset=utf-8", b".histogram"),
        ("/static/dashboard.js", "text/javascript; charset=utf-8", b"/api/v1/events"),
    ],
)
def test_static_files_have_their_content_types(
    api: NumdApi, path: str, content_type: str, needle: bytes
) -> None:
    """The page, its CSS and its script are served from package data with the right types."""
    code, headers, body = get(api, path)
    assert code == 200
    assert headers.getRawHeaders("Content-Type") == [content_type]
    assert headers.getRawHeaders("X-Content-Type-Options") == ["nosniff"]
    assert needle in body


def test_the_page_loads_only_its_own_files(api: NumdApi) -> None:
    """The page names no other host (it works offline) and forbids anything but its own script and CSS."""
    _, headers, body = get(api, "/")
    policy = headers.getRawHeaders("Content-Security-Policy")[0]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert b"http://" not in body and b"https://" not in body
    assert b'src="/static/dashboard.js"' in body and b'href="/static/dashboard.css"' in body


@pytest.mark.parametrize(
    "path",
    [
        "/static/",
        "/static/index.html",
        "/static/../api.py",
        "/static/%2e%2e/api.py",
        "/static/..%2fapi.py",
        "/static/dashboard.js/",
        "/static/openapi.json",
        "/dashboard.js",
    ],
)
def test_no_other_file_is_served(api: NumdApi, path: str) -> None:
    """Only the three named files are served: any other path, traversal included, is a JSON 404."""
    code, _, body = get(api, path)
    assert code == 404
    assert json.loads(body)["error"] == "not-found"


def test_without_a_dashboard_its_routes_are_not_found(service: NumberService) -> None:
    """An API built without a dashboard answers 404 on its routes."""
    api = NumdApi(service)
    for path in ("/", "/static/dashboard.js", "/api/v1/snapshot", "/api/v1/events"):
        assert get(api, path)[0] == 404


def test_client_row_follows_client_fields(service: NumberService) -> None:
    """A row holds a record's fields in `CLIENT_FIELDS` order, last_seen in milliseconds."""
    service.register(9)
    record = service.clients[9]
    record.last_seen = 12.34567
    assert dict(zip(CLIENT_FIELDS, client_row(record), strict=True)) == {
        **record.as_dict(),
        "last_seen": 12.346,
    }


def test_a_lost_connection_is_forgotten(site: ApiSite, dashboard: Dashboard) -> None:
    """A connection that drops (without a clean close) removes its stream."""
    connection = Connection(site)
    connection.protocol.connectionLost(Failure(ConnectionDone()))
    assert dashboard.streams == set()


def test_twistd_numd_serves_the_dashboard_with_every_listeners_counters(
    tmp_path: Path,
) -> None:
    """makeService gives the API a dashboard on the daemon's reactor, counting both listeners' messages."""
    options = Options()
    options.parseOptions(
        [
            "--message-log",
            str(tmp_path / "m.log"),
            "--db",
            ":memory:",
            "--legacy-array-listen",
            "tcp:0:interface=127.0.0.1",
        ]
    )
    reactor = MemoryReactorClock()
    daemon = makeService(options, reactor=reactor)
    dashboard = daemon.api.dashboard
    assert dashboard is not None
    assert dashboard.clock is reactor
    assert daemon.legacy_array_factory is not None
    assert list(dashboard.stats) == [daemon.stats, daemon.legacy_array_factory.stats]
    daemon.stats.received["report"] += 2
    daemon.legacy_array_factory.stats.received["array"] += 1
    assert dashboard.totals()["messages_in"] == 3
