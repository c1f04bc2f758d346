"""Redis Sentinel: finding the primary, checking it, and following a failover.

The first tests drive `SentinelEndpoint` on a `MemoryReactorClock`: the sentinels'
answers are bytes the test feeds in, and time is the test's clock. The others start
Debian's ``redis-server`` and ``redis-sentinel`` on 127.0.0.1 (`tests.redis_sentinel`)
and skip with one line without them; one kills the primary and follows the failover.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from numd.store.redis.address import SentinelAddress, redis_config
from numd.store.redis.connection import RedisClient, RedisUnavailable, connect
from numd.store.redis.encoding import MemberEncoder, decode_members
from numd.store.redis.scripts import Keys, StateScripts
from numd.store.redis.sentinel import NoPrimary, SentinelEndpoint
from tests.redis_sentinel import MASTER_NAME, SentinelGroup, cli, role, skip_without_sentinel
from tests.redis_server import RedisServer, free_port

txredisapi = pytest.importorskip("txredisapi", reason="txredisapi not installed")

TIMEOUT = 5
PASSWORD = "s3cret pw"
"""The password of the shared group's primary and replica (its sentinels have none)."""
FAILOVER_DEADLINE = 15.0
"""Seconds a failover may take, from the kill to the first change applied again."""


def resp(*items: bytes) -> bytes:
    """An array of bulk strings as Redis sends it (and as a client sends a command)."""
    return b"*%d\r\n" % len(items) + b"".join(b"$%d\r\n%s\r\n" % (len(i), i) for i in items)


