"""Connections to Redis for numd: opened from a parsed address, every command bounded in time.

Why a wrapper around txredisapi: with ``reconnect=True`` it queues a command
made while it is disconnected and waits for the next connection without limit,
and a command that Redis never answers (a stopped or frozen server, a dead
network path) waits without limit too. A numd request must never hang on Redis:
`RedisClient.execute_command` fails with `RedisUnavailable` at once while there
is no connection, and `timeout` seconds after it was sent if no answer came.
Callers answer that with ``error:unavailable`` (counter) or 503 (HTTP). A command
that timed out may still have been applied by Redis (its change-stream entry
then says so); it was only not acknowledged.

A timeout also aborts the connection: Redis answers in order, so every command
sent after one that is stuck would wait behind it. txredisapi then reconnects,
with its backoff (Twisted's `ClientService` under it): the first attempt
`reconnect_delay` seconds after a loss, each next one e times later, up to
`max_reconnect_delay`, with some jitter. While it is down, commands fail at once;
once it is back they work again on the same `RedisClient`. `RedisClient.epoch`
counts the connections made, so that a follower of the change stream can tell it
reconnected (and that Redis may have restarted and lost or changed data meanwhile).
Every delay this module schedules runs on the clock it is given; txredisapi's own
reconnection timer runs on the global reactor, which only decides when to retry.

Replies stay bytes (``charset=None``, ``convertNumbers=False``), so that members
and 64-bit values are never decoded or turned into numbers on the way.

Addresses (`numd.store.redis.address`): ``redis://`` over TCP, ``rediss://`` over
TLS with Twisted's `optionsForClientTLS` (the system's trust roots, the host name
verified; `connect`'s `tls` takes other options, e.g. a private CA), and
``unix://``. The password (from a file or the environment) and the user name go
into ``AUTH``, the database number into ``SELECT``, on every new connection, sent
here rather than by txredisapi: it stops reconnecting for good when either fails,
even when only the connection was lost (a restart, a failed TLS handshake). Here
only Redis's refusal (a wrong password, no such database) is final, and
`RedisClient.refused` says why. ``redis+sentinel://`` addresses connect through
`numd.store.redis.sentinel.SentinelEndpoint`, which asks the sentinels for the
primary before every connection; the new connection is then checked with ``ROLE``.

A server that was the primary and is now a replica answers changes with
``READONLY`` (and blocking reads with ``UNBLOCKED``): the command fails with
`RedisUnavailable` and the connection is dropped, so that the next one finds the
primary again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from numd.service import StateUnavailable
from numd.store.redis.address import (
    RedisConfig,
    SentinelAddress,
    TcpAddress,
    UnixAddress,
)
from numd.store.redis.sentinel import SentinelEndpoint

DEFAULT_TIMEOUT = 2.0
"""Seconds a command may wait for its answer before it fails with `RedisUnavailable`."""
DEFAULT_CONNECT_TIMEOUT = 2.0
"""Seconds one connection attempt may take (the TCP or Unix-socket connection, then
``AUTH`` and ``SELECT``)."""
DEFAULT_RECONNECT_DELAY = 0.1
"""Seconds from losing the connection to the first attempt to connect again."""
DEFAULT_MAX_RECONNECT_DELAY = 2.0
"""The longest wait between two attempts to connect (the backoff grows by e up to it)."""

UNAVAILABLE_REPLIES = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "NOREPLICAS")
"""Error replies that mean Redis cannot serve right now (loading its data after a restart,
running a long script, a replica without its primary, a primary without the replicas
``min-replicas-to-write`` asks for), not that the command was wrong."""
DEMOTED_REPLIES = ("READONLY", "UNBLOCKED")
"""Error replies that mean the server is no longer the primary (a failover made it a replica):
the connection is dropped, so that the next one finds the primary."""


class RedisUnavailable(StateUnavailable):
    """Redis could not be reached, or did not answer in time: nothing was acknowledged."""


class Commands(Protocol):
    """What `RedisClient` needs of a connection: txredisapi's connection handler."""

    def execute_command(self, *args: bytes) -> Deferred[Any]:
        """Send one command; fire with its reply, or fail with the connection's or Redis's error."""


