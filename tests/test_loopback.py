"""The counter protocol over real 127.0.0.1 sockets inside the test's reactor."""

from __future__ import annotations

import random
from pathlib import Path

import pytest_twisted
from collections.abc import Callable

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol

from numd.messagelog import MessageLog
from numd.protocol import CounterFactory
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
