"""`FailoverEndpoint`: a client with several servers connects to the first that accepts,
starting with the last one that worked, and says why each one failed."""

from __future__ import annotations

import io
import random
import socket
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from numd.client.counter import CounterClient, connection_problem
from numd.client.failover import FailoverEndpoint, NoServerAccepted
from numd.client.output import ClientOutput, CounterState
from numd.client.testing import MemoryServerEndpoint
from numd.counter.protocol import CounterFactory
from numd.messagelog import MessageLog
from numd.service import NumberService
from numd.stats import Stats


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
    assert str(error) == "a:1 connection refused; b:2 connection refused"
    assert connection_problem(error) == str(error)  # what the status line says, whole


def test_one_endpoint_fails_with_its_reason_alone() -> None:
    """With one server the message is its reason, without its name."""
    failure = outcome(FailoverEndpoint([("a", Stub([False]))]).connect(Factory()))
    assert str(failure.value) == "connection refused"  # type: ignore[attr-defined]


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


def test_the_client_fails_over_to_another_instance_and_resumes(tmp_path: Path) -> None:
    """Two instances sharing one state (as through Redis): A goes away (its connections closed,
    new ones refused); the client, given both, reconnects to B at its next attempt and
    resumes from the last number it reported."""
    clock = Clock()
    state = NumberService(clock, random.Random(1))
    log = MessageLog(str(tmp_path / "messages.log"), clock)
    a = MemoryServerEndpoint(CounterFactory(state, log, Stats(), clock), clock)
    b = MemoryServerEndpoint(CounterFactory(state, log, Stats(), clock), clock)
    client = CounterClient(
        FailoverEndpoint([("a", a), ("b", b)]),
        CounterState(77),
        ClientOutput("quiet", io.StringIO(), io.StringIO(), clock),
        clock,
        random.Random(2),
        parity="odd",
    )
    client.command("c")
    a.run(3)
    assert client.state.connected and (a.attempts, b.attempts) == (1, 0)
    reported = state.clients[77].number
    assert reported > 0
    a.refusing = True
    a.server_factory.close_all(clock, timeout=1)  # type: ignore[attr-defined]
    a.run(0.25)
    assert not client.state.connected and not state.clients[77].connected
    client.state.number = -1  # whatever it holds, the new instance's start number wins
    for _ in range(40):
        a.run(0.25)
        b.run(0)
        if client.state.connected:
            break
    assert client.state.connected and (a.attempts, b.attempts) == (2, 1)
    assert client.state.number == reported
    b.run(1)
    assert state.clients[77].number > reported  # reporting again, through B
    client.command("s")
    b.run(1)