class RedisClient:
    """Redis commands that never wait longer than `timeout` seconds, on a reconnecting connection.

    `connect` makes one. The connection calls `connection_made`, `connection_lost`
    and `connection_refused` as its state changes; `abort` (set by `connect`)
    drops a connection whose answers are overdue.
    """

    log = Logger()

    def __init__(
        self,
        commands: Commands,
        clock: IReactorTime,
        timeout: float = DEFAULT_TIMEOUT,
        where: str = "Redis",
        abort: Callable[[], None] | None = None,
        close: Callable[[], Deferred[None]] | None = None,
        start: Callable[[], None] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout {timeout!r} s must be positive")
        self._commands = commands
        self._clock = clock
        self.timeout = timeout
        self.where = where
        """What this connects to, for messages (never with a password)."""
        self._abort = abort
        self._close = close
        self._start = start
        self.epoch = 0
        """How many connections have been made so far (a new one after each loss)."""
        self.connected = False
        """Whether a connection is up and ready for commands."""
        self.refused: str | None = None
        """Why Redis refused this client for good (e.g. a wrong password), else None."""
        self.timeouts = 0
        """Commands that failed because no answer came within their time."""
        self._waiting: list[Deferred[None]] = []

    # -- commands ------------------------------------------------------------------

    def execute_command(self, *args: bytes, timeout: float | None = None) -> Deferred[Any]:
        """Send one command; fire with its reply within `timeout` seconds (default: the client's).

        Fails with `RedisUnavailable` at once while disconnected, and when no answer
        came in time (the connection is then dropped and made again); an error reply
        that means Redis cannot serve now (`UNAVAILABLE_REPLIES`) fails the same way.
        Other error replies fail with txredisapi's ``ResponseError``.
        """
        if not self.connected:
            return fail(RedisUnavailable(self._down()))
        seconds = self.timeout if timeout is None else timeout
        d = self._commands.execute_command(*args)
        d.addTimeout(seconds, self._clock)
        return d.addErrback(self._unavailable, seconds)

    def _unavailable(self, failure: Failure, seconds: float) -> Failure:
        """`failure` as `RedisUnavailable` if it says the connection, not the command, failed."""
        if failure.check(DeferredTimeoutError):
            self.timeouts += 1
            self.log.warn(
                "{where}: no answer within {seconds} s; dropping the connection",
                where=self.where,
                seconds=seconds,
            )
            if self._abort is not None:
                self._abort()
            return Failure(RedisUnavailable(f"{self.where}: no answer within {seconds} s"))
        txredisapi = _txredisapi()
        error = failure.value
        if isinstance(error, txredisapi.ResponseError) and _first_word(error) in DEMOTED_REPLIES:
            self.log.warn(
                "{where} is no longer the primary ({error}); dropping the connection",
                where=self.where,
                error=str(error),
            )
            self.abort()
            return Failure(RedisUnavailable(f"{self.where}: {error}"))
        if isinstance(error, txredisapi.ConnectionError) or (
            isinstance(error, txredisapi.ResponseError)
            and _first_word(error) in UNAVAILABLE_REPLIES
        ):
            return Failure(RedisUnavailable(f"{self.where}: {error}"))
        return failure

    def _down(self) -> str:
        """Why commands cannot be sent now."""
        if self.refused is not None:
            return f"{self.where}: {self.refused}"
        return f"not connected to {self.where}"

    # -- the connection ------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (once), for a client made by `connect` with ``start=False``."""
        start, self._start = self._start, None
        if start is not None:
            start()

    def when_connected(self) -> Deferred[None]:
        """Fire once a connection is up (at once if one is); fail if Redis refused this client.

        Cancelling the Deferred stops the wait. Without a timeout of its own: the
        caller adds one (``addTimeout``) if it must not wait for ever.
        """
        if self.connected:
            return succeed(None)
        if self.refused is not None:
            return fail(RedisUnavailable(self._down()))

        def forget(d: Deferred[None]) -> None:
            if d in self._waiting:
                self._waiting.remove(d)

        d: Deferred[None] = Deferred(forget)
        self._waiting.append(d)
        return d

    def connection_made(self) -> None:
        """Called by the connection: a new connection is up (after ``AUTH`` and ``SELECT``)."""
        self.epoch += 1
        self.connected = True
        self.log.info(
            "connected to {where} (connection {epoch})", where=self.where, epoch=self.epoch
        )
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def connection_lost(self, why: str) -> None:
        """Called by the connection: it was lost; txredisapi tries again, with backoff."""
        if self.connected:
            self.connected = False
            self.log.warn("lost {where}: {why}", where=self.where, why=why)

    def connection_refused(self, why: str) -> None:
        """Called by the connection: Redis refused this client (``AUTH`` or ``SELECT`` failed);
        it does not try again."""
        self.connected = False
        self.refused = why
        self.log.error("{where} refused numd: {why}", where=self.where, why=why)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(RedisUnavailable(self._down()))

    def abort(self) -> None:
        """Drop the connection at once (txredisapi makes a new one, with backoff)."""
        if self._abort is not None:
            self._abort()

    def close(self) -> Deferred[None]:
        """Close the connection for good; fires once it is closed."""
        self.connected = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(RedisUnavailable(f"{self.where}: closed"))
        if self._close is None:
            return succeed(None)
        return self._close()


class _Refused(Exception):
    """Redis refused the password or the database number of a new connection."""


async def _log_in(
    conn: Any,
    config: RedisConfig,
    clock: IReactorTime,
    timeout: float,
    preload: Sequence[bytes] = (),
    check: Callable[[Any, float], Awaitable[None]] | None = None,
) -> None:
    """Send ``AUTH`` (if there is a password) and ``SELECT`` (if the database is not 0) on a
    new connection, then ``SCRIPT LOAD`` each of `preload`; `_Refused` if Redis refuses any.
    Then run `check` (Sentinel's ``ROLE`` check, after ``AUTH``: with a password Redis
    answers nothing else before it)."""
    txredisapi = _txredisapi()
    address = config.address
    steps = []
    if config.password is not None:
        user = [address.username.encode()] if address.username else []
        steps.append(("could not log in", [b"AUTH", *user, config.password.encode()]))
    if address.db:
        steps.append((f"could not select database {address.db}", [b"SELECT", b"%d" % address.db]))
    for source in preload:
        steps.append(
            ("could not load numd's scripts (Redis 7 or later?)", [b"SCRIPT", b"LOAD", source])
        )
    for what, command in steps:
        try:
            await conn.execute_command(*command).addTimeout(timeout, clock)
        except txredisapi.ResponseError as e:
            if str(e).split(" ", 1)[0] in UNAVAILABLE_REPLIES:
                raise
            raise _Refused(f"{what}: {e}") from None
    if check is not None:
        await check(conn, timeout)


def _first_word(error: Exception) -> str:
    """The first word of an error reply: its kind (``READONLY``, ``LOADING``, ...)."""
    return str(error).split(" ", 1)[0]


def _txredisapi() -> Any:
    """The txredisapi module, imported on first use: importing it imports the global reactor,
    which twistd chooses only after it has loaded numd's options."""
    import txredisapi  # type: ignore[import-untyped]  # no type information shipped

    return txredisapi


def describe(config: RedisConfig) -> str:
    """Where `config` points, for messages: the address without any password."""
    address = config.address
    user = f"{address.username}@" if address.username else ""
    if isinstance(address, TcpAddress):
        scheme = "rediss" if address.tls else "redis"
        host = f"[{address.host}]" if ":" in address.host else address.host
        return f"{scheme}://{user}{host}:{address.port}/{address.db}"
    if isinstance(address, UnixAddress):
        return f"unix://{user}{address.path}?db={address.db}"
    hosts = ",".join(f"{h}:{p}" for h, p in address.sentinels)
    return f"redis+sentinel://{user}{hosts}/{address.master}/{address.db}"


def endpoint_for(
    config: RedisConfig,
    reactor: Any,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    tls: IOpenSSLClientConnectionCreator | None = None,
    reconnect_delay: float = DEFAULT_RECONNECT_DELAY,
    max_reconnect_delay: float = DEFAULT_MAX_RECONNECT_DELAY,
) -> IStreamClientEndpoint:
    """The client endpoint of `config`'s address on `reactor` (TCP, TLS, a Unix socket, or the
    primary that Sentinel names, found again on each connection)."""
    address = config.address
    if isinstance(address, SentinelAddress):
        return SentinelEndpoint(
            address,
            reactor,
            config.password,
            connect_timeout=connect_timeout,
            retry_delay=reconnect_delay,
            max_retry_delay=max_reconnect_delay,
        )
    if isinstance(address, UnixAddress):
        return UNIXClientEndpoint(reactor, address.path, timeout=connect_timeout)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, address.host, address.port, timeout=connect_timeout
    )
    if address.tls:
        if tls is None:
            from twisted.internet.ssl import optionsForClientTLS

            tls = optionsForClientTLS(address.host)
        endpoint = wrapClientTLS(tls, endpoint, reactor)
    return endpoint


