"""`FailoverEndpoint`: a client with several servers connects to the first that accepts,
starting with the last one that worked, and says why each one failed."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol

from numd.client.failover import FailoverEndpoint, NoServerAccepted


class Stub:
    """An endpoint whose attempts the test scripts: True connects, False is refused."""

    def __init__(self, results: list[bool]) -> None:
        self.results = results
        self.attempts = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts += 1
        if self.results.pop(0):
            return succeed(Protocol())
        return fail(ConnectionRefusedError("111: Connection refused"))


def outcome(d: Deferred[IProtocol]) -> object:
    """What `d` fired with (it fires at once with stub endpoints)."""
    results: list[object] = []
    d.addBoth(results.append)
    return results[0]


def test_the_first_endpoint_that_accepts_is_used_and_tried_first_next_time() -> None:
    """A refused, B accepts: B is used, and the next attempt starts with B."""
    a, b = Stub([False, True]), Stub([True, True])
    endpoint = FailoverEndpoint([("a", a), ("b", b)])
    assert isinstance(outcome(endpoint.connect(Factory())), Protocol)
    assert (a.attempts, b.attempts, endpoint.current_name) == (1, 1, "b")
    assert isinstance(outcome(endpoint.connect(Factory())), Protocol)
    assert (a.attempts, b.attempts) == (1, 2)


def test_when_every_endpoint_fails_the_error_names_each_reason() -> None:
    """None accepts: one failure whose message has each endpoint's reason."""
    endpoint = FailoverEndpoint([("a:1", Stub([False])), ("b:2", Stub([False]))])
    failure = outcome(endpoint.connect(Factory()))
    error = failure.value  # type: ignore[attr-defined]
    assert isinstance(error, NoServerAccepted)
    assert str(error) == (
        "a:1: Connection was refused by other side: 111: Connection refused; "
        "b:2: Connection was refused by other side: 111: Connection refused"
    )


def test_one_endpoint_fails_with_its_reason_alone() -> None:
    """With one server the message is its reason, without its name."""
    failure = outcome(FailoverEndpoint([("a", Stub([False]))]).connect(Factory()))
    assert str(failure.value) == "Connection was refused by other side: 111: Connection refused"  # type: ignore[attr-defined]


def test_no_endpoints_is_an_error() -> None:
    with pytest.raises(ValueError):
        FailoverEndpoint([])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_twisted.ensureDeferred
async def test_real_sockets_a_closed_port_then_a_listening_one() -> None:
    """Loopback: the first address refuses (nothing listens), the second accepts."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(Protocol)
    )
    try:
        closed = _closed_port()
        listening = port.getHost().port
        endpoint = FailoverEndpoint(
            [
                (
                    f"127.0.0.1:{closed}",
                    TCP4ClientEndpoint(reactor, "127.0.0.1", closed, timeout=2),
                ),
                (
                    f"127.0.0.1:{listening}",
                    TCP4ClientEndpoint(reactor, "127.0.0.1", listening, timeout=2),
                ),
            ]
        )
        protocol = await endpoint.connect(Factory.forProtocol(Protocol)).addTimeout(5, reactor)
        assert endpoint.current == 1
        protocol.transport.loseConnection()  # type: ignore[attr-defined]
    finally:
        await port.stopListening()
