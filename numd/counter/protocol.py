"""The counter protocol: registration, reports, even/odd requests and arrays.

See ``docs/protocol.md`` for the byte-level reference. In short, every message is
an ASCII token ended by one space; the server answers each request with exactly
one token, in order, and never sends anything a client did not ask for.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from twisted.internet.defer import Deferred, succeed
from twisted.internet.defer import TimeoutError as defer_TimeoutError
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from numd.counter.direct_write import writer_for
from numd.counter.framing import TokenReceiver
from numd.counter.replies import ListReply
from numd.counter.tokens import (
    NUMBER_TOKENS,
    OLD_CLIENT_ID,
    PARITY,
    SMALL_INTEGER,
    looks_like_http,
    parse_array,
    parse_integer,
)
from numd.messagelog import MessageLog, describe_peer
from numd.service import MAX_CLIENT_ID, IdInUse, NumberService, Parity
from numd.stats import Stats
from numd.timers import cancel

IDLE_SWEEP_SLICE = 1000
"""Connections the idle sweep checks per reactor turn."""
MIN_REPLY_CAP = 64
DEFAULT_REPLY_CAP = 64 * 1024
DEFAULT_MAX_TOKEN_LENGTH = 32 * 1024
DEFAULT_MAX_CLIENTS = 12_000
DEFAULT_IDLE_TIMEOUT = 120.0
DEFAULT_WRITE_STALL_TIMEOUT = 30.0
DEFAULT_QUIET_TIME = 0.1
DEFAULT_CONNECTION_BUDGET = 1024 * 1024
"""Bytes one connection may hold in numd: replies built but not yet written (held for the
store, queued, or in the transport's buffer), input read but not handled, and its message
log records not yet written. Past it numd handles none of its tokens until they drain."""
MIN_CONNECTION_BUDGET = 512 * 1024
READ_SIZE = 64 * 1024
"""The most one read of a TCP transport carries (Twisted reads 64 KiB at a time)."""
TRANSPORT_BUFFER = 64 * 1024
"""The unsent bytes past which Twisted's TCP transport pauses its producer (``bufferSize``)."""
DEFAULT_TAKEOVER_TIME = 5.0
"""Seconds of silence after which a connection's ID goes to a new connection for that ID
(clients report every 0.5 s)."""
FLUSH_BYTES = 64 * 1024
"""Queued replies written at once, mid-read, when they reach this size."""
LOG_WAIT_BYTES = 256 * 1024
"""A connection's unwritten log records past which it waits for the log writer."""
RECORD_OVERHEAD = 80
"""About the bytes a message log record adds to its token (time, peer, id, keys)."""
KEEPALIVE_IDLE = 20
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 8
"""TCP keepalive: the first probe after 20 s of silence, then every 5 s, 8 unanswered
probes and the connection is reset: a vanished peer is found within a minute."""
STALL_SLACK = 1.0
"""Seconds the idle sweep may run late before it takes the lateness for a stall of the
whole process (SIGSTOP, a VM pause, swapping) and waits for the reads queued meanwhile."""


@dataclass
class _HeldReply:
    """A reply waiting for its change to be stored (or behind one that is)."""

    kind: str
    token: bytes
    ready: bool = True


class CounterProtocol(TokenReceiver):
    """One counter client's connection."""

    log = Logger()
    factory: CounterFactory

    client_id: int | None = None
    peer = "?"
    _lost = False
    _release_call: IDelayedCall | None = None
    _seen_token = False
    _quiet_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        """Note the peer, register the connection with the factory, log it."""
        self.peer = describe_peer(self.transport.getPeer())
        self.MAX_LENGTH = self.factory.max_token_length
        self._log = self.factory.message_log.connection(self.peer)
        self._logging = self.factory.message_log.enabled
        self._count = self.factory.stats.count
        """The one helper for this connection's message counters (`numd.stats.Stats.count`)."""
        self._out: list[bytes] = []
        self._write = writer_for(self.transport)
        """Where replies go: straight to the socket while it takes them (`numd.counter.direct_write`)."""
        self._held: deque[_HeldReply] = deque()
        self._unstored: list[_HeldReply] = []
        """Held replies to changes of the current read, not yet waiting for the store."""
        self._out_bytes = 0
        """Bytes of the replies in `_out`."""
        self._held_bytes = 0
        """Bytes of the replies in `_held`."""
        self._log_pending = 0
        """Bytes of this connection's message log records not known to be written."""
        self._log_wait: Deferred[None] | None = None
        self._read_at = self.last_activity = self.factory.clock.seconds()
        for option in ("setTcpNoDelay", "setTcpKeepAlive"):
            setter = getattr(self.transport, option, None)
            if setter is not None:
                setter(True)
        tune_keepalive(self.transport)
        # Backpressure: the transport pauses us when its unsent output passes
        # its buffer size, and we then stop reading from this client.
        self.transport.registerProducer(self, True)
        self.factory.connection_made(self)
        self._log.event("connect")

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Cancel timers, mark the client disconnected, log it."""
        self._lost = True
        self.stop_reading_tokens()
        self._cancel_quiet_timer()
        cancel(self._release_call)
        self._cancel_stall_timer()
        if self.client_id is not None:
            self.factory.service.disconnect(self.client_id)
            self.factory.owners.pop(self.client_id, None)
        self._log.event("disconnect")
        self.factory.connection_lost(self)

    # -- framing hooks -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Note the time of the read; any new bytes end the quiet time of an old client's bare ID."""
        self._read_at = now = self.factory.clock.seconds()
        if self._quiet_timer is not None:
            self._cancel_quiet_timer()
        self._log.new_read(now)
        super().dataReceived(data)

    def readReceived(self, tokens: list[bytes]) -> None:
        """Handle a read of a registered client's reports and requests in one pass; else token by token.

        A read that completes a token counts as activity: bytes that never make a
        token (a trickle) do not keep the connection from its idle timeout.
        """
        if tokens and (tokens[0] or any(tokens)):
            self.last_activity = self._read_at
        client_id = self.client_id
        if (
            client_id is None
            or self._held
            or self._out
            or not self._reports_and_requests(client_id, tokens)
        ):
            super().readReceived(tokens)

    def _reports_and_requests(self, client_id: int, tokens: list[bytes]) -> bool:
        """Handle `tokens` if they are all reports and even/odd requests; False (and nothing done) if not.

        The common read, and the hot path: its requests are drawn in one call, its
        reports come down to the last one, its replies go in one write and its
        records are formatted together. The replies are exactly those of
        `tokenReceived`, token by token. Only called with no reply queued or held.
        """
        if len(tokens) == 1:
            return self._one_token(client_id, tokens[0])
        if not tokens:
            return True  # a partial token only
        evens = tokens.count(b"even")
        odds = tokens.count(b"odd")
        reports = len(tokens) - evens - odds
        if reports:
            numbers = (
                [t for t in tokens if t != b"even" and t != b"odd"] if evens or odds else tokens
            )
            for token in numbers:
                if SMALL_INTEGER.fullmatch(token) is None:
                    return False  # errors, arrays, long integers: token by token
        service = self.factory.service
        count = self._count
        replies: list[bytes] = []
        if reports:
            count("report", reports)
            service.report(client_id, int(numbers[-1]))
        if evens or odds:
            requests = [t for t in tokens if t == b"even" or t == b"odd"] if reports else tokens
            if evens:
                count("even", evens, evens)
            if odds:
                count("odd", odds, odds)
            drawn = service.give_many(client_id, list(map(b"odd".__eq__, requests)))
            replies = list(map(NUMBER_TOKENS.__getitem__, drawn))
            self._write(b" ".join(replies) + b" ")
        self._log.records(tokens, replies)
        return True

    def _one_token(self, client_id: int, token: bytes) -> bool:
        """`_reports_and_requests` for a read of one token, the most common read, without lists."""
        if token == b"even" or token == b"odd":
            kind: Parity = "even" if token == b"even" else "odd"
            reply = NUMBER_TOKENS[self.factory.service.give(client_id, kind)]
            self._write(reply + b" ")
            self._count(kind, 1, 1)
            self._log.exchange(token, reply)
        elif SMALL_INTEGER.fullmatch(token) is not None:
            self.factory.service.report(client_id, int(token))
            self._count("report")
            self._log.exchange(token, None)
        else:
            return False
        return True

    # -- backpressure (IPushProducer, driven by the transport) ---------------------

    _stall_timer: IDelayedCall | None = None

    _transport_paused = False

    def pauseProducing(self) -> None:
        """Our unsent output is over the transport's bound: stop reading this client.

        If it does not read its replies within the write-stall timeout, it is cut off.
        The tokens of the read being handled wait too (`_check_budget`).
        """
        self._transport_paused = True
        self.transport.pauseProducing()
        if self._stall_timer is None:
            self._stall_timer = self.factory.clock.callLater(
                self.factory.write_stall_timeout, self._write_stalled
            )

    def resumeProducing(self) -> None:
        """The client read its replies: handle its kept tokens and read from it again."""
        self._transport_paused = False
        self._cancel_stall_timer()
        self._resume()

    # -- the memory budget ---------------------------------------------------------

    def _unsent(self) -> int:
        """Bytes this connection holds: replies queued or held, log records not yet written.

        The transport's own buffer, the input of the read being handled and the
        next token's reply and records are bounded apart and kept in the margin
        between `CounterFactory.hold_at` and the budget.
        """
        return self._out_bytes + self._held_bytes + self._log_pending

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
        if self._lost or self._transport_paused:
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

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost does the cleanup."""

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

    def taken_over(self) -> None:
        """A new connection took this one's ID after its silence: free the ID now and close."""
        client_id = self.client_id
        assert client_id is not None
        self.factory.stats.connections["taken-over"] += 1
        self.log.info(
            "client {client_id}: {peer} was silent for {seconds:.1f} s; a new connection takes its ID",
            client_id=client_id,
            peer=self.peer,
            seconds=self.factory.clock.seconds() - self.last_activity,
        )
        self._log.event("taken-over")
        self.client_id = None
        self.factory.service.disconnect(client_id)
        self.stop_reading_tokens()
        self.abort()

    def idle_timeout(self) -> None:
        """Nothing came from this client for the idle timeout: close it."""
        self.factory.stats.connections["idle-timeout"] += 1
        self._log.event("idle-timeout")
        self.stop_reading_tokens()
        self.abort()

    def close(self) -> None:
        """Close once what was written is sent.

        Unregistered as the transport's producer first: a TCP transport whose
        producer is paused when its buffer drains resumes the producer instead of
        finishing the close, and the connection would stay half-closed.
        """
        if getattr(self.transport, "producer", None) is self:
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection now, and with it every reply not yet sent (even one released later)."""
        self._write = self.transport.write  # the aborted transport discards what it is given
        self.transport.abortConnection()

    def tokensDone(self) -> None:
        """Send this read's replies in one write; arm the old-client quiet timer."""
        if self._out or self._held or self._unstored:  # the one-pass read wrote its own
            self._send_replies()
        if (
            self.client_id is None
            and not self._stopped
            and 0 < self.pending_length <= 5
            and OLD_CLIENT_ID.fullmatch(self.pending)
        ):
            self._quiet_timer = self.factory.clock.callLater(
                self.factory.quiet_time, self._quiet_time_passed
            )

    def lineLengthExceeded(self, token: bytes) -> None:
        """Answer ``error:too-long`` and close the connection."""
        self._count("too-long")
        self._log.received(token[:64] + b"...")
        self._error("too-long")
        self._send_replies()
        self.close()

    def _quiet_time_passed(self) -> None:
        self._quiet_timer = None
        if self.client_id is None and OLD_CLIENT_ID.fullmatch(self.pending):
            token = self.take_pending()
            self._read_at = self.last_activity = now = self.factory.clock.seconds()
            self._log.new_read(now)
            self.tokenReceived(token)
            self._send_replies()

    def _cancel_quiet_timer(self) -> None:
        cancel(self._quiet_timer)
        self._quiet_timer = None

    # -- dispatch ----------------------------------------------------------------

    def tokenReceived(self, token: bytes) -> None:
        """Handle one token: exactly one reply for a request, none for a report."""
        self._token(token)
        if self._logging:
            self._log_pending += len(token) + RECORD_OVERHEAD
        self._check_budget()

    def _token(self, token: bytes) -> None:
        self._log.received(token)
        first = not self._seen_token
        self._seen_token = True
        kind = PARITY.get(token)
        if kind is not None:
            self._request(kind)
        elif token[:1] == b"[":
            self._array(token)
        elif self.client_id is None:
            if first and looks_like_http(token):
                self._refuse_http(token)
            else:
                self._register(token)
        else:
            value = parse_integer(token)
            if value is None:
                self._count("bad")
                self._error("bad-token")
            else:
                self._count("report")
                self.factory.service.report(self.client_id, value)

    def _register(self, token: bytes) -> None:
        self._count("id")
        client_id = parse_integer(token)
        if client_id is None:
            self._error("bad-token")
            return
        if not 0 <= client_id <= MAX_CLIENT_ID or token[:1] == b"-":
            self._error("bad-id")
            return
        try:
            start = self.factory.register(self, client_id)
        except IdInUse:
            self._error("id-in-use")
            self._send_replies()
            self.stop_reading_tokens()
            self.close()
            return
        self.client_id = client_id
        self._log.identify(client_id)
        self._log.event("register")
        self._reply("start", b"%d" % start)

    def _request(self, kind: Parity) -> None:
        self._count(kind)
        if self.client_id is None:
            self._error("not-registered")
            return
        self._reply(kind, NUMBER_TOKENS[self.factory.service.give(self.client_id, kind)])

    def _array(self, token: bytes) -> None:
        factory = self.factory
        self._count("array")
        values = parse_array(token)
        if values is None:
            self._error("bad-array")
            return
        service = factory.service
        service.merge(values)
        reply = factory.list_reply.reply()
        if service.waits_for_durability:
            # Answered once stored: the read's changes wait for one commit (`_send_replies`).
            held = _HeldReply("array", reply, ready=False)
            self._held.append(held)
            self._held_bytes += len(reply)
            self._unstored.append(held)
        else:
            self._reply("array", reply)

    def _refuse_http(self, token: bytes) -> None:
        self.factory.stats.errors["http"] += 1
        self.log.warn(
            "closing {peer}: it spoke HTTP ({method!r}) to the counter port",
            peer=self.peer,
            method=token[:16],
        )
        self._log.event("http-refused")
        self.stop_reading_tokens()
        self.close()

    # -- replies -----------------------------------------------------------------

    def _reply(self, kind: str, token: bytes) -> None:
        if self._held:
            self._held.append(_HeldReply(kind, token))
            self._held_bytes += len(token)
            return
        self._count(kind, 0, 1)
        self._out.append(token)
        self._out_bytes += len(token) + 1

    def _wait_until_stored(self) -> None:
        """Release the replies to this read's changes once every change so far is stored.

        One wait per read, however many changes it made; the replies behind them
        wait too, so replies keep request order.
        """
        replies, self._unstored = self._unstored, []
        durable = self.factory.service.when_durable()
        if durable is None:
            for held in replies:
                held.ready = True
            return

        def stored(_: None) -> None:
            for held in replies:
                held.ready = True
            self._release_soon()

        def failed(failure: Failure) -> None:
            self.log.failure("storing a change for {peer} failed", failure, peer=self.peer)
            self.factory.stats.errors["store-failed"] += len(replies)
            for held in replies:
                held.kind, held.token, held.ready = "error", b"error:store-failed", True
            self._release_soon()

        durable.addCallbacks(stored, failed)

    def _send_replies(self) -> None:
        """Write the replies that may go out now, in one write."""
        if self._unstored:
            self._wait_until_stored()
        if self._held:
            self._release_held()
        else:
            self._flush()

    def _release_soon(self) -> None:
        """Release held replies once this reactor turn is over.

        A commit acknowledges many changes at once; waiting for the end of the
        turn sends all of this connection's replies in one write.
        """
        if self._release_call is None and not self._lost:
            self._release_call = self.factory.clock.callLater(0, self._release_later)

    def _release_later(self) -> None:
        self._release_call = None
        self._release_held()
        self._resume()

    def _release_held(self) -> None:
        """Write what is queued and the ready replies at the head of the held queue, in order."""
        cancel(self._release_call)
        self._release_call = None
        while self._held and self._held[0].ready:
            held = self._held.popleft()
            self._count(held.kind, 0, 1)
            self._out.append(held.token)
            self._held_bytes -= len(held.token)
            self._out_bytes += len(held.token) + 1
            if self._out_bytes >= FLUSH_BYTES:
                self._flush()
        self._flush()

    def _error(self, reason: str) -> None:
        self.factory.stats.errors[reason] += 1
        self._reply("error", b"error:" + reason.encode("ascii"))

    def _flush(self) -> None:
        """Write (and log) the queued replies, each ended by a space, in one write."""
        out = self._out
        if out and not self._lost:
            self._log.records((), out)
            if self._logging:
                self._log_pending += self._out_bytes + RECORD_OVERHEAD * len(out)
            self._write(b" ".join(out) + b" ")
            out.clear()
            self._out_bytes = 0


class _Refusal(Protocol):
    """Tells a connection over the client limit ``error:too-many-clients`` and closes it."""

    factory: CounterFactory

    def connectionMade(self) -> None:
        log = self.factory.message_log.connection(describe_peer(self.transport.getPeer()))
        log.event("refused-too-many-clients")
        log.sent(b"error:too-many-clients")
        self.transport.write(b"error:too-many-clients ")
        self.transport.loseConnection()


def tune_keepalive(transport: object) -> None:
    """Make TCP keepalive find a vanished peer within about a minute (`KEEPALIVE_*`).

    The kernel's defaults wait two hours before the first probe. Only for a real
    TCP socket; Linux names the options, other systems keep their defaults.
    """
    get_handle = getattr(transport, "getHandle", None)
    handle = get_handle() if get_handle is not None else None
    if not isinstance(handle, socket.socket) or handle.type != socket.SOCK_STREAM:
        return
    if handle.family not in (socket.AF_INET, socket.AF_INET6):
        return
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            try:
                handle.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                pass  # the connection is already gone: connectionLost follows


class CounterFactory(Factory):
    """Builds `CounterProtocol`s that share one service, message log and stats."""

    log = Logger()
    protocol = CounterProtocol

    def __init__(
        self,
        service: NumberService,
        message_log: MessageLog,
        stats: Stats,
        clock: IReactorTime,
        quiet_time: float = DEFAULT_QUIET_TIME,
        reply_cap: int = DEFAULT_REPLY_CAP,
        max_token_length: int = DEFAULT_MAX_TOKEN_LENGTH,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        write_stall_timeout: float = DEFAULT_WRITE_STALL_TIMEOUT,
        connection_budget: int = DEFAULT_CONNECTION_BUDGET,
        takeover_time: float = DEFAULT_TAKEOVER_TIME,
    ) -> None:
        if reply_cap < MIN_REPLY_CAP:
            raise ValueError(f"reply cap must be at least {MIN_REPLY_CAP} bytes")
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.write_stall_timeout = write_stall_timeout
        self.connection_budget = connection_budget
        margin = (
            READ_SIZE
            + max_token_length
            + TRANSPORT_BUFFER
            + FLUSH_BYTES
            + 3 * (reply_cap + RECORD_OVERHEAD)
        )
        self.hold_at = max(connection_budget - margin, 0)
        """The replies, held or queued, and log records past which a connection's tokens wait.

        The rest of the budget is the margin for what is bounded apart: the input
        of one read and a partial token, the transport's buffer before it pauses
        us, one queue about to be written, and the reply and records of one more
        token."""
        self.takeover_time = takeover_time
        self.owners: dict[int, CounterProtocol] = {}
        """The live connection of each registered ID."""
        self._last_sweep: float | None = None
        self._idle_sweeper = LoopingCall(self.close_idle)
        self._idle_sweeper.clock = clock
        self._sweep: Iterator[CounterProtocol] = iter(())
        self._sweep_call: IDelayedCall | None = None
        self.service = service
        self.message_log = message_log
        self.stats = stats
        self.clock = clock
        self.quiet_time = quiet_time
        self.reply_cap = reply_cap
        self.max_token_length = max_token_length
        self.list_reply = ListReply(service, reply_cap)
        self.connections: set[CounterProtocol] = set()
        self._close_waiters: list[Deferred[None]] = []

    def buildProtocol(self, addr: IAddress) -> Protocol:
        """A counter protocol, or a refusal once `max_clients` connections are open."""
        if len(self.connections) >= self.max_clients:
            self.stats.connections["refused"] += 1
            self.stats.errors["too-many-clients"] += 1
            refusal = _Refusal()
            refusal.factory = self
            return refusal
        return super().buildProtocol(addr)

    def register(self, protocol: CounterProtocol, client_id: int) -> int:
        """Register `client_id` for `protocol`; its start number.

        An ID whose connection has completed no token for `takeover_time` is taken
        from that connection (closed) and given to this one: a client whose network
        vanished comes back at once instead of getting ``error:id-in-use`` until its
        old connection times out. A live, talking connection keeps its ID
        (`IdInUse`).
        """
        owner = self.owners.get(client_id)
        if (
            owner is not None
            and owner is not protocol
            and self.clock.seconds() - owner.last_activity >= self.takeover_time
        ):
            owner.taken_over()
        start = self.service.register(client_id)
        self.owners[client_id] = protocol
        return start

    def startFactory(self) -> None:
        """Start sweeping idle connections (at a quarter of the idle timeout)."""
        self._last_sweep = self.clock.seconds()
        self._idle_sweeper.start(self.idle_timeout / 4, now=False)

    def stopFactory(self) -> None:
        """Stop the idle sweeper."""
        if self._idle_sweeper.running:
            self._idle_sweeper.stop()
        cancel(self._sweep_call)
        self._sweep_call = None

    def close_idle(self) -> None:
        """Close every connection silent for longer than the idle timeout.

        `IDLE_SWEEP_SLICE` connections per reactor turn: at 19,000 connections
        one pass over all of them held the reactor for about 10 ms.
        """
        now = self.clock.seconds()
        last, self._last_sweep = self._last_sweep, now
        if last is not None and now - last > self.idle_timeout / 4 + STALL_SLACK:
            # The whole process stood still (the sweep is this late): the clients'
            # reads made meanwhile are still queued, and are read after this timer.
            # Judge them at the next sweep, once those reads are in.
            self.stats.connections["stall-skips"] += 1
            self.log.warn(
                "numd did not run for {seconds:.1f} s (stopped or starved); "
                "the idle sweep waits for the reads queued meanwhile",
                seconds=now - last,
            )
            return
        if self._sweep_call is None:
            self._sweep = iter(list(self.connections))
            self._sweep_slice()

    def _sweep_slice(self) -> None:
        self._sweep_call = None
        cutoff = self.clock.seconds() - self.idle_timeout
        checked = 0
        for protocol in islice(self._sweep, IDLE_SWEEP_SLICE):
            checked += 1
            if protocol.last_activity <= cutoff and not protocol.closing:
                protocol.idle_timeout()
        if checked == IDLE_SWEEP_SLICE:
            self._sweep_call = self.clock.callLater(0, self._sweep_slice)

    def connection_made(self, protocol: CounterProtocol) -> None:
        """Track a live connection."""
        self.stats.connections["opened"] += 1
        self.connections.add(protocol)

    def connection_lost(self, protocol: CounterProtocol) -> None:
        """Forget a closed connection."""
        self.stats.connections["closed"] += 1
        self.connections.discard(protocol)

        if not self.connections:
            waiters, self._close_waiters = self._close_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def close_all(self, clock: IReactorTime, timeout: float) -> Deferred[None]:
        """Close every live connection; fire when all are gone or `timeout` passed."""
        if not self.connections:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._close_waiters.append(waiter)
        for protocol in list(self.connections):
            protocol.stop_reading_tokens()
            protocol.close()
        waiter.addTimeout(timeout, clock)
        waiter.addErrback(self._abort_stragglers)
        return waiter

    def _abort_stragglers(self, failure: Failure) -> None:
        failure.trap(defer_TimeoutError)
        for protocol in list(self.connections):
            protocol.abort()