def connect(
    config: RedisConfig,
    reactor: Any,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    reconnect_delay: float = DEFAULT_RECONNECT_DELAY,
    max_reconnect_delay: float = DEFAULT_MAX_RECONNECT_DELAY,
    tls: IOpenSSLClientConnectionCreator | None = None,
    start: bool = True,
    preload: Sequence[bytes] = (),
) -> RedisClient:
    """A `RedisClient` for `config`, connecting (and reconnecting) in the background.

    It is returned at once, before any connection is made: `RedisClient.when_connected`
    fires once one is up, and until then commands fail with `RedisUnavailable`. With
    `start` False it connects only once `RedisClient.start` is called (twistd builds
    the service tree before it forks into the background; connections wait for the
    service to start). Each of `preload` (Lua scripts) is loaded on every new connection
    before it takes commands, so that a script called by its SHA1 (``EVALSHA``) is
    never missing after Redis restarted: reloading it then would let the commands sent
    behind it overtake it.
    `reactor` provides the endpoints (TCP, Unix sockets) and the clock for the
    command timeouts.
    """
    txredisapi = _txredisapi()
    endpoint = endpoint_for(
        config, reactor, connect_timeout, tls, reconnect_delay, max_reconnect_delay
    )
    check = endpoint.check_primary if isinstance(endpoint, SentinelEndpoint) else None
    where = describe(config)

    base: Any = txredisapi.RedisFactory

    class Factory(base):
        """txredisapi's factory, telling the client when its connection comes and goes."""

        initialDelay = reconnect_delay
        maxDelay = max_reconnect_delay

        def addConnection(self, conn: Any) -> None:
            super().addConnection(conn)
            if conn in self.pool:
                d = ensureDeferred(_log_in(conn, config, reactor, connect_timeout, preload, check))
                d.addCallbacks(ready, failed, callbackArgs=(conn,), errbackArgs=(conn,))

        def delConnection(self, conn: Any) -> None:
            super().delConnection(conn)
            if not self.pool:
                client.connection_lost("connection closed")

    # AUTH and SELECT are sent here, not by txredisapi: it stops reconnecting for good
    # when either fails, even when only the connection was lost (a restart, a TLS
    # handshake that failed). Here only Redis's refusal is final.
    factory = Factory(
        where,
        None,
        1,
        isLazy=True,
        charset=None,
        password=None,
        replyTimeout=None,
        convertNumbers=False,
    )
    # Nobody waits on the factory's own Deferred (the client is lazy): errors go to the client.
    factory.deferred.addErrback(lambda _: None)

    def ready(_: None, conn: Any) -> None:
        if conn in factory.pool and conn.connected:
            client.connection_made()

    def failed(failure: Failure, conn: Any) -> None:
        if failure.check(_Refused):
            client.connection_refused(str(failure.value))
            factory.stopTrying()
            conn.transport.loseConnection()
        else:  # lost, overdue, or Redis not ready: a new connection, after the backoff
            conn.transport.abortConnection()

    def abort() -> None:
        for conn in list(factory.pool):
            conn.transport.abortConnection()

    def close() -> Deferred[None]:
        d: Deferred[None] = factory.disconnect()
        return d.addCallback(lambda _: None)

    client = RedisClient(
        factory.handler,
        reactor,
        timeout,
        where,
        abort,
        close,
        lambda: factory.startConnecting(endpoint),
    )
    if start:
        client.start()
    return client