def query(master: bytes = b"main") -> bytes:
    """The bytes of the question a sentinel gets."""
    return resp(b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", master)


def make_endpoint(
    clock: MemoryReactorClock,
    sentinels: int = 2,
    password: str | None = None,
    username: str | None = None,
) -> SentinelEndpoint:
    """An endpoint for master ``main`` on `sentinels` sentinels (ports 26379, 26380, ...),
    every bound on `clock`: 0.5 s per sentinel, retries after 0.1 s up to 2 s."""
    address = SentinelAddress(
        tuple(("127.0.0.1", 26379 + n) for n in range(sentinels)), "main", username=username
    )
    return SentinelEndpoint(
        address,
        clock,
        password,
        connect_timeout=1.0,
        retry_delay=0.1,
        max_retry_delay=2.0,
        sentinel_timeout=0.5,
    )


def accept(clock: MemoryReactorClock, index: int) -> tuple[Protocol, StringTransport]:
    """Complete connection attempt `index` on `clock`; the protocol and its transport."""
    host, port, factory, _, _ = clock.tcpClients[index]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def feed(protocol: Protocol, data: bytes) -> None:
    """`data` arriving one byte at a time: txredisapi defers the rest of a read that ends
    past a bulk string to the global reactor's next turn, which never comes in these tests."""
    for i in range(len(data)):
        protocol.dataReceived(data[i : i + 1])


def refuse(clock: MemoryReactorClock, index: int) -> None:
    """Fail connection attempt `index` on `clock` as a closed port does (the endpoint
    gives up once its attempt interval has passed)."""
    factory = clock.tcpClients[index][2]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    clock.advance(0.3)


def addresses(clock: MemoryReactorClock) -> list[tuple[str, int]]:
    """Where connections were attempted, in order."""
    return [(host, port) for host, port, *_ in clock.tcpClients]


def results(d: Deferred[Any]) -> list[Any]:
    """What `d` fired with so far (a list of one result or Failure, or empty)."""
    fired: list[Any] = []
    d.addBoth(fired.append)
    return fired


class Commands:
    """A connection that answers every command with the same reply."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.sent: list[tuple[bytes, ...]] = []

    def execute_command(self, *args: bytes) -> Deferred[Any]:
        self.sent.append(args)
        return succeed(self.reply)


# -- the endpoint, on a fake reactor ------------------------------------------------------


def test_asks_a_sentinel_then_connects_to_the_primary_it_names() -> None:
    """The first sentinel is asked over a connection of its own, closed after its answer;
    then the connection goes to the address it named."""
    clock = MemoryReactorClock()
    endpoint = make_endpoint(clock)
    connected = results(endpoint.connect(Factory.forProtocol(Protocol)))
    assert addresses(clock) == [("127.0.0.1", 26379)]
    protocol, transport = accept(clock, 0)
    assert transport.value() == query()
    feed(protocol, resp(b"127.0.0.1", b"6380"))
    assert transport.disconnected
    assert addresses(clock)[1:] == [("127.0.0.1", 6380)]
    assert endpoint.primary == ("127.0.0.1", 6380)
    accept(clock, 1)
    assert isinstance(connected[0], Protocol)
    assert clock.getDelayedCalls() == []


def test_an_unreachable_primary_sends_it_back_to_the_sentinels_until_they_name_another() -> None:
    """A failover starts with a primary that cannot be reached: the sentinels are asked
    again every 0.1 s, and the attempt connects as soon as they name another primary."""
    clock = MemoryReactorClock()
    endpoint = make_endpoint(clock, sentinels=1)
    connected = results(endpoint.connect(Factory.forProtocol(Protocol)))
    protocol, _ = accept(clock, 0)
    feed(protocol, resp(b"127.0.0.1", b"7000"))
    refuse(clock, 1)
    for named in (b"7000", b"7001"):
        asked = len(clock.tcpClients)
        clock.advance(0.09)
        assert len(clock.tcpClients) == asked
        clock.advance(0.01)
        protocol, _ = accept(clock, asked)
        feed(protocol, resp(b"127.0.0.1", named))
    sentinel = ("127.0.0.1", 26379)
    assert addresses(clock) == [
        sentinel,
        ("127.0.0.1", 7000),
        sentinel,
        sentinel,
        ("127.0.0.1", 7001),
    ]
    accept(clock, 4)
    assert isinstance(connected[0], Protocol) and endpoint.primary == ("127.0.0.1", 7001)
    assert clock.getDelayedCalls() == []


def test_an_unreachable_primary_fails_the_attempt_after_the_longest_delay() -> None:
    """While the sentinels go on naming an unreachable primary, the attempt fails with the
    connection's error once the longest reconnection delay (2 s) has passed."""
    clock = MemoryReactorClock()
    endpoint = make_endpoint(clock, sentinels=1)
    failed = results(endpoint.connect(Factory.forProtocol(Protocol)))
    protocol, _ = accept(clock, 0)
    feed(protocol, resp(b"127.0.0.1", b"7000"))
    refuse(clock, 1)
    asked = 1
    while not failed:
        clock.advance(0.1)
        if len(clock.tcpClients) > asked + 1:
            protocol, _ = accept(clock, asked + 1)
            feed(protocol, resp(b"127.0.0.1", b"7000"))
            asked += 1
    assert failed[0].check(ConnectionRefusedError)
    assert 1.9 <= clock.seconds() <= 2.1 and asked == 17  # at 0, then every 0.1 s from 0.4 s
    assert addresses(clock)[1] == ("127.0.0.1", 7000) and len(clock.tcpClients) == 18
    assert clock.getDelayedCalls() == []


def test_silent_sentinels_are_passed_over_after_their_bound() -> None:
    """A sentinel that does not accept, or accepts and never answers, is given 0.5 s; the
    next one is asked, and the one that answered is asked first next time."""
    clock = MemoryReactorClock()
    endpoint = make_endpoint(clock, sentinels=3)
    connected = results(endpoint.connect(Factory.forProtocol(Protocol)))
    clock.advance(0.49)
    assert len(clock.tcpClients) == 1
    clock.advance(0.01)
    assert addresses(clock)[1] == ("127.0.0.1", 26380)
    _, silent = accept(clock, 1)
    clock.advance(0.5)
    assert silent.disconnected
    protocol, _ = accept(clock, 2)
    feed(protocol, resp(b"127.0.0.1", b"7000"))
    assert addresses(clock)[3] == ("127.0.0.1", 7000) and connected == []
    assert endpoint.sentinels == [("127.0.0.1", 26381), ("127.0.0.1", 26379), ("127.0.0.1", 26380)]


def test_no_primary_named_says_what_each_sentinel_answered_and_logs_it_once() -> None:
    """When no sentinel names the primary the attempt fails with every sentinel's answer;
    the same failure again is not logged again."""
    clock = MemoryReactorClock()
    endpoint = make_endpoint(clock)
    events: list[dict[str, Any]] = []
    endpoint.log = Logger(observer=events.append)
    for attempt in range(2):
        failed = results(endpoint.connect(Factory.forProtocol(Protocol)))
        protocol, _ = accept(clock, 2 * attempt)
        feed(protocol, b"*-1\r\n")  # a nil reply: no master of that name
        refuse(clock, 2 * attempt + 1)
        assert failed[0].check(NoPrimary)
        message = str(failed[0].value)
        assert message.startswith("no sentinel named the primary 'main': ")
        assert "127.0.0.1:26379: " in message and "127.0.0.1:26380: " in message
        assert "refused" in message
    assert [e["failure"] for e in events] == [message]
    assert clock.getDelayedCalls() == []


def test_unknown_master_name_is_said_so() -> None:
    """A sentinel that does not monitor the name answers nil: it does not know it."""
    clock = MemoryReactorClock()
    endpoint = make_endpoint(clock, sentinels=1)
    failed = results(endpoint.connect(Factory.forProtocol(Protocol)))
    protocol, _ = accept(clock, 0)
    feed(protocol, b"*-1\r\n")
    assert failed[0].check(NoPrimary)
    assert str(failed[0].value).endswith("127.0.0.1:26379: does not know 'main'")


@pytest.mark.parametrize(
    "reply",
    [resp(b"127.0.0.1"), resp(b"127.0.0.1", b"http"), resp(b"127.0.0.1", b"0"), resp(b"", b"1")],
    ids=["one-item", "not-a-port", "port-0", "no-host"],
)
def test_an_answer_that_is_not_an_address_counts_as_no_answer(reply: bytes) -> None:
    """A sentinel's answer is used only if it is a host and a port."""
    clock = MemoryReactorClock()
    endpoint = make_endpoint(clock, sentinels=1)
    failed = results(endpoint.connect(Factory.forProtocol(Protocol)))
    protocol, _ = accept(clock, 0)
    feed(protocol, reply)
    assert failed[0].check(NoPrimary) and "not an address" in str(failed[0].value)
    assert len(clock.tcpClients) == 1


def test_a_sentinel_that_asks_for_a_password_gets_the_redis_one() -> None:
    """A sentinel is asked without a password first; one that says NOAUTH gets the Redis
    user and password, then the question again."""
    clock = MemoryReactorClock()
    endpoint = make_endpoint(clock, sentinels=1, password="pw 1", username="numd")
    results(endpoint.connect(Factory.forProtocol(Protocol)))
    protocol, transport = accept(clock, 0)
    assert transport.value() == query()
    transport.clear()
    feed(protocol, b"-NOAUTH Authentication required.\r\n")
    assert transport.value() == resp(b"AUTH", b"numd", b"pw 1")
    transport.clear()
    feed(protocol, b"+OK\r\n")
    assert transport.value() == query()
    feed(protocol, resp(b"127.0.0.1", b"6379"))
    assert endpoint.primary == ("127.0.0.1", 6379)


def test_a_sentinel_that_asks_for_a_password_numd_lacks_is_said_so() -> None:
    """Without a Redis password, a sentinel that asks for one is passed over, saying why."""
    clock = MemoryReactorClock()
    endpoint = make_endpoint(clock, sentinels=1)
    failed = results(endpoint.connect(Factory.forProtocol(Protocol)))
    protocol, transport = accept(clock, 0)
    feed(protocol, b"-NOAUTH Authentication required.\r\n")
    assert transport.disconnected and failed[0].check(NoPrimary)
    assert "asks for a password, and numd has none" in str(failed[0].value)


def test_cancelling_an_attempt_closes_the_sentinel_connection() -> None:
    """A stopped client cancels its attempt: the sentinel's connection is closed and no
    timer is left."""
    clock = MemoryReactorClock()
    endpoint = make_endpoint(clock)
    d = endpoint.connect(Factory.forProtocol(Protocol))
    failed = results(d)
    _, transport = accept(clock, 0)
    d.cancel()
    assert failed[0].check(CancelledError) and transport.disconnected
    assert clock.getDelayedCalls() == [] and len(clock.tcpClients) == 1


def test_the_primary_is_checked_with_role() -> None:
    """A connection to a server that says it is the primary passes; one to a replica fails
    with NoPrimary, saying what the server is."""
    clock = MemoryReactorClock()
    endpoint = make_endpoint(clock)
    endpoint.primary = ("127.0.0.1", 7001)
    master = Commands([b"master", b"120", []])
    results(Deferred.fromCoroutine(endpoint.check_primary(master, 1.0)))
    assert master.sent == [(b"ROLE",)] and endpoint.not_primary == 0
    replica = Commands([b"slave", b"127.0.0.1", b"7000", b"connected", b"120"])
    failed = results(Deferred.fromCoroutine(endpoint.check_primary(replica, 1.0)))
    assert failed[0].check(NoPrimary)
    assert str(failed[0].value) == (
        "127.0.0.1:7001, which the sentinels named, says it is a slave, not the primary "
        "'main'; asking them again in 0.10 s"
    )
    assert endpoint.not_primary == 1


def test_sentinels_are_asked_again_later_and_later_while_they_name_a_replica() -> None:
    """After connections to a non-primary, the next attempt waits 0.1 s, then e times longer
    each time up to 2 s; a primary found resets the wait."""
    clock = MemoryReactorClock()
    endpoint = make_endpoint(clock)
    replica = Commands([b"slave"])
    delays = []
    for _ in range(5):
        results(Deferred.fromCoroutine(endpoint.check_primary(replica, 1.0)))
        delays.append(round(endpoint.delay(), 3))
    assert delays == [0.1, 0.272, 0.739, 2.0, 2.0]
    attempts = len(clock.tcpClients)
    endpoint.connect(Factory.forProtocol(Protocol))
    clock.advance(1.99)
    assert len(clock.tcpClients) == attempts
    clock.advance(0.01)
    assert len(clock.tcpClients) == attempts + 1
    results(Deferred.fromCoroutine(endpoint.check_primary(Commands([b"master"]), 1.0)))
    assert endpoint.delay() == 0.0


# -- against real sentinels -----------------------------------------------------------------


def wait(d: Deferred[Any]) -> Deferred[Any]:
    """`d`, failing with TimeoutError if it has not fired within 5 s."""
    return d.addTimeout(TIMEOUT, reactor)


def sleep(seconds: float) -> Deferred[None]:
    """A real pause of `seconds`."""
    return wait(deferLater(reactor, seconds, lambda: None))


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """A primary and a replica with a password, and three sentinels without one (Debian's
    default), shared by the tests that do not fail it over."""
    skip_without_sentinel()
    g = SentinelGroup(tmp_path_factory.mktemp("sentinel"), password=PASSWORD).start()
    yield g
    g.stop()


async def connected(url: str, password: str | None = None, **options: Any) -> RedisClient:
    """A client for `url`, once its connection is up."""
    config = redis_config(
        url, environ={} if password is None else {"NUMD_REDIS_PASSWORD": password}
    )
    assert config is not None
    c = connect(config, reactor, **options)
    try:
        await wait(c.when_connected())
    except BaseException:
        await wait(c.close())
        raise
    return c


def real_endpoint(url: str, password: str | None = None, **options: Any) -> SentinelEndpoint:
    """The endpoint of a ``redis+sentinel://`` `url`, on the real reactor."""
    config = redis_config(
        url, environ={} if password is None else {"NUMD_REDIS_PASSWORD": password}
    )
    assert config is not None and isinstance(config.address, SentinelAddress)
    settings = {"connect_timeout": 1.0, "retry_delay": 0.05, "max_retry_delay": 0.5, **options}
    return SentinelEndpoint(config.address, reactor, password, **settings)


@pytest_twisted.ensureDeferred
async def test_changes_through_the_sentinels_reach_the_primary(group: SentinelGroup) -> None:
    """A client of the sentinels' address logs in to the primary they name and runs the
    state scripts there; the replica receives the changes."""
    c = await connected(group.sentinel_url(db=2), PASSWORD)
    try:
        scripts = StateScripts(c, "instance-a", Keys("numd-sentinel:"))
        await wait(scripts.load())
        registered = await wait(scripts.register(7, now=1.0))
        await wait(scripts.report(7, 41, now=2.0))
        applied = await wait(scripts.merge(MemberEncoder().encode_all([3, -1, 3])))
        assert registered.number == 0 and applied.count == 3
        assert await wait(c.execute_command(b"WAIT", b"1", b"2000")) == 1
        for server in group.servers:
            values = cli(server.port, "-n", "2", "ZCARD", "numd-sentinel:values", password=PASSWORD)
            number = cli(
                server.port,
                "-n",
                "2",
                "HGET",
                "numd-sentinel:client:7",
                "number",
                password=PASSWORD,
            )
            assert (values, number) == (["3"], ["41"])
        assert role(group.primary.port, PASSWORD) == "master"
    finally:
        await wait(c.close())


@pytest_twisted.ensureDeferred
async def test_dead_and_silent_sentinels_are_passed_over(group: SentinelGroup) -> None:
    """A closed port and a sentinel that never answers cost at most their bound each; then
    the first live sentinel names the primary."""
    dead = free_port()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts connections (the kernel does), never answers
        hosts = [f"127.0.0.1:{dead}", f"127.0.0.1:{silent.getsockname()[1]}"]
        hosts += [f"127.0.0.1:{s.port}" for s in group.sentinels]
        endpoint = real_endpoint(
            f"redis+sentinel://{','.join(hosts)}/{MASTER_NAME}", sentinel_timeout=0.3
        )
        started = time.monotonic()
        primary = await wait(Deferred.fromCoroutine(endpoint.discover()))
        assert 0.3 <= time.monotonic() - started < 1.5
    assert primary == ("127.0.0.1", group.primary.port)
    assert endpoint.sentinels[0] == ("127.0.0.1", group.sentinels[0].port)


@pytest_twisted.ensureDeferred
async def test_unknown_master_never_connects_and_commands_fail_at_once(
    group: SentinelGroup,
) -> None:
    """A master name the sentinels do not monitor: no connection, and commands fail at once
    with RedisUnavailable (the client keeps trying)."""
    config = redis_config(group.sentinel_url(master="nope"))
    assert config is not None
    c = connect(config, reactor, reconnect_delay=0.05)
    try:
        await sleep(0.3)
        assert not c.connected and c.epoch == 0
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match="not connected"):
            await wait(c.execute_command(b"PING"))
        assert time.monotonic() - started < 0.05
    finally:
        await wait(c.close())
    with pytest.raises(NoPrimary, match="does not know 'nope'"):
        await wait(
            Deferred.fromCoroutine(real_endpoint(group.sentinel_url(master="nope")).discover())
        )


