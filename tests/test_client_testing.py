"""The client's test doubles (`numd.client.testing`): a client wired in memory to the real
server protocol agrees with it, resumes, reconnects and backs off."""

from __future__ import annotations

import io
import random
from pathlib import Path

from twisted.internet.task import Clock

from numd.client.counter import CounterClient
from numd.client.output import ClientOutput, CounterState
from numd.client.testing import MemoryServerEndpoint
from numd.counter.protocol import CounterFactory
from numd.messagelog import MessageLog
from numd.service import NumberService
from numd.stats import Stats

from .client_support import CLIENT_ID


class Server:
    """The real numd counter protocol and service, in memory."""

    def __init__(self, tmp_path: Path, clock: Clock) -> None:
        self.service = NumberService(clock, random.Random(1))
        self.log = MessageLog(str(tmp_path / "messages.log"), clock)
        self.factory = CounterFactory(self.service, self.log, Stats(), clock)


def real_client(
    tmp_path: Path, client_id: int = CLIENT_ID
) -> tuple[Server, MemoryServerEndpoint, CounterClient, Clock]:
    """A quiet counter client asking for odd numbers, wired in memory to a real server."""
    clock = Clock()
    server = Server(tmp_path, clock)
    endpoint = MemoryServerEndpoint(server.factory, clock)
    output = ClientOutput("quiet", io.StringIO(), io.StringIO(), clock)
    client = CounterClient(
        endpoint, CounterState(client_id), output, clock, random.Random(2), parity="odd"
    )
    return server, endpoint, client, clock


def test_client_and_server_agree(tmp_path: Path) -> None:
    """Against the real server the registry follows the client's reports and answers."""
    server, endpoint, client, clock = real_client(tmp_path)
    client.command("c")
    endpoint.run(12)
    record = server.service.clients[CLIENT_ID]
    assert record.connected
    assert record.number == client.state.number
    assert record.last_given is not None and record.last_given % 2 == 1
    assert client.state.increment == record.last_given
    assert client.state.number > 24


def test_client_resumes_after_reconnecting_to_the_server(tmp_path: Path) -> None:
    """After ``s`` and ``c`` the server hands back the client's last reported number."""
    server, endpoint, client, clock = real_client(tmp_path)
    client.command("c")
    endpoint.run(3)
    client.command("s")
    endpoint.run(1)
    assert not server.service.clients[CLIENT_ID].connected
    number = client.state.number
    client.state.number = -1  # whatever the client holds, the server's start number wins
    client.command("c")
    endpoint.run(0.25)
    assert client.state.connected
    assert client.state.number == number
    endpoint.run(1)
    assert server.service.clients[CLIENT_ID].number == client.state.number


def test_server_dropping_the_client_leads_to_a_reconnect(tmp_path: Path) -> None:
    """When the server closes the connection the client reconnects by itself and resumes."""
    server, endpoint, client, clock = real_client(tmp_path)
    client.command("c")
    endpoint.run(2)
    server.factory.close_all(clock, timeout=1)
    endpoint.run(0.25)
    assert not client.state.connected
    endpoint.run(3)
    assert client.state.connected
    assert endpoint.attempts == 2
    assert server.service.clients[CLIENT_ID].connected


def test_second_client_with_the_same_id_backs_off(tmp_path: Path) -> None:
    """A client whose ID is in use is refused by the server and retries with backoff."""
    server, endpoint, first, clock = real_client(tmp_path)
    second = CounterClient(
        endpoint,
        CounterState(CLIENT_ID),
        ClientOutput("quiet", io.StringIO(), io.StringIO(), clock),
        clock,
        random.Random(3),
    )
    first.command("c")
    endpoint.run(1)
    second.command("c")
    endpoint.run(30)
    assert first.state.connected and not second.state.connected
    assert 4 <= endpoint.attempts <= 7  # 1 + retries after ~1, 2, 4, 8, 16 s
    second.command("s")
    first.command("s")
    endpoint.run(1)
    assert clock.getDelayedCalls() == [] or all(
        getattr(call.func, "__name__", "") == "_timed_flush" for call in clock.getDelayedCalls()
    )
