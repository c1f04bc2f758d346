"""The counter protocol over TLS: real ``ssl:`` listeners and TLS clients on 127.0.0.1, in the test's reactor.

Under TLS a connection's transport is Twisted's `TLSMemoryBIOProtocol` over the
TCP connection, not the TCP connection itself: these tests show that replies,
closing, the memory budget and its backpressure, the write-stall cut-off and
the keepalive tuning all still hold there.
"""

from __future__ import annotations

import random
import re
import socket
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOProtocol

from numd.counter.connection import CounterProtocol
from numd.counter.protocol import (
    DEFAULT_CONNECTION_BUDGET,
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    CounterFactory,
)
from numd.messagelog import MessageLog
from numd.service import NumberService
from numd.stats import Stats

from .test_loopback import until
from .tls_support import make_tls_files


class TokenClient(Protocol):
    """Sends bytes as given; collects what comes back, counting reply tokens as they arrive
    (megabytes of replies are counted once, not rescanned at every read)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.count = 0
        self.waiting: list[tuple[int, defer.Deferred[list[bytes]]]] = []
        self.closed: defer.Deferred[None] = defer.Deferred()

    @property
    def received(self) -> bytes:
        """Every byte received so far."""
        return b"".join(self.chunks)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.count += data.count(b" ")
        for count, d in list(self.waiting):
            if self.count >= count:
                self.waiting.remove((count, d))
                d.callback(self.received.split(b" ")[:count])

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)

    def tokens(self, count: int) -> defer.Deferred[list[bytes]]:
        """Fire with the first `count` reply tokens, or time out after 5 s."""
        d: defer.Deferred[list[bytes]] = defer.Deferred()
        self.waiting.append((count, d))
        self.dataReceived(b"")
        return d.addTimeout(5, reactor)


class TlsServer:
    """A counter factory behind an ``ssl:`` listener on a free 127.0.0.1 port of the real reactor."""

    def __init__(self, tmp_path: Path, **limits: object) -> None:
        self.tls = make_tls_files(tmp_path / "tls")
        self.log = MessageLog(str(tmp_path / "m.log"), reactor)
        self.factory = CounterFactory(
            NumberService(reactor, random.Random(1)), self.log, Stats(), reactor, **limits
        )
        self.port = None

    async def start(self) -> TlsServer:
        self.log.startService()
        self.port = await serverFromString(reactor, self.tls.ssl_endpoint()).listen(self.factory)
        return self

    async def connect(self) -> TokenClient:
        """A TLS client that trusts the test's CA and checks the certificate names 127.0.0.1."""
        port = self.port.getHost().port
        endpoint = clientFromString(
            reactor, f"tls:127.0.0.1:{port}:trustRoots={self.tls.ca_dir}:timeout=5"
        )
        return await endpoint.connect(Factory.forProtocol(TokenClient)).addTimeout(5, reactor)

    def only_connection(self) -> CounterProtocol:
        (protocol,) = self.factory.connections
        return protocol

    async def stop(self) -> None:
        for protocol in list(self.factory.connections):
            protocol.abort()
        await until(lambda: not self.factory.connections)
        await self.port.stopListening()
        self.log.stopService()


def held_by_numd(protocol: CounterProtocol) -> int:
    """Every byte numd holds for a TLS connection: its queued and held replies, unwritten log
    records and unhandled input, TLS's gathered and pending writes, and the TCP buffer under TLS."""
    tls = protocol.transport
    assert isinstance(tls, TLSMemoryBIOProtocol)
    gathered = sum(map(len, getattr(getattr(tls, "_aggregator", None), "_buffer", [])))
    tcp = tls.transport
    return (
        protocol._unsent()
        + protocol.pending_length
        + gathered
        + sum(map(len, tls._appSendBuffer))
        + len(tcp.dataBuffer)
        + tcp._tempDataLen
    )


