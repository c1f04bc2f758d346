"""numd.http.channel: a deadline per request, the body cap on the wire, JSON for every refusal."""

from __future__ import annotations

import json
import random
import socket
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from numd.http.answers import json_body
from numd.http.api import NumdApi
from numd.http.site import ApiSite
from numd.service import NumberService

from .http_client import GET, POST, Wire, assert_json_error, parse_answers, read_until_closed


@pytest.fixture
def service() -> NumberService:
    """A state service on a fake clock."""
    return NumberService(Clock(), random.Random(3))


# 13. Body cap without reading the body; slow requests time out (fake clock, real socket)


async def raw_exchange(site: Any, request: bytes, then: Any = None) -> bytes:
    """Send raw bytes to `site` over 127.0.0.1 and return everything read until it closes."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    sock = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    sock.setblocking(False)
    try:
        sock.sendall(request)
        if then is not None:
            await deferLater(reactor, 0.05)
            then()
        return await read_until_closed(sock)
    finally:
        sock.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_announced_big_body_is_refused_before_it_is_sent(service: NumberService) -> None:
    """A Content-Length over the cap gets 413 and a close at once, with the body never sent."""
    site = NumdApi(service, max_body=1024).site()
    answer = await raw_exchange(
        site,
        b"POST /api/v1/values HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n\r\n[1",
    )
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"body-too-large"' in answer
    assert len(service.values) == 0


@pytest_twisted.ensureDeferred
async def test_chunked_body_is_cut_when_it_passes_the_cap(service: NumberService) -> None:
    """A chunked body is refused the moment it passes the cap."""
    site = NumdApi(service, max_body=1024).site()
    chunk = b"800\r\n" + b" " * 0x800 + b"\r\n"
    answer = await raw_exchange(
        site,
        b"POST /api/v1/values HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk,
    )
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert len(service.values) == 0


@pytest.mark.parametrize(
    "partial",
    [
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # headers never finish
        b"POST /api/v1/values HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n[1",
    ],
    ids=["slow-headers", "slow-body"],
)
@pytest_twisted.ensureDeferred
async def test_slow_request_times_out(service: NumberService, partial: bytes) -> None:
    """Headers or a body that do not arrive within the request timeout get 408 and a close."""
    clock = Clock()
    site = NumdApi(service, request_timeout=10).site(reactor=clock)
    answer = await raw_exchange(site, partial, then=lambda: clock.advance(10))
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"request-timeout"' in answer
    assert len(service.values) == 0


@pytest_twisted.ensureDeferred
async def test_request_in_time_is_served_and_its_deadline_cancelled(service: NumberService) -> None:
    """A complete request is answered, and no deadline is left on the clock afterwards."""
    clock = Clock()
    site = NumdApi(service, request_timeout=10).site(reactor=clock)
    answer = await raw_exchange(
        site, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    pending = [c for c in clock.getDelayedCalls() if "_too_slow" in repr(c.func)]
    assert not pending


# 13. On the wire: every request under the request timeout from its first byte; JSON for every
# refusal, Twisted's own included


MALFORMED = {
    "1000-headers": (
        GET + b"".join(b"X-%d: 1\r\n" % i for i in range(1000)) + b"\r\n",
        431, "too-many-headers",
    ),
    "1MB-request-line": (
        b"GET /" + b"a" * 2**20 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        414, "request-line-too-long",
    ),
    "1MB-request-line-unfinished": (b"GET /" + b"a" * 2**20, 414, "request-line-too-long"),
    "content-length-and-transfer-encoding": (
        POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n[1]",
        400, "bad-length",
    ),
    "transfer-encoding-and-content-length": (
        POST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n[1]",
        400, "bad-length",
    ),
    "two-content-lengths": (
        POST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\n[1]", 400, "bad-length",
    ),
    "bad-content-length": (POST + b"Content-Length: 3x\r\n\r\n[1]", 400, "bad-length"),
    "negative-content-length": (POST + b"Content-Length: -3\r\n\r\n[1]", 400, "bad-length"),
    "unknown-transfer-encoding": (
        POST + b"Transfer-Encoding: gzip\r\n\r\n", 400, "bad-length",
    ),
    "bad-chunked-body": (
        POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n[1]\r\n0\r\n\r\n", 400, "bad-chunk",
    ),
    "chunk-without-crlf": (
        POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\n[1]XX0\r\n\r\n", 400, "bad-chunk",
    ),
    "http2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "http-version-not-supported"),
    "unknown-http-version": (
        b"GET /healthz HTTP/1.2\r\nHost: 127.0.0.1\r\n\r\n", 505, "http-version-not-supported",
    ),
    "not-http": (b"GET /healthz FTP/1.1\r\n\r\n", 400, "bad-request-line"),
    "two-spaces-in-request-line": (b"GET  /healthz HTTP/1.1\r\n\r\n", 400, "bad-request-line"),
    "request-line-only-a-word": (b"HELLO\r\n\r\n", 400, "bad-request-line"),
    "two-empty-lines-first": (b"\r\n\r\n", 400, "bad-request-line"),
    "header-without-colon": (GET + b"NoColonHere\r\n\r\n", 400, "bad-header"),
    "space-in-header-name": (GET + b"X Y: 1\r\n\r\n", 400, "bad-header"),
    "header-too-long": (GET + b"X-Long: " + b"a" * 20_000 + b"\r\n\r\n", 431, "header-too-long"),
    "headers-too-large": (
        GET + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(20)) + b"\r\n",
        431, "headers-too-large",
    ),
    "nul-in-request-target": (b"GET /heal\x00thz HTTP/1.1\r\n\r\n", 400, "bad-request-line"),
    "nul-in-method": (b"G\x00T /healthz HTTP/1.1\r\n\r\n", 400, "bad-request-line"),
    "nul-in-header-value": (GET + b"X-A: a\x00b\r\n\r\n", 400, "bad-header"),
    "nul-in-header-name": (GET + b"X-\x00: 1\r\n\r\n", 400, "bad-header"),
    "bad-multipart-body": (
        POST + b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 7\r\n\r\ngarbage",
        400, "bad-body",
    ),
    "body-over-the-cap": (POST + b"Content-Length: 10000000\r\n\r\n[1", 413, "body-too-large"),
}  # fmt: skip
"""Requests Twisted's parser (or numd's body cap) refuses: the bytes, the status, numd's error code."""


