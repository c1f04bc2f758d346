"""A counter connection's memory budget: what it may hold, and how it waits when it holds too much.

A client can make numd build replies faster than it reads them (pipelined
arrays, each up to the reply cap), or faster than the store commits or the log
writer writes. Each connection therefore holds at most its budget: replies built
but not yet written (queued, held for the store, in the transport's buffer),
input read but not handled, and its message log records not yet written. The
check runs between two tokens, inside a read as well as between reads, so one
read carrying thousands of requests never makes thousands of replies at once.

`BudgetedReceiver` is the part of `numd.counter.connection.CounterProtocol` that
keeps that bound: it is its transport's streaming producer, stops handling the
read's tokens (`TokenReceiver.hold_tokens`) and stops reading once what it
holds passes `hold_at`, and carries on when that drains: the transport's buffer
(`resumeProducing`), the store's answer, the log writer (`_wait_for_log`). A
client that leaves its replies unread for the write-stall timeout is cut off;
waiting for the store or the log writer never counts as a stall. Being the
producer, it is also what closes the connection (`BudgetedReceiver.close`),
and the same timeout cuts off a client that does not let a close finish.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from zope.interface import implementer

from numd.counter.framing import TokenReceiver
from numd.counter.held import HeldReplies
from numd.timers import cancel

if TYPE_CHECKING:
    from twisted.logger import Logger

    from numd.counter.protocol import CounterFactory
    from numd.messagelog import IConnectionLog

READ_SIZE = 64 * 1024
"""The most one read of a TCP transport carries (Twisted reads 64 KiB at a time)."""
TRANSPORT_BUFFER = FileDescriptor.bufferSize
"""The unsent bytes past which Twisted's TCP transport pauses its producer (64 KiB); the
counter connection and the legacy listener both count it in their budget."""
FLUSH_BYTES = 64 * 1024
"""Queued replies written at once, mid-read, when they reach this size."""
LOG_WAIT_BYTES = 256 * 1024
"""A connection's unwritten log records past which it waits for the log writer."""
RECORD_OVERHEAD = 80
"""About the bytes a message log record adds to its token (time, peer, id, keys)."""


def hold_at(budget: int, max_token_length: int, reply_cap: int) -> int:
    """The replies, held or queued, and log records past which a connection's tokens wait.

    The rest of the budget is the margin for what is bounded apart: the input
    of one read and a partial token, the transport's buffer before it pauses
    us, one queue about to be written, and the reply and records of one more
    token.
    """
    margin = (
        READ_SIZE
        + max_token_length
        + TRANSPORT_BUFFER
        + FLUSH_BYTES
        + 3 * (reply_cap + RECORD_OVERHEAD)
    )
    return max(budget - margin, 0)