@pytest_twisted.ensureDeferred
async def test_register_report_requests_and_arrays_over_tls(tmp_path: Path) -> None:
    """Over TLS a client registers, reports, asks even/odd and merges arrays, with the same replies
    as over TCP; a second connection for its ID gets error:id-in-use and is closed at once."""
    server = await TlsServer(tmp_path).start()
    try:
        a = await server.connect()
        b = await server.connect()
        a.transport.write(b"1 ")
        a.transport.write(b"10 odd even [3,1] ")
        got = await a.tokens(4)
        assert got[0] == b"0" and got[3] == b"[1,3]"
        assert int(got[1]) % 2 == 1 and int(got[2]) % 2 == 0
        b.transport.write(b"[2] 1 ")
        assert await b.tokens(2) == [b"[1,2,3]", b"error:id-in-use"]
        await b.closed.addTimeout(2, reactor)
        a.transport.loseConnection()
        await a.closed.addTimeout(5, reactor)
        await until(lambda: not server.factory.connections)
        assert server.factory.service.clients[1].number == 10
        assert not server.factory.service.clients[1].connected
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_old_client_bare_id_over_tls(tmp_path: Path) -> None:
    """An old client's ID with no delimiter is taken after the quiet time, over TLS too."""
    server = await TlsServer(tmp_path).start()
    try:
        client = await server.connect()
        client.transport.write(b"5287")
        assert await client.tokens(1) == [b"0"]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_close_all_closes_tls_clients_without_waiting_for_the_grace(tmp_path: Path) -> None:
    """At shutdown every TLS connection closes cleanly at once, not after the 2 s grace:
    numd stops being the TLS transport's producer before it closes it."""
    server = await TlsServer(tmp_path).start()
    try:
        clients = [await server.connect() for _ in range(3)]
        for number, client in enumerate(clients):
            client.transport.write(b"%d " % number)
            await client.tokens(1)
        started = reactor.seconds()
        await server.factory.close_all(reactor, timeout=2.0).addTimeout(5, reactor)
        assert reactor.seconds() - started < 1.0
        for client in clients:
            await client.closed.addTimeout(5, reactor)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_replies_are_encrypted_at_once_not_gathered_for_a_reactor_turn(
    tmp_path: Path,
) -> None:
    """A reply goes through TLS into the TCP transport when written: nothing waits in TLS's
    gathering buffer, which neither the budget nor the TCP backpressure would see."""
    server = await TlsServer(tmp_path).start()
    try:
        client = await server.connect()
        client.transport.write(b"1 ")
        await client.tokens(1)
        protocol = server.only_connection()
        tcp = protocol.transport.transport
        before = len(tcp.dataBuffer) + tcp._tempDataLen
        protocol._write(b"[1,2,3] ")
        assert held_by_numd(protocol) - protocol._unsent() == len(tcp.dataBuffer) + tcp._tempDataLen
        assert len(tcp.dataBuffer) + tcp._tempDataLen > before + len(b"[1,2,3] ")
        assert await client.tokens(2) == [b"0", b"[1,2,3]"]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_keepalive_is_tuned_on_the_socket_under_tls(tmp_path: Path) -> None:
    """The keepalive probes and TCP_NODELAY are set on the TCP socket under the TLS layer."""
    server = await TlsServer(tmp_path).start()
    try:
        client = await server.connect()
        client.transport.write(b"1 ")
        await client.tokens(1)
        sock = server.only_connection().transport.transport.getHandle()
        got = [
            sock.getsockopt(socket.IPPROTO_TCP, option)
            for option in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
        ]
        assert got == [KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_large_array_replies_stay_within_the_budget_over_tls(tmp_path: Path) -> None:
    """200 pipelined arrays, each answered with a 64 KiB reply, from a client that does not read:
    numd stops reading from it and never holds more than the connection's budget; once the client
    reads, every reply arrives whole and in order."""
    server = await TlsServer(tmp_path).start()
    try:
        service = server.factory.service
        service.merge(range(100_000, 140_000))  # every reply is cut at the 64 KiB cap
        client = await server.connect()
        client.transport.write(b"1 ")
        await client.tokens(1)  # the TLS handshake is done: the client may stop reading
        client.transport.pauseProducing()  # read nothing for now
        client.transport.write(b"[1] " * 200)
        protocol = server.only_connection()
        most = 0
        for _ in range(300):
            most = max(most, held_by_numd(protocol))
            if protocol._transport_paused and protocol.holding:
                break
            await task.deferLater(reactor, 0.01)
        assert protocol._transport_paused and protocol.holding
        handled = server.factory.stats.received["array"]
        assert 0 < handled < 200
        assert most <= DEFAULT_CONNECTION_BUDGET
        client.transport.resumeProducing()
        replies = (await client.tokens(201))[1:]
        assert all(64 * 1024 - 16 <= len(reply) <= 64 * 1024 for reply in replies)
        sizes = [int(re.fullmatch(rb"\[1,.*,\.\.\.\]/(\d+)", r).group(1)) for r in replies]
        assert sizes == list(range(40_001, 40_201))
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_tls_client_that_never_reads_is_cut_off(tmp_path: Path) -> None:
    """100k pipelined ``odd`` over TLS with no reads: numd stops reading, holds a bounded amount,
    and cuts the client off after the write-stall timeout (on a fake clock)."""
    stall_clock = task.Clock()
    server = await TlsServer(tmp_path, write_stall_timeout=30.0).start()
    server.factory.clock = stall_clock
    try:
        client = await server.connect()
        client.transport.write(b"1 ")
        await client.tokens(1)  # the TLS handshake is done: the client may stop reading
        client.transport.pauseProducing()
        protocol = server.only_connection()
        protocol.transport.transport.getHandle().setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        client.transport.write(b"odd " * 100_000)
        await until(lambda: protocol._stall_timer is not None, timeout=10)
        assert server.factory.stats.received["odd"] < 100_000
        assert held_by_numd(protocol) < DEFAULT_CONNECTION_BUDGET
        stall_clock.advance(30)
        await until(lambda: not server.factory.connections)
        client.transport.resumeProducing()
        await client.closed.addTimeout(5, reactor)
        assert server.factory.stats.connections["write-stalled"] == 1
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_nothing_is_sent_after_an_abort_over_tls(tmp_path: Path) -> None:
    """Once a TLS connection is aborted, a reply written later never reaches the peer."""
    server = await TlsServer(tmp_path).start()
    try:
        client = await server.connect()
        client.transport.write(b"1 even ")
        assert len(await client.tokens(2)) == 2
        protocol = server.only_connection()
        protocol.abort()
        protocol._write(b"late ")
        await client.closed.addTimeout(5, reactor)
        assert client.count == 2 and b"late" not in client.received
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_paused_tls_connection_still_closes_once_its_client_reads(tmp_path: Path) -> None:
    """A TLS connection closed while numd is paused on it finishes closing once the client reads
    everything, with every reply delivered first."""
    server = await TlsServer(tmp_path).start()
    try:
        client = await server.connect()
        client.transport.write(b"1 ")
        await client.tokens(1)  # the TLS handshake is done: the client may stop reading
        client.transport.pauseProducing()
        protocol = server.only_connection()
        protocol.transport.transport.getHandle().setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        client.transport.write(b"odd " * 60_000)
        await until(lambda: protocol._transport_paused, timeout=10)
        closing = server.factory.close_all(reactor, timeout=30)
        client.transport.resumeProducing()
        await client.closed.addTimeout(5, reactor)
        await closing.addTimeout(5, reactor)
        assert client.count == server.factory.stats.sent["odd"] + 1
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_tls_client_that_never_lets_a_close_finish_is_cut_off(tmp_path: Path) -> None:
    """A TLS close waits for the client's close_notify or end of stream; a client that stops
    reading and never closes is aborted after the write-stall timeout (on a fake clock), and no
    longer holds its connection slot."""
    stall_clock = task.Clock()
    server = await TlsServer(tmp_path, write_stall_timeout=30.0).start()
    server.factory.clock = stall_clock
    try:
        client = await server.connect()
        client.transport.write(b"1 ")
        await client.tokens(1)
        client.transport.pauseProducing()  # never reads the close_notify, never closes
        protocol = server.only_connection()
        protocol.close()
        await task.deferLater(reactor, 0.2)
        assert server.factory.connections == {protocol}
        stall_clock.advance(30)
        await until(lambda: not server.factory.connections)
        assert server.factory.stats.connections["write-stalled"] == 1
        client.transport.resumeProducing()
        await client.closed.addTimeout(5, reactor)
    finally:
        await server.stop()