@pytest.mark.parametrize("name", list(MALFORMED))
def test_every_malformed_request_gets_a_json_error_and_a_close(
    service: NumberService, name: str
) -> None:
    """Each kind of malformed request gets a status line, a compact JSON error and Connection: close.

    Twisted alone answers most of these with a bare 400 and no body, or closes
    silently (a line over 16 KiB). Nothing is changed, the refusal is counted,
    and once closed the connection leaves no timer behind.
    """
    data, status, code = MALFORMED[name]
    clock = Clock()
    site = NumdApi(service, max_body=1024).site(reactor=clock)
    wire = Wire(site)
    wire.send(data)
    (answer,) = wire.answers()
    assert_json_error(answer, status, code)
    assert wire.closed
    assert len(service.values) == 0
    assert site.stats.errors == {code: 1}
    assert not clock.getDelayedCalls()  # no deadline, idle timer or abort left behind


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_requests_split_at_every_read_get_the_same_answer(
    service: NumberService, name: str
) -> None:
    """The answer does not depend on how the bytes are split into reads (here: 997-byte pieces)."""
    data, status, code = MALFORMED[name]
    site = NumdApi(service, max_body=1024).site(reactor=Clock())
    wire = Wire(site)
    for start in range(0, len(data), 997):
        wire.send(data[start : start + 997])
    (answer,) = wire.answers()
    assert_json_error(answer, status, code)


def test_a_refusal_is_logged_with_the_peer_as_host_and_port(service: NumberService) -> None:
    """The log says ``refused a request from 192.168.1.1:54321: 413 body-too-large``, not the
    address object's repr (``IPv4Address(type='TCP', ...)``)."""
    from twisted.logger import capturedLogs, formatEvent

    site = NumdApi(service, max_body=1024).site(reactor=Clock())
    wire = Wire(site)
    with capturedLogs() as events:
        wire.send(MALFORMED["body-over-the-cap"][0])
    peer = wire.transport.getPeer()
    assert [formatEvent(e) for e in events if "refused" in formatEvent(e)] == [
        f"refused a request from {peer.host}:{peer.port}: 413 body-too-large"
    ]


def test_each_request_on_a_connection_is_judged_on_its_own(service: NumberService) -> None:
    """Header counts and sizes start again at each request, and so does the diagnosis of a bad one."""
    wire = Wire(NumdApi(service).site(reactor=Clock()))
    many = GET + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 20) for i in range(300)) + b"\r\n"
    wire.send(many)
    wire.send(many)
    wire.send(b"GET /healthz HTTP/2.0\r\n\r\n")
    first, second, third = wire.answers()
    assert (first.status, second.status) == (200, 200)
    assert_json_error(third, 505, "http-version-not-supported")


