"""The older sorted-list server's array listener, for its unchanged clients.

Such a client connects, then repeatedly sends a Python pickle of a list of 10-20
integers, with no framing, and reads one pickle back holding the whole sorted
list. Pickles from the network are dangerous: unpickling can import any module
and call any function. So each request is framed and decoded by
`numd.counter.pickles`, which refuses anything that could import or call, and
keeps memory proportional to the bytes received.

The values are merged into the shared sorted list and the reply, the whole list
as a pickle of protocol 4, goes out in one write, once the merge is stored when
the daemon has a store (replies keep request order). Anything else, a failed
store included, closes the connection with a log line.

Every small request costs a reply as large as the whole list, so a client that
pipelines requests and never reads would make numd build replies without end.
Each connection therefore has a memory budget (`DEFAULT_CONNECTION_BUDGET`),
kept inside a read as well as between reads: the protocol is the transport's
streaming producer, stops handling requests the moment the transport says its
buffer is full or the replies waiting for the store would pass the budget,
keeps the rest of the read, stops reading, and carries on when the transport
drains or the store answers. A client that leaves its replies unread for the
write-stall timeout is cut off (see `LegacyArrayProtocol`).

The old client reads its reply with one ``recv(1024)``: a reply of protocol 4
holds at most about 330 values of 1000-65535 (3 bytes each) in 1024 bytes, so
once the shared list passes a few hundred values that client fails to unpickle
its reply. That is the client's limit, not the server's: the reply is complete.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable

from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from numd.counter.budget import TRANSPORT_BUFFER
from numd.counter.framing import IStreamTransport
from numd.counter.held import HeldReplies
from numd.counter.pickles import BadRequest, find_pickle_end, unpickle_list
from numd.counter.protocol import DEFAULT_CONNECTION_BUDGET, DEFAULT_WRITE_STALL_TIMEOUT
from numd.messagelog import describe_peer
from numd.service import NumberService, StateUnavailable
from numd.stats import Stats
from numd.timers import cancel

DEFAULT_MAX_CLIENTS = 1000
"""Old array clients connected at once; the next connection is closed at once."""
DEFAULT_IDLE_TIMEOUT: float | None = None
"""Seconds of silence after which an old array client is disconnected: never by default.

