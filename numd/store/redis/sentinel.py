"""Redis Sentinel: on every (re)connection, ask the sentinels which server is the primary.

``--db redis+sentinel://h1:26379,h2:26379/MASTERNAME/N`` names sentinels, not a
server. `SentinelEndpoint` is the client endpoint `numd.store.redis.connection`
gives txredisapi's reconnecting connection for such an address: each `connect`
asks the sentinels in turn ``SENTINEL GET-MASTER-ADDR-BY-NAME MASTERNAME`` (each
over a txredisapi connection of its own, closed after the answer, and given
`DEFAULT_SENTINEL_TIMEOUT` seconds to connect and answer before the next one is
asked), then connects to the server named. The sentinel that answered is asked
first next time, as Redis's guidelines for Sentinel clients advise. txredisapi calls
`connect` again after every loss, so the same `RedisClient` follows a failover.
A named primary that cannot be reached is how a failover starts: the endpoint then
asks the sentinels again every reconnection delay, for up to the longest one, and
connects as soon as they name another server, rather than let the backoff wait past
the failover. There is no TLS variant (``rediss+sentinel://``).

A new connection is then checked (`SentinelEndpoint.check_primary`, after ``AUTH``
and ``SELECT``: ``ROLE`` needs the password): a server that says it is not the
primary (the sentinels' answer was stale) is dropped and the sentinels are asked
again after a delay that grows e times, from the reconnection delay up to its
maximum, for as long as that goes on.

A failover demotes the old primary. Checked against Redis 7.0: when Sentinel turns
a returning old primary into a replica it kills its normal clients (``CLIENT KILL
TYPE normal``), which is a lost connection here; but ``REPLICAOF`` by other means
keeps them connected, and they get ``READONLY`` to every change (and ``UNBLOCKED``
in a blocking read). `RedisClient` answers both replies by failing the command with
`RedisUnavailable` and dropping the connection, so that the next one asks the
sentinels.

Passwords: the primary gets ``AUTH`` with the Redis password, as any Redis address
does. A sentinel is first asked without one: Debian's ``/etc/redis/sentinel.conf``
sets no ``requirepass`` (only ``sentinel auth-pass`` for talking to the primary),
and a sentinel without a password answers ``AUTH`` with an error. Only a sentinel
that answers ``NOAUTH`` gets the same user name and password as Redis. Messages name
sentinels and servers by host and port only, never with a password.

What a failover guarantees: Redis replicates asynchronously. A change is
acknowledged once the primary has applied it (and, with ``appendfsync always``,
written it to its append-only file), not once a replica has it; when the primary
dies, the replica that the sentinels promote lacks what it had not received yet,
and those changes are lost although they were acknowledged. ``appendfsync`` does
not change that: the old primary's file is discarded when it returns as a replica.
``bench/sentinel_failover.py`` (``bench/notes.md``, "Sentinel failover") lost none
of about 3,000 acknowledged merges per run with the replica on the same machine,
and 2-4 per run (about rate x lag) with the replica 5 ms behind; changes failed at
once with `RedisUnavailable` for the failover's 2.3 s. A primary cut off from its
sentinels and replicas but not from numd loses everything it acknowledges until it
is demoted.

The mitigations, each on the primary and its replicas: ``min-replicas-to-write 1``
with ``min-replicas-max-lag`` S makes a primary that no replica has acknowledged
for S seconds refuse changes (``NOREPLICAS``, which numd treats as unavailable),
which bounds a partitioned primary's loss to about S seconds, not the last
milliseconds before a crash. Its cost is availability: with one replica, a replica
down stops every change, and so does a failover until the old primary is back as
a replica (13 s instead of 2.3 s in the bench), so it wants two replicas or more.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from numd.store.redis.address import SentinelAddress

DEFAULT_SENTINEL_TIMEOUT = 0.5
"""Seconds one sentinel may take to accept the connection and name the primary before the
next one is asked."""


class NoPrimary(Exception):
    """No sentinel named the primary (or the server named is not it): this connection
    attempt failed, and txredisapi makes another after its backoff."""


def _txredisapi() -> Any:
    """The txredisapi module, imported on first use (importing it imports the global reactor)."""
    import txredisapi  # type: ignore[import-untyped]  # no type information shipped

    return txredisapi


def _hostport(host: str, port: int) -> str:
    """``host:port`` for messages (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """Connects to the primary that the sentinels of `address` name at the time of each `connect`.

    `reactor` provides TCP connections and the clock of every bound here. Every
    connection (to a sentinel or the primary) may take `connect_timeout` seconds
    to be made; each sentinel `sentinel_timeout` seconds in all. A server found not
    to be the primary delays the next attempt by `retry_delay` seconds, e times
    more after each such finding, up to `max_retry_delay`.
    """

    log = Logger()

    def __init__(
        self,
        address: SentinelAddress,
        reactor: Any,
        password: str | None = None,
        *,
        connect_timeout: float,
        retry_delay: float,
        max_retry_delay: float,
        sentinel_timeout: float = DEFAULT_SENTINEL_TIMEOUT,
    ) -> None:
        if not address.sentinels:
            raise ValueError("no sentinel to ask")
        for name, seconds in (
            ("connect_timeout", connect_timeout),
            ("sentinel_timeout", sentinel_timeout),
        ):
            if not seconds > 0:
                raise ValueError(f"{name} {seconds!r} s must be positive")
        self.master = address.master
        self.sentinels = list(address.sentinels)
        """The sentinels, in the order they will be asked (the last one that answered first)."""
        self._username = address.username
        self._password = password
        self._reactor = reactor
        self.connect_timeout = connect_timeout
        self.sentinel_timeout = sentinel_timeout
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.primary: tuple[str, int] | None = None
        """The server the sentinels named last (host, port), None before they named one."""
        self.not_primary = 0
        """How many connections in a row were to a server that said it is not the primary."""
        self._last_failure: str | None = None

    def __repr__(self) -> str:
        hosts = ",".join(_hostport(h, p) for h, p in self.sentinels)
        return f"<SentinelEndpoint {self.master} via {hosts}>"

    # -- IStreamClientEndpoint -----------------------------------------------------------

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Ask the sentinels for the primary, then connect `protocolFactory` to it.

        Fails with `NoPrimary` if no sentinel named one, and with the connection's
        error if it could not be reached. Cancelling stops the attempt.
        """
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        if self.not_primary:
            await deferLater(self._reactor, self.delay(), lambda: None)
        primary = await self.discover()
        until = self._reactor.seconds() + self.max_retry_delay
        while True:
            endpoint = HostnameEndpoint(self._reactor, *primary, timeout=self.connect_timeout)
            try:
                protocol: IProtocol = await endpoint.connect(factory)
                return protocol
            except CancelledError:
                raise
            except Exception as e:
                where = _hostport(*primary)
                self._failed(f"cannot reach {where}, the primary the sentinels name: {e}")
                other = await self._another_primary(primary, until)
                if other is None:
                    raise
                primary = other

    async def _another_primary(
        self, primary: tuple[str, int], until: float
    ) -> tuple[str, int] | None:
        """A primary other than `primary` once the sentinels name one, asking them every
        `retry_delay` seconds until `until`; None if they did not.

        A primary that cannot be reached is how a failover starts: the sentinels name
        the promoted replica a few seconds later. Asking them often, for a while, finds
        it at once, where the reconnection backoff would wait up to its maximum.
        """
        while self._reactor.seconds() + self.retry_delay <= until:
            await deferLater(self._reactor, self.retry_delay, lambda: None)
            try:
                named = await self.discover()
            except NoPrimary:
                continue
            if named != primary:
                return named
        return None

    def delay(self) -> float:
        """Seconds to wait before asking again, after `not_primary` servers in a row were not it."""
        if not self.not_primary:
            return 0.0
        exponent = min(self.not_primary - 1, 100)
        return min(self.retry_delay * math.e**exponent, self.max_retry_delay)

    # -- asking the sentinels --------------------------------------------------------------

    async def discover(self) -> tuple[str, int]:
        """The primary's (host, port), as the first sentinel that knows it names it.

        Sentinels are asked one at a time, each for at most `sentinel_timeout`
        seconds. Fails with `NoPrimary`, saying what each sentinel answered, when
        none names one.
        """
        why = []
        for sentinel in list(self.sentinels):
            where = _hostport(*sentinel)
            asking = Deferred.fromCoroutine(self._ask(*sentinel))
            asking.addTimeout(self.sentinel_timeout, self._reactor)
            try:
                primary = await asking
            except DeferredTimeoutError:
                why.append(f"{where}: no answer within {self.sentinel_timeout} s")
                continue
            except CancelledError:
                raise
            except Exception as e:
                why.append(f"{where}: {_reason(e)}")
                continue
            if primary is None:
                why.append(f"{where}: does not know {self.master!r}")
                continue
            self.sentinels.remove(sentinel)
            self.sentinels.insert(0, sentinel)
            self._named(where, primary)
            return primary
        failure = f"no sentinel named the primary {self.master!r}: " + "; ".join(why)
        self._failed(failure)
        raise NoPrimary(failure)

    def _failed(self, failure: str) -> None:
        """Log why an attempt failed, unless the attempt before failed the same way."""
        if failure != self._last_failure:
            self.log.warn("{failure}", failure=failure)
            self._last_failure = failure

    def _named(self, sentinel: str, primary: tuple[str, int]) -> None:
        """Remember the primary that `sentinel` named; say so when it changed."""
        if primary != self.primary:
            self.log.info(
                "sentinel {sentinel} names {primary} as the primary {master!r}",
                sentinel=sentinel,
                primary=_hostport(*primary),
                master=self.master,
            )
        self.primary = primary

    async def _ask(self, host: str, port: int) -> tuple[str, int] | None:
        """What one sentinel names as the primary's address (None if it does not know the name)."""
        txredisapi = _txredisapi()
        protocol = txredisapi.RedisProtocol(charset=None, convertNumbers=False)
        endpoint = HostnameEndpoint(self._reactor, host, port, timeout=self.connect_timeout)
        await endpoint.connect(_OneConnection(protocol))
        query = (b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", self.master.encode())
        try:
            try:
                reply = await protocol.execute_command(*query)
            except txredisapi.ResponseError as e:
                if not str(e).startswith("NOAUTH"):
                    raise
                if self._password is None:
                    raise NoPrimary("asks for a password, and numd has none") from None
                user = [self._username.encode()] if self._username else []
                await protocol.execute_command(b"AUTH", *user, self._password.encode())
                reply = await protocol.execute_command(*query)
        finally:
            protocol.transport.abortConnection()
        return _address(reply)

    # -- checking the server named -------------------------------------------------------

    async def check_primary(self, conn: Any, timeout: float) -> None:
        """Check that the new connection `conn` is to the primary (``ROLE``); `NoPrimary` if not.

        Waits at most `timeout` seconds for the answer.
        """
        reply = await conn.execute_command(b"ROLE").addTimeout(timeout, self._reactor)
        role = reply[0] if isinstance(reply, list) and reply else reply
        if isinstance(role, bytes):
            role = role.decode(errors="replace")
        if role == "master":
            self.not_primary = 0
            self._last_failure = None
            return
        self.not_primary += 1
        where = _hostport(*self.primary) if self.primary is not None else "the server"
        why = (
            f"{where}, which the sentinels named, says it is a {role}, not the primary "
            f"{self.master!r}; asking them again in {self.delay():.2f} s"
        )
        self.log.warn("{why}", why=why)
        raise NoPrimary(why)


class _OneConnection(Factory):
    """The factory of one connection to a sentinel (quiet: one is made on each reconnection)."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol


def _address(reply: Any) -> tuple[str, int] | None:
    """The (host, port) of a ``GET-MASTER-ADDR-BY-NAME`` reply; None for a nil reply."""
    if reply is None:
        return None
    try:
        host, port = reply
        if isinstance(host, bytes):
            host = host.decode()
        number = int(port)
    except (TypeError, ValueError):
        raise NoPrimary(f"an answer that is not an address: {reply!r}") from None
    if not host or not 0 < number < 65536:
        raise NoPrimary(f"an answer that is not an address: {reply!r}")
    return host, number


def _reason(error: Exception) -> str:
    """Why asking a sentinel failed, in a few words."""
    return str(error) or type(error).__name__