def test_bytes_after_a_refusal_are_ignored(service: NumberService) -> None:
    """Once a request is refused, nothing more is parsed or answered on its connection."""
    wire = Wire(NumdApi(service).site(reactor=Clock()))
    wire.send(b"GET / HTTP/9.9\r\n\r\n")
    wire.send(POST + b"Content-Length: 3\r\n\r\n[1]")
    assert [a.status for a in wire.answers()] == [505]
    assert len(service.values) == 0


async def exchange_over_loopback(site: Any, data: bytes) -> bytes:
    """Send `data` to `site` over 127.0.0.1 without blocking the reactor; all bytes read until it closes.

    The server may close before `data` is all sent (that is the point for a
    1 MB request line): sending then stops, and what was read is returned.
    """
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    sock = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    sock.setblocking(False)
    received, unsent = b"", memoryview(data)
    try:
        deadline = reactor.seconds() + 5
        while reactor.seconds() < deadline:
            try:
                if unsent:
                    unsent = unsent[sock.send(unsent) :]
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                unsent = memoryview(b"")
            await deferLater(reactor, 0.005)
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
        raise AssertionError(f"the server did not close; got {received!r}")
    finally:
        sock.close()
        await port.stopListening()


@pytest.mark.parametrize(
    "name", ["1000-headers", "1MB-request-line", "http2-preface", "two-content-lengths"]
)
@pytest_twisted.ensureDeferred
async def test_malformed_requests_over_loopback(service: NumberService, name: str) -> None:
    """Over a real socket the client reads the whole JSON answer before the close (even mid-send)."""
    data, status, code = MALFORMED[name]
    raw = await exchange_over_loopback(NumdApi(service).site(), data)
    (answer,) = parse_answers(raw)
    assert_json_error(answer, status, code)


def test_a_client_gone_mid_request_leaves_no_timer_and_frees_its_slot(
    service: NumberService,
) -> None:
    """A connection lost in the middle of a request stops its deadline and leaves the cap's count."""
    clock = Clock()
    site = NumdApi(service).site(reactor=clock)
    wire = Wire(site)
    wire.send(GET)
    assert site.connections == {wire.protocol}
    wire.transport.loseConnection()
    assert not clock.getDelayedCalls()
    assert site.connections == set()
    assert site.stats.connections == {"opened": 1, "closed": 1}


def test_a_refused_client_that_reads_nothing_is_aborted(service: NumberService) -> None:
    """A refused connection that does not close (its client never reads) is aborted after 15 s."""
    clock = Clock()
    transport = StringTransport()
    channel = NumdApi(service).site(reactor=clock).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /healthz HTTP/9.9\r\n\r\n")
    assert transport.disconnecting and not transport.disconnected
    clock.advance(14.9)
    assert not transport.disconnected
    clock.advance(0.1)
    assert transport.disconnected


def test_twisteds_own_408_and_413_bodies_use_the_compact_json(service: NumberService) -> None:
    """The answers written on the wire have the same encoding as every route's (no spaces)."""
    clock = Clock()
    site = NumdApi(service, max_body=10, request_timeout=10).site(reactor=clock)
    slow, big = Wire(site), Wire(site)
    slow.send(GET)
    big.send(POST + b"Content-Length: 11\r\n\r\n")
    clock.advance(10)
    for wire, status in ((slow, 408), (big, 413)):
        (answer,) = wire.answers()
        assert answer.status == status
        assert b'{"error":"' in answer.body and b'","message":"' in answer.body
        assert answer.body == json_body(json.loads(answer.body))


def test_request_line_trickled_a_byte_a_second_gets_408_at_the_request_timeout(
    service: NumberService,
) -> None:
    """The deadline starts at a request's first byte: a request line still trickling in gets 408.

    Twisted's idle timer restarts at every byte, and a deadline that started
    only once the request line was complete would come 10 s after the 29th byte.
    """
    clock = Clock()
    site = NumdApi(service, request_timeout=10).site(reactor=clock)
    wire = Wire(site)
    clock.advance(30)  # an idle connection has no deadline yet
    line = b"GET /healthz?padding=xxxxxxxxxxxxxxxx HTTP/1.1\r\n"
    for i in range(10):
        assert wire.answers() == [] and not wire.closed, i
        wire.send(line[i : i + 1])
        clock.advance(1)
    (answer,) = wire.answers()
    assert_json_error(answer, 408, "request-timeout")
    assert wire.closed
    assert site.stats.errors["request-timeout"] == 1


