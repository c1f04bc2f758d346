"""Counter protocol limits against bad, slow and hostile clients (fake clock, fake transport)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from numd.counter.protocol import IDLE_SWEEP_SLICE, CounterFactory
from numd.messagelog import MessageLog
from numd.service import NumberService
from numd.stats import Stats

from .counter_client import FakeClient
from .reference_model import expected_replies, reply_matches

BAD_INTEGERS = [
    b"+5",
    b"0x5",
    b"1_0",
    b"1e3",
    b"--5",
    b"007",
    b"-007",
    b"12345678901234567890",
    b"9" * 5000,
    "\u0661\u0662".encode(),
    "\uff11\uff12".encode(),
    b"1\xc2\xa02",
    b"\x00",
    b"1\x00",
    b"\x07",
    b"1\t2",
    b"\x1b[0m",
    b"\xff\xfe",
    b"\x80",
    b"1.0",
    b"-",
]


@pytest.fixture
def limited(state: NumberService, message_log: MessageLog, clock: Clock) -> CounterFactory:
    """A factory with small limits: 3 clients, 10 s idle timeout, 5 s write stall."""
    factory = CounterFactory(
        state, message_log, Stats(), clock, max_clients=3, idle_timeout=10, write_stall_timeout=5
    )
    factory.doStart()
    yield factory
    factory.doStop()


# 2. Strict grammar


@pytest.mark.parametrize("token", BAD_INTEGERS)
def test_bad_integer_as_report_changes_nothing(factory: CounterFactory, token: bytes) -> None:
    """Each malformed number is one error:bad-token and the client's number stays."""
    client = FakeClient(factory)
    client.send(b"1 5 ")
    assert client.send(token + b" ") == [b"error:bad-token"]
    assert factory.service.clients[1].number == 5


@pytest.mark.parametrize("token", BAD_INTEGERS)
def test_bad_integer_as_id(factory: CounterFactory, token: bytes) -> None:
    """Each malformed number as an ID is refused and nobody is registered."""
    client = FakeClient(factory)
    assert client.send(token + b" ")[0] in (b"error:bad-token", b"error:bad-id")
    assert factory.service.clients == {}


@pytest.mark.parametrize("token", BAD_INTEGERS)
def test_bad_integer_in_array(factory: CounterFactory, token: bytes) -> None:
    """An array with one malformed element is error:bad-array and merges nothing."""
    client = FakeClient(factory)
    assert client.send(b"[1," + token + b",2] ") == [b"error:bad-array"]
    assert len(factory.service.values) == 0


# 3. Exactly one reply per request, in order

TOKENS = st.sampled_from(
    [b"odd", b"even", b"17", b"-3", b"[1,2]", b"[x]", b"bad", b"007", b"\xff", b"+1", b"\x00"]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(TOKENS, max_size=40), st.data())
