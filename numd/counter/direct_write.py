"""Replies sent straight to a TCP socket while the transport has nothing queued.

Twisted's TCP transport buffers every ``write`` and sends it on the next reactor
turn: that costs two ``epoll_ctl`` calls (start and stop watching for
writability) and a pass through the transport's write machinery per reply, even
when the socket could have taken the bytes at once (Twisted issue 5303). For a
client that sends one request and waits for its answer, that is most of the
cost of the reply.

`DirectWriter` sends with one ``send`` on the transport's socket
(`ISystemHandle.getHandle`, public API) while the socket takes every byte.
The first time it does not (the kernel buffer is full, or the connection
broke), the rest goes to ``transport.write`` and so does every later reply on
that connection: the transport's queue may then hold bytes, and only the
transport knows when it is empty, so bytes can never overtake each other. A
broken connection is left to the transport to notice and report as usual.

Only plain TCP (and Unix stream) connections qualify (`writer_for`): a TLS
transport's handle is the raw socket under the encryption, so writing to it
would bypass TLS; if TLS were started later, writes go back to the transport.

A connection of an ``ssl:`` listener is a `TLSMemoryBIOProtocol` over the TCP
connection. Its ``write`` (Twisted's `BufferingTLSTransport`) gathers writes for
a reactor turn, up to 64 KB, before it encrypts them: counter replies are one
write per read already, so that only delays each reply by a turn, and the bytes
it holds are seen neither by the TCP transport's backpressure nor by the
connection's memory budget. `writer_for` therefore gives such a connection
`TLSMemoryBIOProtocol.write` itself: each reply is encrypted at once into the
TCP transport's buffer, which pauses the connection when full, as for plain TCP.

Twisted's ``abortConnection`` drops the transport's queue but does not mark the
transport as closing, so an owner that aborts must stop writing through the
`DirectWriter` first (as `numd.counter.protocol.CounterProtocol.abort` does).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from types import MethodType

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport, ITransport
from twisted.protocols.tls import TLSMemoryBIOProtocol

Write = Callable[[bytes], None]


class DirectWriter:
    """Sends to `transport`'s socket at once; hands over to `transport.write` for good on a short send."""

    def __init__(self, transport: tcp.Connection) -> None:
        self._transport = transport
        self._send = transport.getHandle().send
        self.direct = True
        """Whether writes still go straight to the socket."""

    def write(self, data: bytes) -> None:
        """Send `data` now if the socket takes all of it; else queue the rest on the transport."""
        transport = self._transport
        if self.direct and not transport.disconnecting and not transport.TLS:
            try:
                sent = self._send(data)
            except OSError:  # EAGAIN, or a broken connection: the transport will report it
                sent = 0
            if sent == len(data):
                return
            self.direct = False
            data = data[sent:]
        transport.write(data)


def writer_for(transport: ITransport) -> Write:
    """The fastest correct write for `transport`: `DirectWriter` for plain TCP, TLS's own unbuffered
    write for an ``ssl:`` connection, else the transport's write."""
    if (
        isinstance(transport, tcp.Connection)
        and not ISSLTransport.providedBy(transport)
        and not getattr(transport, "TLS", False)
        and isinstance(transport.getHandle(), socket.socket)
    ):
        return DirectWriter(transport).write
    if isinstance(transport, TLSMemoryBIOProtocol):
        return MethodType(TLSMemoryBIOProtocol.write, transport)  # not the gathering one
    return transport.write
