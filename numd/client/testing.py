"""In-memory client endpoints for testing numd clients (in the spirit of `treq.testing`).

- `StringEndpoint` connects each attempt to a `StringTransportWithDisconnection`,
  so a test reads what the client wrote and feeds it the server's bytes by hand.
- `MemoryServerEndpoint` connects each attempt to a real server protocol from a
  server factory through `twisted.test.iosim`, so client and server talk for real
  on a `task.Clock`, without sockets.

Both count attempts and can be told to refuse connections, which is how tests
drive `ClientService`'s retries.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.test import iosim
from zope.interface import implementer

_ADDRESS = IPv4Address("TCP", "127.0.0.1", 2004)


@implementer(IStreamClientEndpoint)
class StringEndpoint:
    """Each connection gets a `StringTransportWithDisconnection`; ``refusing`` makes attempts fail."""

    def __init__(self) -> None:
        self.attempts = 0
        self.refusing = False
        self.connections: list[tuple[IProtocol, StringTransportWithDisconnection]] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect at once, or fail with `ConnectionRefusedError` while refusing."""
        self.attempts += 1
        if self.refusing:
            return fail(ConnectionRefusedError("refused by the test"))
        protocol = factory.buildProtocol(_ADDRESS)
        assert protocol is not None
        transport = StringTransportWithDisconnection(peerAddress=_ADDRESS)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)

    @property
    def protocol(self) -> IProtocol:
        """The latest connection's protocol (as `ClientService` sees it: a proxy)."""
        return self.connections[-1][0]

    @property
    def transport(self) -> StringTransportWithDisconnection:
        """The latest connection's transport."""
        return self.connections[-1][1]


@implementer(IStreamClientEndpoint)
class MemoryServerEndpoint:
    """Each connection is an `iosim` pipe to a new protocol of `server_factory`."""

    def __init__(self, server_factory: IProtocolFactory, clock: Clock) -> None:
        self.server_factory = server_factory
        self.clock = clock
        self.attempts = 0
        self.refusing = False
        self.pumps: list[iosim.IOPump] = []
        self.servers: list[IProtocol] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect a new client protocol to a new server protocol, in memory."""
        self.attempts += 1
        if self.refusing:
            return fail(ConnectionRefusedError("refused by the test"))
        client = factory.buildProtocol(_ADDRESS)
        server = self.server_factory.buildProtocol(_ADDRESS)
        assert client is not None and server is not None
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client,
            iosim.makeFakeClient(client),
            greet=False,
            clock=self.clock,
        )
        self.pumps.append(pump)
        self.servers.append(server)
        return succeed(client)

    def flush(self) -> None:
        """Deliver every byte (and close) in flight, both ways, on every connection."""
        for pump in self.pumps:
            pump.flush(advanceClock=False)

    def run(self, seconds: float, step: float = 0.125) -> None:
        """Let `seconds` of fake time pass in `step`s, delivering bytes after each."""
        self.flush()
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            self.flush()