def test_one_reply_per_request_in_order(tokens: list[bytes], data: st.DataObject) -> None:
    """Random valid and invalid tokens, split at random points, get one reply per request, in order."""
    clock = Clock()
    log = MessageLog("/dev/null", clock)
    factory = CounterFactory(NumberService(clock, random.Random(0)), log, Stats(), clock)
    client = FakeClient(factory)
    stream = b"5 " + b"".join(t + b" " for t in tokens)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    replies: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)]):
        replies += client.send(stream[start:end])
    assert replies[0] == b"0"
    kinds = expected_replies(tokens)
    assert len(replies) == 1 + len(kinds)
    for reply, kind in zip(replies[1:], kinds):
        assert reply_matches(reply, kind), (reply, kind)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_log_keeps_every_token_exactly(stream: bytes, cuts: list[int]) -> None:
    """Whatever bytes arrive, split however, the "in" records give back exactly the tokens."""
    import json
    import tempfile

    from .reference_model import complete_tokens

    clock = Clock()
    with tempfile.TemporaryDirectory() as directory:
        log = MessageLog(directory + "/m.log", clock)
        log.startService()
        factory = CounterFactory(
            NumberService(clock, random.Random(0)), log, Stats(), clock, max_token_length=10_000
        )
        client = FakeClient(factory)
        data = b"5 " + stream
        points = sorted(c for c in cuts if c < len(data))
        for start, end in zip([0, *points], [*points, len(data)]):
            client.send(data[start:end])
        log.stopService()
        with open(log.path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
    logged = [r["msg"].encode("latin-1") for r in records if r["dir"] == "in"]
    if factory.stats.errors["http"]:
        return  # the connection was closed at its first token
    assert logged == complete_tokens(data)[: len(logged)]
    assert len(logged) == len(complete_tokens(data)) or client.transport.disconnecting


# 1. Token length cap


def test_long_stream_without_delimiter_is_cut(factory: CounterFactory) -> None:
    """A 1 MiB stream with no delimiter gets error:too-long and a close at the first read past the cap."""
    client = FakeClient(factory)
    replies = []
    for _ in range(16):
        replies += client.send(b"9" * 65536)
    assert replies == [b"error:too-long"]
    assert client.transport.disconnecting
    assert factory.stats.errors["too-long"] == 1


# 4. --max-clients


def test_connection_over_the_limit_is_refused(limited: CounterFactory) -> None:
    """The connection past max-clients gets error:too-many-clients and is closed; a metric counts it."""
    clients = [FakeClient(limited, port=40000 + i) for i in range(3)]
    extra = FakeClient(limited, port=41000)
    assert extra.raw() == b"error:too-many-clients "
    assert extra.transport.disconnecting
    assert limited.stats.connections["refused"] == 1
    clients[0].close()
    assert FakeClient(limited, port=42000).raw() == b""


# 5. Idle timeout


def test_idle_connection_is_closed(limited: CounterFactory, clock: Clock) -> None:
    """A silent connection is closed after the idle timeout; an active one is kept; a metric counts it."""
    quiet, busy = FakeClient(limited), FakeClient(limited, port=40001)
    busy.send(b"2 ")
    for _ in range(25):
        clock.advance(0.5)
        busy.send(b"3 ")
    assert quiet.transport.disconnecting or quiet.transport.aborted  # type: ignore[attr-defined]
    quiet.close()
    assert not busy.transport.disconnecting
    assert limited.stats.connections["idle-timeout"] == 1


def test_idle_sweep_takes_a_slice_per_reactor_turn(
    state: NumberService, message_log: MessageLog, clock: Clock
) -> None:
    """With thousands of connections the sweep checks IDLE_SWEEP_SLICE per turn and still closes every idle one."""
    factory = CounterFactory(state, message_log, Stats(), clock, idle_timeout=10)
    # Not started: the sweep runs when this test calls it, not on the factory's timer.
    clients = [FakeClient(factory, port=20000 + i) for i in range(2500)]
    busy = clients[::10]
    clock.advance(9)
    for client_id, client in enumerate(busy):
        client.send(b"%d " % client_id)
    clock.advance(1.5)  # 10.5 s: the others are past the timeout
    factory.close_idle()
    closed_at_once = factory.stats.connections["idle-timeout"]
    assert 0 < closed_at_once <= IDLE_SWEEP_SLICE
    factory.close_idle()  # the timer again while a sweep is under way: it goes on, not over
    clock.advance(0)
    clock.advance(0)
    assert factory.stats.connections["idle-timeout"] == 2500 - len(busy)
    assert not any(client.protocol.closing for client in busy)
    assert factory._sweep_call is None


def test_keepalive_and_nodelay_are_set(factory: CounterFactory) -> None:
    """TCP keepalive (to reap half-open peers) and TCP_NODELAY are on for every connection."""
    from twisted.internet.testing import StringTransport

    calls = []

    class TCPish(StringTransport):
        def setTcpKeepAlive(self, on: bool) -> None:
            calls.append(("keepalive", on))

        def setTcpNoDelay(self, on: bool) -> None:
            calls.append(("nodelay", on))

    protocol = factory.buildProtocol(None)
    protocol.makeConnection(TCPish())
    assert sorted(calls) == [("keepalive", True), ("nodelay", True)]


# 6. Backpressure


def test_reading_stops_while_output_is_unsent(limited: CounterFactory, clock: Clock) -> None:
    """When the transport's buffer is full the protocol stops reading; reading resumes when it drains."""
    client = FakeClient(limited)
    assert client.transport.producer is client.protocol
    client.send(b"1 ")
    client.protocol.pauseProducing()
    assert client.transport.producerState == "paused"
    clock.advance(4)
    client.protocol.resumeProducing()
    assert client.transport.producerState == "producing"
    clock.advance(4)
    assert not client.transport.disconnecting


def test_client_that_never_reads_is_cut_off(limited: CounterFactory, clock: Clock) -> None:
    """A client that leaves its replies unread past the write-stall timeout is aborted."""
    client = FakeClient(limited)
    client.protocol.pauseProducing()
    clock.advance(4.9)
    assert not getattr(client.transport, "aborted", False)
    clock.advance(0.1)
    assert client.transport.disconnecting
    assert limited.stats.connections["write-stalled"] == 1
    client.close()
    assert not [
        c for c in clock.getDelayedCalls() if c.active() and c.func != limited._idle_sweeper
    ]


def test_a_closed_connection_that_does_not_finish_closing_is_cut_off(
    limited: CounterFactory, clock: Clock
) -> None:
    """A connection numd closes (here error:id-in-use) whose client neither takes what is left
    nor closes is aborted after the write-stall timeout; one that closes in time is not."""
    first = FakeClient(limited)
    assert first.send(b"1 ") == [b"0"]
    second = FakeClient(limited, port=40001)
    assert second.send(b"1 ") == [b"error:id-in-use"]
    assert second.transport.disconnecting
    clock.advance(4.9)
    assert limited.stats.connections["write-stalled"] == 0
    clock.advance(0.1)
    assert limited.stats.connections["write-stalled"] == 1
    second.close()
    first.send(b"2 ")  # still alive: it keeps its ID
    third = FakeClient(limited, port=40002)
    assert third.send(b"1 ") == [b"error:id-in-use"]
    third.close()  # the client closes in time
    clock.advance(5)
    assert limited.stats.connections["write-stalled"] == 1


# 8. Reset mid-token


def test_reset_in_the_middle_of_a_token_changes_nothing(factory: CounterFactory) -> None:
    """The partial token of a connection that drops is discarded, not applied."""
    client = FakeClient(factory)
    client.send(b"4 100 12")
    client.close()
    assert factory.service.clients[4].number == 100
    again = FakeClient(factory, port=40001)
    assert again.send(b"4 ") == [b"100"]


def test_partial_array_on_reset_merges_nothing(factory: CounterFactory) -> None:
    """An array cut by a reset is not merged."""
    client = FakeClient(factory)
    client.send(b"[1,2,3")
    client.close()
    assert len(factory.service.values) == 0


# 9. HTTP on the counter port


@pytest.mark.parametrize(
    "request_bytes",
    [b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.1\r\n", b"HEAD / HTTP/1.0\r\n", b"Host: evil\r\n"],
)
def test_http_is_refused(factory: CounterFactory, request_bytes: bytes) -> None:
    """A first token that looks like HTTP closes the connection with no reply and a log warning."""
    from twisted.logger import LogLevel, globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        client = FakeClient(factory)
        assert client.send(request_bytes + b"Host: 127.0.0.1:2004\r\n\r\n") == []
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert client.transport.disconnecting
    assert factory.service.clients == {}
    assert any(e["log_level"] == LogLevel.warn and "HTTP" in e["log_format"] for e in events)


def test_http_words_later_are_just_bad_tokens(factory: CounterFactory) -> None:
    """Only the first token is checked for HTTP; later it is a plain bad token."""
    client = FakeClient(factory)
    client.send(b"1 ")
    assert client.send(b"GET ") == [b"error:bad-token"]
    assert not client.transport.disconnecting
