"""Several servers for one client: connect to the first that accepts, starting with the last
one that worked.

Several numd instances sharing their state through Redis each answer the same
client, so a client given all their addresses fails over when its instance dies:
`FailoverEndpoint` tries them in turn within one connection attempt (refused ones
fail fast), and the client's `ClientService` backs off only when none accepts. The
new instance's start number is the last one the client reported on any instance,
so it resumes from there.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from zope.interface import implementer

from numd.client.counter import connection_problem


class NoServerAccepted(ConnectError):
    """No endpoint accepted the connection; `summary` has each one's reason."""

    def __init__(self, summary: str) -> None:
        super().__init__(string=summary)
        self.summary = summary

    def __str__(self) -> str:
        return self.summary


@implementer(IStreamClientEndpoint)
class FailoverEndpoint:
    """Connects through the first of `endpoints` (name, endpoint) that accepts.

    Each attempt starts with the endpoint that connected last, then tries the
    others in order; it fails only when every one failed, with each one's reason.
    """

    def __init__(self, endpoints: Sequence[tuple[str, IStreamClientEndpoint]]) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint")
        self.endpoints = list(endpoints)
        self.current = 0
        """The index of the endpoint that connected last (tried first)."""

    @property
    def current_name(self) -> str:
        """The endpoint tried first, as given."""
        return self.endpoints[self.current][0]

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect `protocolFactory` through the first endpoint that accepts."""
        return ensureDeferred(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        reasons = []
        count = len(self.endpoints)
        for step in range(count):
            index = (self.current + step) % count
            name, endpoint = self.endpoints[index]
            try:
                protocol: IProtocol = await endpoint.connect(factory)
            except CancelledError:
                raise
            except Exception as e:
                reason = connection_problem(e)
                reasons.append(f"{name} {reason}" if count > 1 else reason)
                continue
            self.current = index
            return protocol
        raise NoServerAccepted("; ".join(reasons))