@pytest_twisted.ensureDeferred
async def test_a_sentinel_with_a_password_gets_the_redis_password(group: SentinelGroup) -> None:
    """A sentinel that has the Redis password set (not Debian's default) is logged in to
    with it; without a password, numd says the sentinel asks for one."""
    sentinel = group.sentinels[0]
    assert cli(sentinel.port, "ACL", "SETUSER", "default", "on", f">{PASSWORD}") == ["OK"]
    try:
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{MASTER_NAME}"
        primary = await wait(Deferred.fromCoroutine(real_endpoint(url, PASSWORD).discover()))
        assert primary == ("127.0.0.1", group.primary.port)
        with pytest.raises(NoPrimary, match="asks for a password"):
            await wait(Deferred.fromCoroutine(real_endpoint(url).discover()))
    finally:
        cli(sentinel.port, "ACL", "SETUSER", "default", "resetpass", "nopass", password=PASSWORD)
    assert cli(sentinel.port, "PING") == ["PONG"]


@pytest_twisted.ensureDeferred
async def test_role_tells_the_primary_from_its_replica(group: SentinelGroup) -> None:
    """The check of a new connection passes on the primary and fails on the replica."""
    endpoint = real_endpoint(group.sentinel_url(), PASSWORD)
    for server, is_primary in ((group.primary, True), (group.replica, False)):
        c = await connected(f"redis://127.0.0.1:{server.port}", PASSWORD)
        try:
            check = Deferred.fromCoroutine(endpoint.check_primary(c, 1.0))
            if is_primary:
                await wait(check)
            else:
                with pytest.raises(NoPrimary, match="says it is a slave"):
                    await wait(check)
        finally:
            await wait(c.close())


