"""Replies written straight to the socket, and the hand-over to the transport's queue."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from zope.interface import directlyProvides

from numd.counter.direct_write import DirectWriter, writer_for


class QueueingTransport:
    """What `DirectWriter` needs of a TCP transport: a socket, a state and a queue."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.connected = True
        self.disconnecting = False
        self.TLS = False
        self.queued: list[bytes] = []

    def getHandle(self) -> socket.socket:
        return self.sock

    def write(self, data: bytes) -> None:
        self.queued.append(data)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected non-blocking stream socket pair: (ours, the peer's)."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    yield ours, peer
    ours.close()
    peer.close()


def received(peer: socket.socket) -> bytes:
    """Everything the peer can read now."""
    data = b""
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def test_bytes_go_straight_to_the_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    """While the socket takes every byte, nothing is queued on the transport."""
    ours, peer = pair
    transport = QueueingTransport(ours)
    writer = DirectWriter(transport)  # type: ignore[arg-type]
    writer.write(b"42 ")
    writer.write(b"7 13 ")
    assert received(peer) == b"42 7 13 "
    assert transport.queued == []
    assert writer.direct


def test_short_send_hands_the_rest_and_every_later_write_to_the_transport(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """When the kernel takes only part, the rest is queued, and so is everything after it: order holds."""
    ours, peer = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    transport = QueueingTransport(ours)
    writer = DirectWriter(transport)  # type: ignore[arg-type]
    big = b"".join(b"%d " % i for i in range(200_000))
    writer.write(big)
    assert not writer.direct
    assert len(transport.queued) == 1 and 0 < len(transport.queued[0]) < len(big)
    head = received(peer)  # the socket has room again, but the queue must go first
    writer.write(b"last ")
    assert received(peer) == b""
    assert transport.queued[-1] == b"last "
    assert head + b"".join(transport.queued) == big + b"last "


def test_full_socket_queues_everything(pair: tuple[socket.socket, socket.socket]) -> None:
    """A send that would block (nothing taken) queues the whole write."""
    ours, peer = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    while True:
        try:
            ours.send(b"x" * 65536)
        except BlockingIOError:
            break
    transport = QueueingTransport(ours)
    writer = DirectWriter(transport)  # type: ignore[arg-type]
    writer.write(b"1 ")
    assert transport.queued == [b"1 "]
    assert not writer.direct


def test_broken_connection_is_left_to_the_transport(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """A send error (here EPIPE) does not escape: the bytes go to the transport, which reports the loss."""
    ours, peer = pair
    peer.close()
    transport = QueueingTransport(ours)
    writer = DirectWriter(transport)  # type: ignore[arg-type]
    writer.write(b"1 ")
    assert transport.queued == [b"1 "]
    assert not writer.direct


def test_closing_connection_uses_the_transport(pair: tuple[socket.socket, socket.socket]) -> None:
    """Once the transport is closing, writes go through it (it sends its queue, then closes)."""
    ours, peer = pair
    transport = QueueingTransport(ours)
    transport.disconnecting = True
    writer = DirectWriter(transport)  # type: ignore[arg-type]
    writer.write(b"1 ")
    assert transport.queued == [b"1 "]
    assert received(peer) == b""


def test_tls_started_later_goes_through_the_transport(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Should TLS start on the connection, the bytes must be encrypted: the transport writes them."""
    ours, peer = pair
    transport = QueueingTransport(ours)
    writer = DirectWriter(transport)  # type: ignore[arg-type]
    transport.TLS = True
    writer.write(b"1 ")
    assert transport.queued == [b"1 "]
    assert received(peer) == b""


def test_only_plain_tcp_writes_directly() -> None:
    """Test transports, and TCP connections carrying TLS, keep their own write."""
    string = StringTransport()
    assert writer_for(string) == string.write

    started_tls = tcp.Server.__new__(tcp.Server)
    started_tls.TLS = True
    assert writer_for(started_tls) == started_tls.write

    ssl_transport = tcp.Server.__new__(tcp.Server)
    directlyProvides(ssl_transport, ISSLTransport)
    assert writer_for(ssl_transport) == ssl_transport.write


class _Sender(Protocol):
    """Server side: writes through `writer_for` once connected, keeps the writer."""

    def connectionMade(self) -> None:
        self.factory.writer = writer_for(self.transport)  # type: ignore[attr-defined]
        for token in (b"1 ", b"22 ", b"333 "):
            self.factory.writer(token)  # type: ignore[attr-defined]
        self.transport.loseConnection()


class _Collector(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.data)


@pytest_twisted.ensureDeferred
async def test_real_tcp_connection_writes_directly_and_closes_cleanly() -> None:
    """Over 127.0.0.1 a server connection gets a `DirectWriter`; its bytes arrive, then the close."""
    factory = Factory.forProtocol(_Sender)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    try:
        collector = _Collector()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await endpoint.connect(Factory.forProtocol(lambda: collector))
        data = await collector.done.addTimeout(5, reactor)
        assert data == b"1 22 333 "
        writer = factory.writer  # type: ignore[attr-defined]
        assert isinstance(writer.__self__, DirectWriter) and writer.__self__.direct
    finally:
        await port.stopListening()
