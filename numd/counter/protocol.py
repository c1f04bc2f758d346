"""The counter protocol's listener: `CounterFactory`, its limits and their defaults.

A counter port serves one `CounterFactory`; it builds a
`numd.counter.connection.CounterProtocol` for each client, shares with them the
state service, the message log, the counters and the reply cap, and keeps what
concerns all of them: the connection limit, the idle sweep, ID takeover, the
socket options of every connection and closing them all at shutdown.

Each default is defined here, with the factory that uses it, and `numd.options`
takes them from here. See ``docs/protocol.md`` for the protocol itself.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from itertools import islice

from twisted.internet.defer import Deferred, succeed
from twisted.internet.defer import TimeoutError as defer_TimeoutError
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from numd.counter.budget import hold_at
from numd.counter.connection import CounterProtocol
from numd.counter.framing import IStreamTransport
from numd.counter.replies import ListReply
from numd.messagelog import MessageLog, describe_peer
from numd.service import NumberService
from numd.stats import Stats
from numd.timers import cancel

__all__ = ["CounterFactory", "CounterProtocol", "tune_keepalive"]

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
log records not yet written. Past it numd handles none of its tokens until they drain
(`numd.counter.budget`)."""
MIN_CONNECTION_BUDGET = 512 * 1024
DEFAULT_TAKEOVER_TIME = 5.0
"""Seconds of silence after which a connection's ID goes to a new connection for that ID
(clients report every 0.5 s)."""
IDLE_SWEEP_SLICE = 1000
"""Connections the idle sweep checks per reactor turn."""
STALL_SLACK = 1.0
"""Seconds the idle sweep may run late before it takes the lateness for a stall of the
whole process (SIGSTOP, a VM pause, swapping) and waits for the reads queued meanwhile."""
KEEPALIVE_IDLE = 20
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 8
"""TCP keepalive: the first probe after 20 s of silence, then every 5 s, 8 unanswered
probes and the connection is reset: a vanished peer is found within a minute."""


class _Refusal(Protocol):
    """Tells a connection over the client limit ``error:too-many-clients`` and closes it."""

    factory: CounterFactory
    transport: IStreamTransport  # set by makeConnection

    def connectionMade(self) -> None:
        log = self.factory.message_log.connection(describe_peer(self.transport.getPeer()))
        log.event("refused-too-many-clients")
        log.sent(b"error:too-many-clients")
        self.transport.write(b"error:too-many-clients ")
        self.transport.loseConnection()


def tune_keepalive(transport: object) -> None:
    """Make TCP keepalive find a vanished peer within about a minute (`KEEPALIVE_*`).

    The kernel's defaults wait two hours before the first probe. Only for a real
    TCP socket (under TLS, the one under the TLS layer); Linux names the options,
    other systems keep their defaults.
    """
    handle = _socket_under(transport)
    if handle is None or handle.type != socket.SOCK_STREAM:
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


def _socket_under(transport: object) -> socket.socket | None:
    """The socket of `transport`, or of the transport a wrapper (TLS) runs over; None if it has none.

    A TLS connection's handle is its OpenSSL connection, not a socket: the
    socket is its wrapped transport's.
    """
    for _ in range(2):
        get_handle = getattr(transport, "getHandle", None)
        handle = get_handle() if get_handle is not None else None
        if isinstance(handle, socket.socket):
            return handle
        transport = getattr(transport, "transport", None)
    return None


class CounterFactory(Factory[Protocol]):
    """Builds `CounterProtocol`s that share one service, message log and stats."""

    log = Logger()
    protocol = CounterProtocol
    noisy = False
    """No "Starting factory <... at 0x...>" lines: the start-up log says where it listens."""

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
        self.hold_at = hold_at(connection_budget, max_token_length, reply_cap)
        """The replies, held or queued, and log records past which a connection's tokens wait."""
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

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        """A counter protocol, or a refusal once `max_clients` connections are open."""
        if len(self.connections) >= self.max_clients:
            self.stats.connections["refused"] += 1
            self.stats.errors["too-many-clients"] += 1
            refusal = _Refusal()
            refusal.factory = self
            return refusal
        return super().buildProtocol(addr)

    def register(self, protocol: CounterProtocol, client_id: int) -> int | Deferred[int]:
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
        start = self.service.claim(client_id)
        if isinstance(
            start, Deferred
        ):  # the shared state: the ID is this connection's once claimed

            def claimed(number: int) -> int:
                self.owners[client_id] = protocol
                return number

            return start.addCallback(claimed)
        self.owners[client_id] = protocol
        return start

    def talking(self, since: float) -> list[int]:
        """The IDs whose connections completed a token since reactor time `since`."""
        return [i for i, p in self.owners.items() if p.last_activity >= since]

    def leases_lost(self, client_ids: Sequence[int]) -> None:
        """Another instance holds these IDs now: close their connections here."""
        for client_id in client_ids:
            owner = self.owners.get(client_id)
            if owner is not None:
                owner.lease_lost()

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
        """Track a live connection; tune its socket: no Nagle delay, keepalive (`tune_keepalive`)."""
        transport = protocol.transport
        for option in ("setTcpNoDelay", "setTcpKeepAlive"):
            setter = getattr(transport, option, None)
            if setter is not None:
                setter(True)
        tune_keepalive(transport)
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