@implementer(IPushProducer)
class BudgetedReceiver(TokenReceiver):
    """A `TokenReceiver` that holds at most its factory's budget, and is its transport's producer.

    The subclass queues replies (`_out_bytes`), holds them for the store
    (`_held`), counts its log records (`_log_pending`) and writes its queue
    (`_flush`); this class decides, between two tokens, whether the read may go on.
    """

    log: Logger
    factory: CounterFactory
    client_id: int | None
    peer: str
    _log: IConnectionLog
    _held: HeldReplies
    _lost: bool
    _out_bytes = 0
    """Bytes of the replies queued to be written (with their spaces)."""
    _log_pending = 0
    """Bytes of this connection's message log records not known to be written."""
    _log_wait: Deferred[None] | None = None
    _stall_timer: IDelayedCall | None = None
    _transport_paused = False
    _claiming = False
    """A registration waits for the shared state: the read's other tokens wait for it."""
    _producing = False
    """Registered as the transport's producer (from `start_producing` until `close`)."""

    def _flush(self) -> None:
        """Write the queued replies now."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection now."""
        raise NotImplementedError

    # -- backpressure (IPushProducer, driven by the transport) ---------------------

    def start_producing(self) -> None:
        """Become the transport's streaming producer: it pauses us when its unsent output
        passes its buffer size, and we then stop reading from this client."""
        self.transport.registerProducer(self, True)
        self._producing = True

    def pauseProducing(self) -> None:
        """Our unsent output is over the transport's bound: stop reading this client.

        If it does not read its replies within the write-stall timeout, it is cut off.
        The tokens of the read being handled wait too (`_check_budget`).
        """
        self._transport_paused = True
        self.transport.pauseProducing()
        self._arm_stall_timer()

    def resumeProducing(self) -> None:
        """The client read its replies: handle its kept tokens and read from it again."""
        self._transport_paused = False
        self._cancel_stall_timer()
        self._resume()

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost does the cleanup."""

    # -- the memory budget ---------------------------------------------------------

    def _unsent(self) -> int:
        """Bytes this connection holds: replies queued or held, log records not yet written.

        The transport's own buffer, the input of the read being handled and the
        next token's reply and records are bounded apart and kept in the margin
        between `CounterFactory.hold_at` and the budget.
        """
        return self._out_bytes + self._held.bytes + self._log_pending

    def _check_budget(self) -> None:
        """Between two tokens: write big queues, and hold the read's other tokens while over budget."""
        if self._out_bytes >= FLUSH_BYTES:
            self._flush()
        if self._log_pending >= LOG_WAIT_BYTES and self._log_wait is None:
            self._wait_for_log()
        if self._transport_paused or self._unsent() > self.factory.hold_at:
            self._flush()
            if self._log_pending and self._log_wait is None:
                self._wait_for_log()
            if (self._transport_paused or self._unsent() > self.factory.hold_at) and not (
                self.holding or self._lost
            ):
                self.factory.stats.connections["budget-waits"] += 1
                self.hold_tokens()
                self.transport.pauseProducing()

    def _resume(self) -> None:
        """Something drained: handle the kept tokens if under budget, then read again.

        Called only from outside the handling of a read: by the transport, by the
        store's acknowledgement (`_release_later`) and by the log writer
        (`_wait_for_log`), each from a reactor callback of its own.
        """
        if self._lost or self._transport_paused or self._claiming:
            return
        if self.holding:
            hold_at = self.factory.hold_at
            if self._unsent() > hold_at and self._log_pending and self._log_wait is None:
                self._wait_for_log()
            if self._unsent() > hold_at:
                return
            self.release_tokens()
        if not self.holding and not self._transport_paused and not self._lost:
            self.transport.resumeProducing()

    def _wait_for_log(self) -> None:
        """Count this connection's records as pending until the log writer has written them."""
        written = self._log_pending
        wait = self.factory.message_log.when_written()
        if wait.called:  # written in place (no writer thread)
            self._log_pending -= written
            return

        def done(_: object) -> None:
            self._log_wait = None
            self._log_pending -= written
            self._resume()

        self._log_wait = wait
        wait.addBoth(done)

    # -- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Close once what was written is sent; a client that does not let it close is cut off.

        Unregistered as the transport's producer first: a TCP transport whose
        producer is paused when its buffer drains resumes the producer instead of
        finishing the close, and the connection would stay half-closed; a TLS
        transport does not even start closing while a producer is registered.
        Reading resumes (the subclass ignores the tokens): a TLS connection closes
        only once it reads the client's close_notify or end of stream. A client
        that does not take what is left and close within the write-stall timeout
        is aborted, as one that stops reading its replies is.
        """
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.resumeProducing()
        self.transport.loseConnection()
        if not self._lost:
            self._arm_stall_timer()

    # -- the write-stall cut-off -----------------------------------------------------

    def _arm_stall_timer(self) -> None:
        """Cut the client off after the write-stall timeout, unless that is armed already."""
        if self._stall_timer is None:
            self._stall_timer = self.factory.clock.callLater(
                self.factory.write_stall_timeout, self._write_stalled
            )

    def _write_stalled(self) -> None:
        self._stall_timer = None
        self.factory.stats.connections["write-stalled"] += 1
        self.log.info(
            "cutting off {peer} (id {client_id}): it has not read its replies for {seconds} s",
            peer=self.peer,
            client_id=self.client_id,
            seconds=self.factory.write_stall_timeout,
        )
        self._log.event("write-stalled")
        self.stop_reading_tokens()
        self.abort()

    def _cancel_stall_timer(self) -> None:
        cancel(self._stall_timer)
        self._stall_timer = None
