"""A test-side connection to `CounterProtocol` over a `StringTransport`, and the message log's
records as a test reads them."""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from numd.counter.connection import CounterProtocol
from numd.counter.protocol import CounterFactory


class WriteRecordingTransport(StringTransport):
    """A `StringTransport` that also keeps each write apart, to count writes."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Record `data` as one write, then buffer it as usual."""
        self.writes.append(data)
        super().write(data)


class FakeClient:
    """Feeds bytes to one server protocol and collects the reply tokens."""

    def __init__(self, factory: CounterFactory, port: int = 40000) -> None:
        self.transport = WriteRecordingTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.protocol: CounterProtocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> list[bytes]:
        """Send `data`; return the reply tokens written since the last call."""
        self.protocol.dataReceived(data)
        return self.replies()

    def replies(self) -> list[bytes]:
        """The reply tokens written since the last call (each was ended by a space)."""
        raw = self.transport.value()
        self.transport.clear()
        assert raw == b"" or raw.endswith(b" "), raw
        return raw.split(b" ")[:-1]

    def raw(self) -> bytes:
        """The bytes written since the last call, exactly."""
        raw = self.transport.value()
        self.transport.clear()
        return raw

    def close(self) -> None:
        """Drop the connection as the peer would."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionDone()))


def log_records(factory: CounterFactory) -> list[dict]:
    """Every record the message log holds so far."""
    factory.message_log.flush()
    with open(factory.message_log.path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]