@pytest_twisted.ensureDeferred
async def test_a_replica_named_as_the_primary_is_never_used(
    group: SentinelGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the sentinels name the replica (a stale answer), every connection to it is
    dropped after ROLE and no command is sent there; once they name the primary, the same
    client connects to it."""
    named = [group.replica.port]

    async def discover(self: SentinelEndpoint) -> tuple[str, int]:
        self.primary = ("127.0.0.1", named[0])
        return self.primary

    monkeypatch.setattr(SentinelEndpoint, "discover", discover)
    config = redis_config(group.sentinel_url(), environ={"NUMD_REDIS_PASSWORD": PASSWORD})
    assert config is not None
    c = connect(config, reactor, reconnect_delay=0.05, max_reconnect_delay=0.2)
    try:
        await sleep(0.5)
        assert not c.connected and c.epoch == 0
        named[0] = group.primary.port
        await wait(c.when_connected())
        assert (await wait(c.execute_command(b"ROLE")))[0] == b"master"
    finally:
        await wait(c.close())


@pytest_twisted.ensureDeferred
async def test_demoted_primary_drops_the_connection(redis_server: RedisServer) -> None:
    """Redis 7 keeps its clients connected when made a replica (``REPLICAOF``); a change then
    fails at once as unavailable, and the client connects again by itself."""
    c = await connected(f"redis://127.0.0.1:{redis_server.port}", reconnect_delay=0.05)
    scripts = StateScripts(c, "instance-a")
    try:
        await wait(scripts.load())
        assert cli(redis_server.port, "REPLICAOF", "127.0.0.1", str(free_port())) == ["OK"]
        assert await wait(c.execute_command(b"PING")) == "PONG" and c.epoch == 1
        with pytest.raises(RedisUnavailable, match="READONLY"):
            await wait(scripts.merge(MemberEncoder().encode_all([1])))
        await sleep(0.01)
        assert not c.connected
        await wait(c.when_connected())
        assert c.epoch == 2
    finally:
        await wait(c.close())


@pytest_twisted.ensureDeferred
async def test_failover_same_client_follows_the_new_primary(tmp_path: Path) -> None:
    """The primary is killed: while the sentinels fail over, changes fail at once with
    RedisUnavailable; then the same client is connected to the promoted replica, changes
    work again, and the changes the replica had before the kill are all there."""
    skip_without_sentinel()
    group = SentinelGroup(tmp_path / "group").start()
    c = await connected(group.sentinel_url(), reconnect_delay=0.05, max_reconnect_delay=0.5)
    try:
        scripts = StateScripts(c, "instance-a")
        encoder = MemberEncoder()
        await wait(scripts.load())
        await wait(scripts.register(9, now=1.0))
        await wait(scripts.report(9, 5, now=1.0))
        await wait(scripts.merge(encoder.encode_all(range(100))))
        assert await wait(c.execute_command(b"WAIT", b"1", b"2000")) == 1
        old = group.primary.port
        group.primary.kill()
        killed = time.monotonic()
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await wait(scripts.merge(encoder.encode_all([100])))
                break
            except RedisUnavailable:
                failures += 1
                assert time.monotonic() - started < 0.1  # at once, never a hang
            assert time.monotonic() - killed < FAILOVER_DEADLINE
            await sleep(0.05)
        assert failures > 0 and c.epoch == 2
        new = group.primary_port()
        assert new == group.replica.port != old
        assert (await wait(c.execute_command(b"ROLE")))[0] == b"master"
        await wait(scripts.report(9, 6, now=2.0))  # the lease came over with the data
        members = await wait(c.execute_command(b"ZRANGE", Keys().values, b"0", b"-1"))
        assert decode_members(members) == list(range(101))
    finally:
        await wait(c.close())
        group.stop()
