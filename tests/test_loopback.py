"""The counter protocol over real 127.0.0.1 sockets inside the test's reactor."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol

from numd.counter.protocol import CounterFactory
from numd.messagelog import MessageLog
from numd.service import NumberService
from numd.stats import Stats


class RawClient(Protocol):
    """Sends bytes as given and collects every byte received."""

    def __init__(self) -> None:
        self.received = b""
        self.waiting: list[tuple[int, defer.Deferred[list[bytes]]]] = []
        self.closed: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for count, d in list(self.waiting):
            if self.received.count(b" ") >= count:
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


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait, polling the real reactor, until `condition()` is true; fail after `timeout`."""
    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, "condition not met in time"
        await task.deferLater(reactor, 0.01)


@pytest_twisted.ensureDeferred
async def test_raw_socket_clients(tmp_path: Path) -> None:
    """Two raw socket clients: registration, pipelined requests, arrays shared, id-in-use."""
    log = MessageLog(str(tmp_path / "m.log"), reactor)
    log.startService()
    factory = CounterFactory(NumberService(reactor, random.Random(1)), log, Stats(), reactor)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=5)
    try:
        a = await endpoint.connect(Factory.forProtocol(RawClient)).addTimeout(5, reactor)
        b = await endpoint.connect(Factory.forProtocol(RawClient)).addTimeout(5, reactor)
        a.transport.write(b"1 ")
        a.transport.write(b"10 odd even [3,1] ")
        got = await a.tokens(4)
        assert got[0] == b"0" and got[3] == b"[1,3]"
        b.transport.write(b"[2] 1 ")
        assert await b.tokens(2) == [b"[1,2,3]", b"error:id-in-use"]
        await b.closed.addTimeout(5, reactor)
        a.transport.loseConnection()
        await a.closed.addTimeout(5, reactor)
        await until(lambda: not factory.connections)
        assert not factory.service.clients[1].connected
        assert factory.service.clients[1].number == 10
    finally:
        await port.stopListening()
        log.stopService()


class Server:
    """A counter factory listening on a free 127.0.0.1 port of the real reactor."""

    def __init__(self, tmp_path: Path, **limits: object) -> None:
        self.log = MessageLog(str(tmp_path / "m.log"), reactor)
        self.factory = CounterFactory(
            NumberService(reactor, random.Random(1)), self.log, Stats(), reactor, **limits
        )
        self.port = None

    async def start(self) -> Server:
        self.log.startService()
        self.port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            self.factory
        )
        return self

    async def connect(self) -> RawClient:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port, timeout=5)
        return await endpoint.connect(Factory.forProtocol(RawClient)).addTimeout(5, reactor)

    async def stop(self) -> None:
        for protocol in list(self.factory.connections):
            protocol.abort()
        await until(lambda: not self.factory.connections)
        await self.port.stopListening()
        self.log.stopService()


@pytest_twisted.ensureDeferred
async def test_nothing_is_sent_after_an_abort(tmp_path: Path) -> None:
    """Replies go straight to the socket, but once a connection is aborted nothing more reaches the peer."""
    server = await Server(tmp_path).start()
    try:
        client = await server.connect()
        client.transport.write(b"1 even ")
        assert len(await client.tokens(2)) == 2
        (protocol,) = server.factory.connections
        protocol.abort()
        protocol._write(b"late ")
        await client.closed.addTimeout(5, reactor)
        assert client.received.count(b" ") == 2 and b"late" not in client.received
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_long_token_is_cut_while_others_are_served(tmp_path: Path) -> None:
    """A 1 MiB stream with no delimiter gets error:too-long and is closed within 1 s; others are served."""
    server = await Server(tmp_path).start()
    try:
        other = await server.connect()
        other.transport.write(b"1 ")
        await other.tokens(1)
        flooder = await server.connect()
        started = reactor.seconds()
        flooder.transport.write(b"7" * (1024 * 1024))
        other.transport.write(b"odd ")
        assert len(await other.tokens(2)) == 2
        await flooder.closed.addTimeout(5, reactor)
        assert reactor.seconds() - started < 1.0
        assert flooder.received == b"error:too-long "
        other.transport.write(b"even ")
        assert len(await other.tokens(3)) == 3
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_pipelining_client_that_never_reads(tmp_path: Path) -> None:
    """100k pipelined `odd ` with no reads: numd stops reading, its buffered output stays bounded,
    and the client is cut off after the write-stall timeout (on a fake clock)."""
    stall_clock = task.Clock()
    server = await Server(tmp_path, write_stall_timeout=30.0).start()
    server.factory.clock = stall_clock
    try:
        client = await server.connect()
        client.transport.pauseProducing()  # never read a reply
        await until(lambda: len(server.factory.connections) == 1)
        (protocol,) = server.factory.connections
        sock = protocol.transport.getHandle()
        import socket

        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.transport.write(b"odd " * 100_000)
        client.transport.write(b"1 ")
        await until(lambda: protocol._stall_timer is not None, timeout=10)
        processed = server.factory.stats.received["odd"]
        unsent = len(protocol.transport.dataBuffer) + protocol.transport._tempDataLen
        assert processed < 100_000
        assert unsent < 1024 * 1024
        stall_clock.advance(30)
        await until(lambda: not server.factory.connections)
        # A client that reads nothing and has nothing left to send is not told by its
        # kernel: it finds the connection closed once it reads again.
        client.transport.resumeProducing()
        await client.closed.addTimeout(5, reactor)
        assert server.factory.stats.connections["write-stalled"] == 1
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_flooding_client_does_not_starve_others(tmp_path: Path) -> None:
    """While one client pipelines requests as fast as it can, another's answers still come promptly."""
    server = await Server(tmp_path).start()
    try:
        flooder = await server.connect()
        flooder.transport.write(b"1 ")
        polite = await server.connect()
        polite.transport.write(b"2 ")
        await polite.tokens(1)
        burst = b"odd " * 5000
        sent = 0

        def flood() -> None:
            nonlocal sent
            if sent < 60 and flooder.transport.connected:
                flooder.transport.write(burst)
                sent += 1
                reactor.callLater(0, flood)

        flood()
        worst = 0.0
        for i in range(20):
            started = reactor.seconds()
            polite.transport.write(b"even ")
            await polite.tokens(2 + i)
            worst = max(worst, reactor.seconds() - started)
            await task.deferLater(reactor, 0.01)
        assert sent > 0 and server.factory.stats.received["odd"] > 0
        assert worst < 2.0  # loose: the benchmark measures the real figure
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_paused_connection_still_closes_once_its_client_reads(tmp_path: Path) -> None:
    """A connection closed while numd's transport is paused on it (its client is not reading)
    finishes closing once the client reads everything: the transport does not wait for its
    paused producer instead of closing."""
    import socket

    server = await Server(tmp_path).start()
    try:
        client = await server.connect()
        client.transport.pauseProducing()  # do not read
        await until(lambda: len(server.factory.connections) == 1)
        (protocol,) = server.factory.connections
        protocol.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.transport.write(b"1 " + b"odd " * 60_000)
        await until(lambda: protocol._transport_paused, timeout=10)
        closing = server.factory.close_all(reactor, timeout=30)
        client.transport.resumeProducing()  # now read it all
        await client.closed.addTimeout(5, reactor)
        await closing.addTimeout(5, reactor)
        assert client.received.count(b" ") == server.factory.stats.sent["odd"] + 1
    finally:
        await server.stop()
