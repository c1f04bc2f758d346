"""Counter protocol hardening: the per-connection memory budget, trickled tokens, process
stalls, keepalive tuning and ID takeover (fake clock and fake transports)."""

from __future__ import annotations

import socket

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from numd.counter.framing import TokenReceiver
from numd.counter.protocol import (
    DEFAULT_CONNECTION_BUDGET,
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    CounterFactory,
    tune_keepalive,
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


# -- trickled tokens


def test_bytes_that_complete_no_token_do_not_keep_a_connection(
    state: NumberService, message_log: MessageLog, clock: Clock
) -> None:
    """One byte a second that never ends a token is idle; a client that completes tokens is not."""
    factory = CounterFactory(state, message_log, Stats(), clock, idle_timeout=10)
    factory.doStart()
    trickler, talker = FakeClient(factory), FakeClient(factory, port=40001)
    trickler.send(b"1 ")
    talker.send(b"2 ")
    for second in range(16):
        clock.advance(1)
        trickler.send(b"9")
        talker.send(b"%d " % second)
    assert trickler.transport.disconnecting
    assert not talker.transport.disconnecting
    assert factory.stats.connections["idle-timeout"] == 1
    factory.doStop()


class _CountingBytes(bytes):
    """Bytes that count how many bytes were copied in front of them by ``other + self``."""

    copied = 0

    def __radd__(self, other: bytes) -> bytes:
        _CountingBytes.copied += len(other)
        return bytes(other) + bytes(self)


def test_a_token_trickled_byte_by_byte_is_joined_once() -> None:
    """Reassembling a 30,000-byte token sent one byte per read copies each byte about once."""

    class Tokens(TokenReceiver):
        def __init__(self) -> None:
            self.tokens: list[bytes] = []

        def tokenReceived(self, token: bytes) -> None:
            self.tokens.append(token)

    receiver = Tokens()
    receiver.makeConnection(StringTransport())
    _CountingBytes.copied = 0
    token = b"7" * 30_000
    for byte in token:
        receiver.dataReceived(_CountingBytes(bytes([byte])))
    receiver.dataReceived(_CountingBytes(b" "))
    assert receiver.tokens == [token]
    assert _CountingBytes.copied <= 2 * len(token)


def test_a_trickled_token_past_the_cap_is_cut(factory: CounterFactory) -> None:
    """A token trickled in small pieces is still cut at --max-token-length."""
    client = FakeClient(factory)
    replies: list[bytes] = []
    for _ in range(40):
        replies += client.send(b"9" * 1000)
    assert replies == [b"error:too-long"]
    assert client.transport.disconnecting


def test_old_client_bare_id_in_pieces_still_registers(
    factory: CounterFactory, clock: Clock
) -> None:
    """An old client's ID sent in two pieces, then silence, still registers after the quiet time."""
    client = FakeClient(factory)
    client.send(b"52")
    client.send(b"87")
    clock.advance(0.1)
    assert client.replies() == [b"0"]
    assert factory.service.clients[5287].connected


# -- stalls of the whole process


def test_a_stall_past_the_idle_timeout_drops_no_client_that_kept_sending(
    state: NumberService, message_log: MessageLog, clock: Clock
) -> None:
    """After the process stood still longer than the idle timeout, clients whose reads were
    queued meanwhile are kept; a client that really was silent is closed at the next sweep."""
    factory = CounterFactory(state, message_log, Stats(), clock, idle_timeout=10)
    factory.doStart()
    talker, silent = FakeClient(factory), FakeClient(factory, port=40001)
    talker.send(b"1 ")
    silent.send(b"2 ")
    clock.advance(30)  # the stall: the sweep's timer fires once, 27.5 s late, before any read
    assert not talker.transport.disconnecting
    assert not silent.transport.disconnecting
    assert factory.stats.connections["stall-skips"] == 1
    talker.send(b"5 ")  # the read queued during the stall
    clock.advance(2.5)
    assert not talker.transport.disconnecting
    assert silent.transport.disconnecting
    factory.doStop()


# -- half-open peers


def test_keepalive_finds_a_vanished_peer_within_a_minute() -> None:
    """Every counter socket probes after 20 s of silence, every 5 s, and gives up after 8 probes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=5)
    accepted, _ = server.accept()

    class Handle:
        def getHandle(self) -> socket.socket:
            return accepted

    try:
        tune_keepalive(Handle())
        got = [
            accepted.getsockopt(socket.IPPROTO_TCP, option)
            for option in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
        ]
        assert got == [KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT]
        assert KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT <= 60
    finally:
        for s in (client, accepted, server):
            s.close()


def test_a_silent_connection_hands_its_id_to_a_new_one(
    factory: CounterFactory, clock: Clock
) -> None:
    """A new connection for an ID whose connection is silent past the takeover time gets the ID
    and the last number; the old connection is closed and its loss frees nothing of the new one."""
    old = FakeClient(factory)
    old.send(b"7 41 ")
    clock.advance(factory.takeover_time)
    new = FakeClient(factory, port=40001)
    assert new.send(b"7 ") == [b"41"]
    assert old.transport.disconnecting
    assert factory.stats.connections["taken-over"] == 1
    old.close()
    assert factory.service.clients[7].connected
    assert factory.owners[7] is new.protocol
    new.send(b"42 ")
    assert factory.service.clients[7].number == 42
    new.close()
    assert not factory.service.clients[7].connected


def test_a_live_connection_keeps_its_id(factory: CounterFactory, clock: Clock) -> None:
    """A connection that talked within the takeover time keeps its ID: the newcomer gets id-in-use."""
    old = FakeClient(factory)
    old.send(b"7 ")
    clock.advance(factory.takeover_time - 1)
    old.send(b"3 ")
    clock.advance(1.5)
    new = FakeClient(factory, port=40001)
    assert new.send(b"7 ") == [b"error:id-in-use"]
    assert not old.transport.disconnecting
    assert factory.stats.connections["taken-over"] == 0


@pytest.mark.parametrize("takeover_time", [1.0, 30.0])
def test_takeover_time_is_an_option(
    state: NumberService, message_log: MessageLog, clock: Clock, takeover_time: float
) -> None:
    """--takeover-time sets how long the old connection must have been silent."""
    factory = CounterFactory(state, message_log, Stats(), clock, takeover_time=takeover_time)
    FakeClient(factory).send(b"9 ")
    clock.advance(2)
    reply = FakeClient(factory, port=40001).send(b"9 ")
    assert reply == ([b"0"] if takeover_time < 2 else [b"error:id-in-use"])
