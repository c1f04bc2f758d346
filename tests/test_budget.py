"""A counter connection's memory budget (`numd.counter.budget`): replies queued or held for the
store, unhandled input and unwritten log records stay within it, inside a read as well as
between reads (fake clock and fake transports)."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from numd.counter.budget import (
    FLUSH_BYTES,
    READ_SIZE,
    RECORD_OVERHEAD,
    TRANSPORT_BUFFER,
    hold_at,
)
from numd.counter.protocol import (
    DEFAULT_CONNECTION_BUDGET,
    DEFAULT_MAX_TOKEN_LENGTH,
    DEFAULT_REPLY_CAP,
    MIN_CONNECTION_BUDGET,
    MIN_REPLY_CAP,
    CounterFactory,
)
from numd.messagelog import MessageLog
from numd.service import NumberService
from numd.stats import Stats

from .counter_client import FakeClient


class BoundedTransport(StringTransport):
    """A transport that pauses its streaming producer from ``write`` while its buffer is over
    `bufferSize`, and resumes it once drained, as Twisted's TCP transport does
    (``FileDescriptor._maybePauseProducer`` and ``doWrite``); `drain` plays the peer reading."""

    bufferSize = 64 * 1024

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.most_buffered = 0
        self.buffered = 0
        self.producer_paused = False

    def write(self, data: bytes) -> None:
        """Buffer `data`; pause the producer while the buffer is over `bufferSize`."""
        super().write(data)
        self.buffered += len(data)
        self.most_buffered = max(self.most_buffered, self.buffered)
        if self.producer is not None and self.buffered > self.bufferSize:
            self.producer_paused = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        """The peer reads everything; a paused producer is resumed."""
        data = self.value()
        self.clear()
        self.buffered = 0
        if self.producer is not None and self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()
        return data


class BoundedClient(FakeClient):
    """A `FakeClient` over a `BoundedTransport`."""

    def __init__(self, factory: CounterFactory, port: int = 40000) -> None:
        from twisted.internet.address import IPv4Address

        self.transport = BoundedTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def held_bytes(self) -> int:
        """What numd holds for this connection: replies (queued, held, in the transport's
        buffer), input not handled, log records not written."""
        return self.protocol._unsent() + len(self.protocol._buffer) + self.transport.buffered


def fill(service: NumberService, count: int = 10_000) -> None:
    """Put `count` large values in the list, so every array reply is at the reply cap."""
    service.merge(range(10**12, 10**12 + count))


FLOOD = b"[1] " * (64 * 1024 // 4)
"""One 64 KiB read carrying 16,384 array requests."""


def test_one_read_of_arrays_never_passes_the_budget(state: NumberService, clock: Clock) -> None:
    """A single 64 KiB read of `[1] ` is handled only while its replies fit the budget;
    the rest waits, and every reply comes once the client reads, in order."""
    factory = CounterFactory(
        state, MessageLog("unused", clock, enabled=False), Stats(), clock, reply_cap=4096
    )
    fill(factory.service)
    client = BoundedClient(factory)
    client.send(b"1 ")
    client.protocol.dataReceived(FLOOD)
    handled = factory.stats.received["array"]
    assert 0 < handled < DEFAULT_CONNECTION_BUDGET // 4096
    assert client.protocol.holding
    assert client.transport.producerState == "paused"
    assert client.held_bytes() <= DEFAULT_CONNECTION_BUDGET
    replies = 0
    for _ in range(10_000):
        data = client.transport.drain()
        replies += data.count(b" ")
        assert client.held_bytes() <= DEFAULT_CONNECTION_BUDGET
        if not client.protocol.holding and not data:
            break
    assert replies == len(FLOOD) // 4
    assert factory.stats.received["array"] == len(FLOOD) // 4
    assert len(factory.service.values) == 10_000 + len(FLOOD) // 4
    assert client.transport.most_buffered <= DEFAULT_CONNECTION_BUDGET
    assert client.transport.producerState == "producing"


def test_replies_held_for_the_store_count_against_the_budget(
    state: NumberService, clock: Clock
) -> None:
    """While the store has not committed, a flood of arrays holds at most the budget of replies."""
    commits: list[Deferred[None]] = []

    def when_durable() -> Deferred[None]:
        d: Deferred[None] = Deferred()
        commits.append(d)
        return d

    state.set_durability(when_durable)
    factory = CounterFactory(
        state, MessageLog("unused", clock, enabled=False), Stats(), clock, reply_cap=4096
    )
    fill(state)
    client = BoundedClient(factory)
    client.send(b"1 ")
    client.protocol.dataReceived(FLOOD)
    assert client.protocol.holding
    assert client.held_bytes() <= DEFAULT_CONNECTION_BUDGET
    assert client.transport.value() == b""  # nothing is acknowledged before it is stored
    assert client.transport.producerState == "paused"
    replies = 0
    for _ in range(10_000):
        while commits:
            commits.pop(0).callback(None)
        clock.advance(0)
        replies += client.transport.drain().count(b" ")
        assert client.held_bytes() <= DEFAULT_CONNECTION_BUDGET
        if not client.protocol.holding and not commits:
            break
    assert replies == len(FLOOD) // 4
    assert factory.stats.connections["budget-waits"] > 0


def test_unwritten_log_records_count_against_the_budget(
    tmp_path, state: NumberService, clock: Clock
) -> None:
    """A connection whose log records the writer has not written yet stops at the budget."""
    queued: list[tuple[object, Deferred[object]]] = []

    def run(work):  # a writer that runs only when the test says so
        d: Deferred[object] = Deferred()
        queued.append((work, d))
        return d

    log = MessageLog(str(tmp_path / "m.log"), Clock(), run=run)
    log.startService()
    factory = CounterFactory(state, log, Stats(), clock)
    fill(state)
    client = BoundedClient(factory)
    client.send(b"1 ")
    for _ in range(40):
        client.protocol.dataReceived(b"[1] " * 64)
        client.transport.drain()
    assert client.protocol.holding
    assert client.held_bytes() <= DEFAULT_CONNECTION_BUDGET
    before = factory.stats.received["array"]
    for _ in range(10_000):
        while queued:
            work, d = queued.pop(0)
            d.callback(work())
        client.transport.drain()
        assert client.held_bytes() <= DEFAULT_CONNECTION_BUDGET
        if not client.protocol.holding and not queued:
            break
    assert factory.stats.received["array"] == 40 * 64 > before
    log.stopService()


def test_budget_waits_do_not_count_as_write_stalls(
    state: NumberService, message_log: MessageLog, clock: Clock
) -> None:
    """A connection waiting for its store commits is not cut off; one not reading still is."""
    factory = CounterFactory(state, message_log, Stats(), clock, write_stall_timeout=5)
    fill(state)
    client = BoundedClient(factory)
    client.send(b"1 ")
    client.protocol.dataReceived(FLOOD)
    assert client.transport.producerState == "paused"
    clock.advance(5)
    assert factory.stats.connections["write-stalled"] == 1


def test_the_margin_leaves_room_for_what_is_bounded_apart() -> None:
    """A connection stops taking tokens at the budget less one read, one partial token, the
    transport's buffer, one queue being written and three replies with their records; a
    budget smaller than that margin holds nothing back."""
    margin = (
        READ_SIZE
        + DEFAULT_MAX_TOKEN_LENGTH
        + TRANSPORT_BUFFER
        + FLUSH_BYTES
        + 3 * (DEFAULT_REPLY_CAP + RECORD_OVERHEAD)
    )
    assert hold_at(DEFAULT_CONNECTION_BUDGET, DEFAULT_MAX_TOKEN_LENGTH, DEFAULT_REPLY_CAP) == (
        DEFAULT_CONNECTION_BUDGET - margin
    )
    assert hold_at(MIN_CONNECTION_BUDGET, DEFAULT_MAX_TOKEN_LENGTH, DEFAULT_REPLY_CAP) > 0
    assert hold_at(margin - 1, DEFAULT_MAX_TOKEN_LENGTH, DEFAULT_REPLY_CAP) == 0
    assert hold_at(4096, 16, MIN_REPLY_CAP) == 0


@pytest.mark.parametrize("fails", [False, True], ids=["stored", "store-failed"])
def test_held_replies_leave_no_bytes_behind(
    state: NumberService, message_log: MessageLog, clock: Clock, fails: bool
) -> None:
    """Once the store answers, stored or not, the bytes counted for the held replies are gone:
    the budget counts each reply's own bytes, whatever it is answered with."""
    pending: list[Deferred[None]] = []
    state.set_durability(lambda: pending.append(Deferred()) or pending[-1])
    factory = CounterFactory(state, message_log, Stats(), clock)
    client = FakeClient(factory)
    client.send(b"1 ")
    state.merge(range(1000, 1200))  # a reply much longer than error:store-failed
    client.send(b"[5] odd [6] ")
    assert client.protocol._unsent() > 2 * 1000
    (commit,) = pending
    if fails:
        commit.errback(OSError("disk full"))
    else:
        commit.callback(None)
    clock.advance(0)
    assert len(client.replies()) == 3
    assert client.protocol._held.bytes == 0
    assert client.protocol._out_bytes == 0


def test_a_client_that_reads_its_replies_never_waits() -> None:
    """Replies queued mid-read are written once they reach `FLUSH_BYTES`: a client whose
    transport takes them (never pausing numd) never trips the budget, however many it asks."""
    clock = Clock()
    factory = CounterFactory(
        NumberService(clock), MessageLog("unused", clock, enabled=False), Stats(), clock
    )
    client = FakeClient(factory)
    client.send(b"1 ")
    for _ in range(100):
        assert len(client.send(b"[7] " * 50)) == 50
    assert not client.protocol.holding
    assert factory.stats.connections["budget-waits"] == 0