The older server never timed out, and its client loops forever on a closed socket."""
DEFAULT_MAX_BYTES = 16 * 1024
"""Largest request (one pickle) accepted, in bytes."""
REPLY_PROTOCOL = 4


def reply_size_bound(count: int) -> int:
    """Most bytes the protocol-4 pickle of a list of `count` 64-bit ints can take.

    Each int takes at most 10 bytes (LONG1 of 8 bytes); the framing (PROTO, FRAME
    every 64 KiB, the list, a MARK and APPENDS every 1,000 items, STOP) stays
    under 16 bytes plus 1 a value. Used to decide, before building a reply,
    whether it still fits the connection's budget.
    """
    return 11 * count + 16


@implementer(IPushProducer)
class LegacyArrayProtocol(Protocol, TimeoutMixin):
    """One old array client: pickled lists in, the pickled sorted list out.

    Its memory is bounded by the factory's `budget`, inside a read as well as
    between reads. A request is handled only while the transport has not asked it
    to pause (its buffer is past 64 KiB) and, when replies are already waiting for
    the store, only if those replies, the input not yet handled, the transport's
    64 KiB and the largest reply this request can have (`reply_size_bound`) fit
    the budget. Otherwise the complete requests stay in the input buffer, reading
    stops (so the buffer holds at most one read and one partial request), and
    handling carries on when the transport drains or the store answers. A reply
    larger than the whole budget is built only when no other is waiting, so it is
    then the only one. A client that leaves its replies unread for the factory's
    write-stall timeout is aborted; one silent for the idle timeout (off by
    default) is closed.
    """

    transport: IStreamTransport  # set by makeConnection, before any other call

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """The idle timeout's timer, on the factory's clock (`TimeoutMixin` uses this)."""
        return self.factory.clock.callLater(period, func)

    log = Logger()
    factory: LegacyArrayFactory

    peer = "?"
    _closing = False
    _handling = False
    _blocked = False
    """A complete request waits in the buffer for the budget or the transport."""
    _transport_paused = False
    """The transport's buffer is full: it called `pauseProducing` and has not resumed us."""
    _reading_paused = False
    _frame_end: int | None = None
    """The end of the complete request at the head of the buffer, once framed."""
    _stall_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        """Start with an empty buffer; count the connection; register for backpressure."""
        self.peer = describe_peer(self.transport.getPeer())
        self._buffer = bytearray()
        self._resume = 0
        self._held = HeldReplies(self._stored, self._store_failed)
        """Replies waiting for their merges to be stored, or behind one that is."""
        self.factory.stats.connections["opened"] += 1
        self.factory.active += 1
        self.setTimeout(self.factory.idle_timeout)
        # The transport pauses us (from inside write) once its buffer passes its size.
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Drop what is left, stop the timers, count the closed connection."""
        self._closing = True
        self.setTimeout(None)
        cancel(self._stall_timer)
        self._stall_timer = None
        self._drop_pending()
        self.factory.active -= 1
        self.factory.stats.connections["closed"] += 1

    def timeoutConnection(self) -> None:
        """Nothing came for the idle timeout: close the connection."""
        self.factory.stats.connections["idle-timeout"] += 1
        self.log.info("legacy array listener: closing idle {peer}", peer=self.peer)
        self._closing = True
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        """Buffer `data`; serve the complete requests that fit the budget; close on anything bad."""
        if self._closing:
            return
        self.resetTimeout()
        self._buffer += data
        self._serve()

    @property
    def pending_bytes(self) -> int:
        """Bytes this connection holds itself: replies not yet written and input not yet handled."""
        return self._held.bytes + len(self._buffer)

    # -- handling, within the budget ------------------------------------------------

    def _serve(self) -> None:
        """Handle what the budget allows, then pause or resume reading to match."""
        if self._handling:
            return  # called back from inside the loop: the loop carries on
        self._handling = True
        try:
            self._blocked = self._handle_buffered()
        finally:
            self._handling = False
        self._update_reading()

    def _handle_buffered(self) -> bool:
        """Handle complete requests while they fit; True if one is left waiting for room."""
        factory = self.factory
        service = factory.service
        while self._buffer and not self._closing:
            end = self._frame_end
            if end is None:
                try:
                    end, self._resume = find_pickle_end(
                        self._buffer, self._resume, factory.max_bytes
                    )
                except BadRequest as e:
                    self._refuse(e)
                    return False
                if end is None:
                    return False
                self._frame_end = end
            if self._transport_paused or (self._held and not self._fits(end)):
                return True
            request = bytes(self._buffer[:end])
            del self._buffer[:end]
            self._resume = 0
            self._frame_end = None
            try:
                values = unpickle_list(request)
            except BadRequest as e:
                self._refuse(e)
                return False
            factory.stats.count("array")
            service.merge(values)
            self._answer_when_stored(self._reply())
        return False

    def _fits(self, request_length: int) -> bool:
        """Whether the reply to a request of `request_length` bytes fits beside what is held.

        The request adds at most one value per 2 bytes (BININT1 is the shortest).
        """
        largest = reply_size_bound(self.factory.service.list_size + request_length // 2)
        held = self._held.bytes + len(self._buffer) + TRANSPORT_BUFFER
        return held + largest <= self.factory.budget

    def _update_reading(self) -> None:
        """Read from the client only while nothing waits for room; the idle clock stops meanwhile."""
        if self._closing:
            return
        pause = self._transport_paused or self._blocked
        if pause == self._reading_paused:
            return
        self._reading_paused = pause
        if pause:
            self.transport.pauseProducing()
            self.setTimeout(None)
        else:
            self.transport.resumeProducing()
            self.setTimeout(self.factory.idle_timeout)

    # -- replies -----------------------------------------------------------------------

    def _reply(self) -> bytes:
        """The whole sorted list, pickled."""
        return pickle.dumps(self.factory.service.all_values(), protocol=REPLY_PROTOCOL)

    def _answer_when_stored(self, reply: bytes) -> None:
        """Send `reply` once its merge is stored, after the replies before it (built anew
        then, for the shared state, which shows the merge once it is applied)."""
        service = self.factory.service
        rebuild = self._reply if service.applies_later else None
        self._held.append("array", reply, service.when_durable(), rebuild)
        self._release()

    def _stored(self) -> None:
        """A merge was stored: send the replies now ready, then carry on with the buffered requests."""
        self._release()
        if not self._closing:
            self._serve()

    def _store_failed(self, failure: Failure, replies: int) -> None:
        """A merge could not be stored: the connection is closed (its replies are dropped)."""
        if failure.check(StateUnavailable):
            self._refuse(BadRequest("unavailable", f"the merge was not made: {failure.value}"))
            return
        self.log.failure("storing a merge for {peer} failed", failure, peer=self.peer)
        self._refuse(BadRequest("store-failed", "the merge could not be stored"))

    def _release(self) -> None:
        """Write the ready replies at the head of the queue, each in one write.

        They are built already, so they go to the transport even after it has
        asked us to pause: that moves them, it adds nothing. A failed one never
        reaches here: its failure closed the connection, which dropped the queue.
        """
        pop_ready = self._held.pop_ready
        while not self._closing and (held := pop_ready()) is not None:
            self.factory.stats.count("array", 0, 1)
            self.transport.write(held.token)

    def _drop_pending(self) -> None:
        self._buffer = bytearray()
        self._frame_end = None
        self._held.clear()

    def _refuse(self, error: BadRequest) -> None:
        """Count and log `error`, then close once the replies already written are sent.

        A client that does not read those within the write-stall timeout is aborted.
        """
        if self._closing:
            return
        self._closing = True
        self._drop_pending()
        self.setTimeout(None)
        self.factory.stats.errors[error.reason] += 1
        self.log.warn(
            "legacy array listener: closing {peer}: {reason} ({detail})",
            peer=self.peer,
            reason=error.reason,
            detail=error.detail,
        )
        # A transport with a producer registered never finishes closing.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._start_stall_timer()

    # -- backpressure (IPushProducer, driven by the transport) -------------------------

    def pauseProducing(self) -> None:
        """The transport's buffer is full: handle nothing more, stop reading, start the stall clock."""
        self._transport_paused = True
        self._start_stall_timer()
        self._update_reading()

    def resumeProducing(self) -> None:
        """The transport drained: carry on with the buffered requests, then read again."""
        self._transport_paused = False
        cancel(self._stall_timer)
        self._stall_timer = None
        if not self._closing:
            self._serve()

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost does the cleanup."""

    def _start_stall_timer(self) -> None:
        if self._stall_timer is None:
            self._stall_timer = self.factory.clock.callLater(
                self.factory.write_stall_timeout, self._write_stalled
            )

    def _write_stalled(self) -> None:
        """The client left its replies unread for the write-stall timeout: abort it."""
        self._stall_timer = None
        self.factory.stats.connections["write-stalled"] += 1
        self.log.info(
            "legacy array listener: cutting off {peer}: it has not read its replies for {seconds} s",
            peer=self.peer,
            seconds=self.factory.write_stall_timeout,
        )
        self._closing = True
        self._drop_pending()
        self.transport.abortConnection()


class LegacyArrayFactory(Factory[Protocol]):
    """Builds `LegacyArrayProtocol`s sharing one service; counts into its own `Stats`."""

    protocol = LegacyArrayProtocol
    noisy = False
    """No "Starting factory <... at 0x...>" lines: the start-up log says where it listens."""

    def __init__(
        self,
        service: NumberService,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        write_stall_timeout: float = DEFAULT_WRITE_STALL_TIMEOUT,
        budget: int = DEFAULT_CONNECTION_BUDGET,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.service = service
        self.max_bytes = max_bytes
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.write_stall_timeout = write_stall_timeout
        self.budget = budget
        self.clock: IReactorTime = clock  # type: ignore[assignment]
        self.active = 0
        self.stats = Stats()

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        """A protocol, or None (the connection is closed at once) past `max_clients`."""
        if self.active >= self.max_clients:
            self.stats.connections["refused"] += 1
            self.stats.errors["too-many-clients"] += 1
            return None
        return super().buildProtocol(addr)