def test_each_request_on_a_kept_alive_connection_has_its_own_deadline(
    service: NumberService,
) -> None:
    """After an answer, the next request's deadline starts at its own first byte, not before."""
    clock = Clock()
    wire = Wire(NumdApi(service, request_timeout=10).site(reactor=clock))
    wire.send(GET + b"\r\n")
    assert [a.status for a in wire.answers()] == [200]
    clock.advance(30)  # idle between requests (the idle timeout is 60 s)
    wire.send(b"G")
    clock.advance(9.9)
    assert len(wire.answers()) == 1 and not wire.closed
    clock.advance(0.1)
    assert [a.status for a in wire.answers()] == [200, 408]


def test_pipelined_request_read_with_the_last_answer_is_under_a_deadline(
    service: NumberService,
) -> None:
    """A second request that came in the same read as the first, unfinished, still gets its 408."""
    clock = Clock()
    wire = Wire(NumdApi(service, request_timeout=10).site(reactor=clock))
    wire.send(GET + b"\r\nGET /healthz HTTP/1.1\r\n")
    assert [a.status for a in wire.answers()] == [200]
    clock.advance(10)
    assert [a.status for a in wire.answers()] == [200, 408]


def test_silence_mid_request_past_the_idle_timeout_is_a_408_too(service: NumberService) -> None:
    """With a request timeout longer than the idle timeout, a request gone silent gets 408, not a bare close."""
    clock = Clock()
    site = ApiSite(NumdApi(service).guarded_resource(), request_timeout=100, idle_timeout=60,
                   reactor=clock)  # fmt: skip
    wire = Wire(site)
    wire.send(GET)
    clock.advance(60)
    (answer,) = wire.answers()
    assert_json_error(answer, 408, "request-timeout")


def test_a_long_answer_is_not_cut_by_the_request_deadline(service: NumberService) -> None:
    """While a request is being answered (an event stream) its deadline is off."""
    from numd.http.dashboard import Dashboard

    clock = Clock()
    api = NumdApi(service, request_timeout=10, dashboard=Dashboard(service, clock))
    wire = Wire(api.site(reactor=clock))
    wire.send(b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    wire.send(b"GET /healthz HTTP/1.1\r\n")  # pipelined: waits for the stream to end
    clock.pump([1.0] * 30)
    assert not wire.closed
    assert wire.transport.value().startswith(b"HTTP/1.1 200 ")
    assert b"request-timeout" not in wire.transport.value()
    wire.transport.loseConnection()


def test_star_target_gets_a_json_405_except_for_options(service: NumberService) -> None:
    """``GET *`` is a JSON 405 with Allow: OPTIONS (Twisted's has no body); ``OPTIONS *`` is 200."""
    wire = Wire(NumdApi(service).site(reactor=Clock()))
    wire.send(
        b"GET * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    star, options = wire.answers()
    assert_json_error(star, 405, "method-not-allowed", closes=False)
    assert star.header(b"Allow") == b"OPTIONS"
    assert (options.status, options.body) == (200, b"")


def test_failure_outside_the_routes_is_a_json_500(service: NumberService) -> None:
    """An exception Twisted's site catches (outside Klein) is a JSON 500, the traceback only in the log."""

    class Broken(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            raise RuntimeError("boom")

    events: list[dict] = []
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(events.append)
    try:
        wire = Wire(ApiSite(Broken(), reactor=Clock()))
        wire.send(GET + b"\r\n")
    finally:
        globalLogPublisher.removeObserver(events.append)
    (answer,) = wire.answers()
    assert_json_error(answer, 500, "internal", closes=False)
    assert b"boom" not in answer.body
    assert any("log_failure" in e and "boom" in str(e["log_failure"].value) for e in events)


@given(data=st.lists(st.sampled_from([
    b"GET /healthz HTTP/1.1\r\n", b"POST /api/v1/values HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n",
    b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b"\r\n", b"[1]", b"3\r\n",
    b"0\r\n", b" ", b":", b"\x00", b"HTTP/2.0", b"@", b"Host: a@b\r\n",
]) | st.binary(max_size=8), max_size=25), cut=st.integers(1, 40))  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_any_bytes_get_only_well_formed_answers(data: list[bytes], cut: int) -> None:
    """Whatever arrives, in whatever pieces: no exception escapes, every error answer is numd's JSON."""
    service = NumberService(Clock(), random.Random(1))
    wire = Wire(NumdApi(service).site(reactor=Clock()))
    stream = b"".join(data)
    for start in range(0, len(stream), cut):
        if wire.closed:
            break
        wire.send(stream[start : start + cut])
    for answer in wire.answers():
        if answer.status >= 400:
            assert answer.header(b"Content-Type") == b"application/json", answer
            assert set(answer.json()) == {"error", "message"}
