"""One counter client's connection: registration, reports, even/odd requests and arrays.

See ``docs/protocol.md`` for the byte-level reference. In short, every message is
an ASCII token ended by one space; the server answers each request with exactly
one token, in order, and never sends anything a client did not ask for.

A read is handled on one of two paths, pinned together by an equivalence test
(``tests/test_connection.py``: the same reads, whole and token by token, give
the same replies, registry, counters and log):

- the hot path (`CounterProtocol._reports_and_requests`, and `_one_token` for
  the commonest read, one token): a registered client's read of plain reports
  and even/odd requests, with nothing queued before it (`_queued`), handled in
  one pass, its replies written at once in one write;
- the token path (`tokenReceived`): anything else, one token at a time, its
  replies queued (`_reply`) or held for the store (`numd.counter.held`), and
  written together when the read is done (`tokensDone`).

Both take their grammar and reply tokens from `numd.counter.tokens`. The hot path
stays written out flat: at about 2 us a read, one more call per token shows.

The connection keeps within a memory budget as its transport's streaming
producer (`numd.counter.budget`); the limits and their defaults are the
factory's (`numd.counter.protocol`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from numd.counter.budget import FLUSH_BYTES, RECORD_OVERHEAD, BudgetedReceiver
from numd.counter.direct_write import writer_for
from numd.counter.framing import TokenReceiver
from numd.counter.held import HeldReplies
from numd.counter.tokens import (
    NUMBER_TOKENS,
    OLD_CLIENT_ID,
    PARITY,
    SMALL_INTEGER,
    looks_like_http,
    parse_array,
    parse_integer,
)
from numd.messagelog import describe_peer
from numd.service import MAX_CLIENT_ID, IdInUse, Parity, StateUnavailable
from numd.timers import cancel

if TYPE_CHECKING:
    from numd.counter.protocol import CounterFactory

STORE_FAILED = b"error:store-failed"
UNAVAILABLE = b"error:unavailable"
"""What a reply becomes when the shared state (Redis) could not be reached."""
"""What a reply whose change could not be stored becomes."""


@implementer(IPushProducer)
class CounterProtocol(BudgetedReceiver):
    """One counter client's connection."""

    log = Logger()
    factory: CounterFactory

    client_id: int | None = None
    peer = "?"
    _lost = False
    _release_call: IDelayedCall | None = None
    _seen_token = False
    _quiet_timer: IDelayedCall | None = None
    _queued = False
    """A reply waits its turn: queued to be written (`_out`) or held (`_held`).

    The "nothing queued" test of the hot path: while it is true, a read's
    replies must go behind those, so the read takes the token path. One flag,
    kept by `_reply`, `_array` and `_flush`, for one test on the common path."""

    def connectionMade(self) -> None:
        """Note the peer, register the connection with the factory, log it."""
        factory = self.factory
        self.peer = describe_peer(self.transport.getPeer())
        self.MAX_LENGTH = factory.max_token_length
        self._log = factory.message_log.connection(self.peer)
        self._logging = factory.message_log.enabled
        self._count = factory.stats.count
        """The one helper for this connection's message counters (`numd.stats.Stats.count`)."""
        self._out: list[bytes] = []
        self._write = writer_for(self.transport)
        """Where replies go: straight to the socket while it takes them (`numd.counter.direct_write`)."""
        self._held = HeldReplies(self._release_soon, self._store_failed)
        """Replies waiting for their changes to be stored, or behind one that is."""
        self._out_bytes = 0
        """Bytes of the replies in `_out`."""
        self._log_pending = 0
        """Bytes of this connection's message log records not known to be written."""
        self._read_at = self.last_activity = factory.clock.seconds()
        self.start_producing()  # backpressure: numd.counter.budget
        factory.connection_made(self)
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
        TokenReceiver.dataReceived(self, data)

    def readReceived(self, tokens: list[bytes]) -> None:
        """Handle a read of a registered client's reports and requests in one pass; else token by token.

        A read that completes a token counts as activity: bytes that never make a
        token (a trickle) do not keep the connection from its idle timeout.
        """
        if tokens and (tokens[0] or any(tokens)):
            self.last_activity = self._read_at
        client_id = self.client_id
        if client_id is None or self._queued or not self._reports_and_requests(client_id, tokens):
            TokenReceiver.readReceived(self, tokens)

    def _reports_and_requests(self, client_id: int, tokens: list[bytes]) -> bool:
        """Handle `tokens` if they are all reports and even/odd requests; False (and nothing done) if not.

        The common read, and the hot path: its requests are drawn in one call, its
        reports come down to the last one, its replies go in one write and its
        records are formatted together. The replies are exactly those of
        `tokenReceived`, token by token. Only called with nothing queued.
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

    # -- closing -----------------------------------------------------------------

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

    def lease_lost(self) -> None:
        """Another instance holds this connection's ID now (its lease here ran out while the
        connection was silent): answer ``error:id-in-use`` and close; nothing to free here."""
        client_id, self.client_id = self.client_id, None
        self.factory.stats.connections["lease-lost"] += 1
        self.log.info(
            "client {id}: {peer} lost its ID to another instance", id=client_id, peer=self.peer
        )
        self._log.event("lease-lost")
        if client_id is not None and self.factory.owners.get(client_id) is self:
            del self.factory.owners[client_id]
        self._refuse_id("id-in-use")

    def idle_timeout(self) -> None:
        """Nothing came from this client for the idle timeout: close it."""
        self.factory.stats.connections["idle-timeout"] += 1
        self._log.event("idle-timeout")
        self.stop_reading_tokens()
        self.abort()

    def abort(self) -> None:
        """Drop the connection now, and with it every reply not yet sent (even one released later)."""
        self._write = self.transport.write  # the aborted transport discards what it is given
        self.transport.abortConnection()

    # -- the token path ----------------------------------------------------------

    def tokensDone(self) -> None:
        """Send this read's replies in one write; arm the old-client quiet timer."""
        if self._queued:  # the one-pass read wrote its own
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
            self._refuse_id("id-in-use")
            return
        if isinstance(start, Deferred):
            # The shared state answers later: the read's other tokens wait for it.
            self._claiming = True
            self.hold_tokens()
            self.transport.pauseProducing()
            start.addCallbacks(self._claimed, self._not_claimed, (client_id,))
            return
        self._registered(client_id, start)

    def _registered(self, client_id: int, start: int) -> None:
        self.client_id = client_id
        self._log.identify(client_id)
        self._log.event("register")
        self._reply("start", b"%d" % start)

    def _refuse_id(self, reason: str) -> None:
        self._error(reason)
        self._send_replies()
        self.stop_reading_tokens()
        self.close()

    def _claimed(self, start: int, client_id: int) -> None:
        """The shared state registered `client_id`: answer, then handle the tokens that waited."""
        self._claiming = False
        if self._lost:  # gone meanwhile: free the ID again
            if self.factory.owners.get(client_id) is self:
                del self.factory.owners[client_id]
            self.factory.service.disconnect(client_id)
            return
        self._registered(client_id, start)
        self._send_replies()
        self._resume()

    def _not_claimed(self, failure: Failure) -> None:
        """The shared state refused the ID (in use on some instance) or could not be reached."""
        self._claiming = False
        if not self._lost:
            self._refuse_id("id-in-use" if failure.check(IdInUse) else "unavailable")

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
            # Shared state: the reply is built once the merge is in the local copy.
            self._held.hold(
                "array", reply, factory.list_reply.reply if service.applies_later else None
            )
            self._queued = True
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
        """Queue a reply to write at the end of the read; behind held ones, hold it too."""
        if self._held:
            self._held.append(kind, token)
            return
        self._count(kind, 0, 1)
        self._out.append(token)
        self._out_bytes += len(token) + 1
        self._queued = True

    def _error(self, reason: str) -> None:
        self.factory.stats.errors[reason] += 1
        self._reply("error", b"error:" + reason.encode("ascii"))

    def _send_replies(self) -> None:
        """Write the replies that may go out now, in one write.

        The replies to this read's changes wait for one answer of the store,
        asked now, after the read's last change; the replies behind them wait
        too, so replies keep request order.
        """
        held = self._held
        if held.unwaited:
            held.wait(self.factory.service.when_durable())
        if held:
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

    def _store_failed(self, failure: Failure, replies: int) -> None:
        """The change `replies` held replies waited for was not stored: each becomes an error."""
        if failure.check(StateUnavailable):
            self.log.warn(
                "a change for {peer} was not applied: {why}", peer=self.peer, why=failure.value
            )
            self.factory.stats.errors["unavailable"] += replies
        else:
            self.log.failure("storing a change for {peer} failed", failure, peer=self.peer)
            self.factory.stats.errors["store-failed"] += replies
        self._release_soon()

    def _release_later(self) -> None:
        self._release_call = None
        self._release_held()
        self._resume()

    def _release_held(self) -> None:
        """Write what is queued and the ready replies at the head of the held queue, in order."""
        cancel(self._release_call)
        self._release_call = None
        pop_ready = self._held.pop_ready
        while (held := pop_ready()) is not None:
            if held.failed:
                kind, token = "error", UNAVAILABLE if held.unavailable else STORE_FAILED
            else:
                kind, token = held.kind, held.token
            self._count(kind, 0, 1)
            self._out.append(token)
            self._out_bytes += len(token) + 1
            if self._out_bytes >= FLUSH_BYTES:
                self._flush()
        self._flush()

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
        self._queued = bool(out) or bool(self._held)
