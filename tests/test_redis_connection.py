"""Connections to Redis: every address kind, credentials, and commands bounded in time.

The first tests run the client's timing on a fake clock, without Redis. The others
start a real ``redis-server`` on 127.0.0.1 (a Unix socket, TLS with a private CA,
``requirepass`` and ACL users as each needs) and skip with one line without it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock, deferLater

from numd.store.redis.address import redis_config
from numd.store.redis.connection import (
    RedisClient,
    RedisUnavailable,
    connect,
    describe,
    endpoint_for,
)
from numd.store.redis.encoding import MemberEncoder
from numd.store.redis.scripts import StateScripts
from numd.store.redis.sentinel import SentinelEndpoint
from tests.redis_server import RedisServer, free_port, skip_without_redis

txredisapi = pytest.importorskip("txredisapi", reason="txredisapi not installed")

TIMEOUT = 5


def wait(d: Deferred[Any]) -> Deferred[Any]:
    """`d`, failing with TimeoutError if it has not fired within 5 s."""
    return d.addTimeout(TIMEOUT, reactor)


def sleep(seconds: float) -> Deferred[None]:
    """A real pause of `seconds`, bounded like every other wait."""
    return wait(deferLater(reactor, seconds, lambda: None))


def raw(port: int, *args: bytes) -> bytes:
    """One command sent over a plain socket (no client library), and the raw reply."""
    command = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(command)
        return s.recv(4096)


class FakeCommands:
    """A connection whose answers the test gives (or never gives)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, ...]] = []
        self.answers: list[Deferred[Any]] = []

    def execute_command(self, *args: bytes) -> Deferred[Any]:
        self.sent.append(args)
        d: Deferred[Any] = Deferred()
        self.answers.append(d)
        return d


@pytest.fixture
def fake() -> FakeCommands:
    """A connection that answers only when told."""
    return FakeCommands()


@pytest.fixture
def aborted() -> list[bool]:
    """Records each time the client drops its connection."""
    return []


@pytest.fixture
def client(fake: FakeCommands, clock: Clock, aborted: list[bool]) -> RedisClient:
    """A client on the fake connection and the fake clock, connected, with a 2 s bound."""
    c = RedisClient(
        fake, clock, timeout=2.0, where="redis://test", abort=lambda: aborted.append(True)
    )
    c.connection_made()
    return c


def test_unanswered_command_fails_after_the_bound(
    client: RedisClient, fake: FakeCommands, clock: Clock, aborted: list[bool]
) -> None:
    """A command with no answer fails with RedisUnavailable at the bound, on the given clock,
    and the stuck connection is dropped."""
    failures: list[Any] = []
    client.execute_command(b"PING").addErrback(failures.append)
    clock.advance(1.9)
    assert failures == [] and aborted == []
    clock.advance(0.1)
    assert failures[0].check(RedisUnavailable)
    assert "no answer within 2.0 s" in str(failures[0].value)
    assert aborted == [True] and client.timeouts == 1
    assert clock.getDelayedCalls() == []
    fake.answers[0].callback(b"PONG")  # a late answer goes nowhere


def test_answered_command_leaves_no_timer(
    client: RedisClient, fake: FakeCommands, clock: Clock
) -> None:
    """An answer in time is the command's result, and its timer is gone."""
    results: list[Any] = []
    client.execute_command(b"GET", b"k", timeout=10).addCallback(results.append)
    clock.advance(9)
    fake.answers[0].callback(b"v")
    assert results == [b"v"] and fake.sent == [(b"GET", b"k")]
    assert clock.getDelayedCalls() == []


def test_fails_at_once_while_disconnected(fake: FakeCommands, clock: Clock) -> None:
    """With no connection, a command fails at once and nothing is sent or scheduled."""
    c = RedisClient(fake, clock, where="redis://test")
    failures: list[Any] = []
    c.execute_command(b"PING").addErrback(failures.append)
    assert failures[0].check(RedisUnavailable)
    assert str(failures[0].value) == "not connected to redis://test"
    c.connection_made()
    c.connection_lost("gone")
    c.execute_command(b"PING").addErrback(failures.append)
    assert len(failures) == 2 and fake.sent == [] and clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        ("ConnectionError:Lost connection", True),
        ("TimeoutError:Not received Redis response in 1 seconds", True),
        ("ResponseError:LOADING Redis is loading the dataset in memory", True),
        ("ResponseError:BUSY Redis is busy running a script", True),
        ("ResponseError:MASTERDOWN Link with MASTER is down", True),
        ("ResponseError:NOREPLICAS Not enough good replicas to write.", True),
        ("ResponseError:WRONGTYPE Operation against a key holding the wrong kind of value", False),
        ("ResponseError:NOSCRIPT No matching script", False),
        ("ResponseError:OOM command not allowed when used memory > 'maxmemory'", False),
    ],
    ids=[
        "lost",
        "reply-timeout",
        "loading",
        "busy",
        "masterdown",
        "noreplicas",
        "wrongtype",
        "noscript",
        "oom",
    ],
)
def test_errors_that_mean_unavailable(
    client: RedisClient, fake: FakeCommands, error: str, unavailable: bool
) -> None:
    """Lost connections and replies saying Redis cannot serve now are RedisUnavailable;
    other error replies stay Redis's own errors."""
    kind, _, text = error.partition(":")
    failures: list[Any] = []
    client.execute_command(b"X").addErrback(failures.append)
    fake.answers[0].errback(getattr(txredisapi, kind)(text))
    assert bool(failures[0].check(RedisUnavailable)) is unavailable
    assert text in str(failures[0].value)


def test_when_connected(fake: FakeCommands, clock: Clock) -> None:
    """when_connected fires on the next connection, can be cancelled, and fails if refused."""
    c = RedisClient(fake, clock)
    fired: list[Any] = []
    c.when_connected().addBoth(fired.append)
    cancelled = c.when_connected()
    cancelled.addErrback(lambda f: f.trap(CancelledError))
    cancelled.cancel()
    c.connection_made()
    assert fired == [None] and c.epoch == 1 and c.connected
    c.when_connected().addBoth(fired.append)
    assert fired == [None, None]
    c.connection_lost("gone")
    c.when_connected().addErrback(fired.append)
    c.connection_refused("could not auth: WRONGPASS")
    assert fired[2].check(RedisUnavailable) and "WRONGPASS" in str(fired[2].value)
    c.when_connected().addErrback(fired.append)
    assert fired[3].check(RedisUnavailable)


def test_close_fails_waiters(fake: FakeCommands, clock: Clock) -> None:
    """Closing the client fails whoever waits for a connection."""
    c = RedisClient(fake, clock, close=lambda: succeed(None))
    fired: list[Any] = []
    c.when_connected().addErrback(fired.append)
    c.close()
    assert fired[0].check(RedisUnavailable)


def test_timeout_must_be_positive(fake: FakeCommands, clock: Clock) -> None:
    """A client without a bound would be the hang it exists to prevent."""
    with pytest.raises(ValueError, match="positive"):
        RedisClient(fake, clock, timeout=0)


@pytest.mark.parametrize(
    ("db", "shown"),
    [
        ("redis://numd@127.0.0.1:7000/3", "redis://numd@127.0.0.1:7000/3"),
        ("rediss://redis.example", "rediss://redis.example:6379/0"),
        ("redis://[::1]:6380/1", "redis://[::1]:6380/1"),
        ("unix:///run/redis.sock?db=2", "unix:///run/redis.sock?db=2"),
        ("redis+sentinel://h1,h2:26380/main/4", "redis+sentinel://h1:26379,h2:26380/main/4"),
    ],
    ids=["tcp-user", "tls", "ipv6", "unix", "sentinel"],
)
def test_describe_never_shows_the_password(db: str, shown: str) -> None:
    """Messages name the address as the URL would, and never the password."""
    config = redis_config(db, environ={"NUMD_REDIS_PASSWORD": "s3cret"})
    assert config is not None and config.password == "s3cret"
    assert describe(config) == shown


def test_sentinel_address_gets_an_endpoint_that_asks_the_sentinels() -> None:
    """A Sentinel address connects through the sentinels it lists (in its order), to its
    master name, with the Redis password at hand for sentinels that ask for one."""
    config = redis_config(
        "redis+sentinel://h1,h2:26380/main/2", environ={"NUMD_REDIS_PASSWORD": "s3cret"}
    )
    assert config is not None
    endpoint = endpoint_for(config, reactor, connect_timeout=1.5)
    assert isinstance(endpoint, SentinelEndpoint)
    assert endpoint.sentinels == [("h1", 26379), ("h2", 26380)] and endpoint.master == "main"
    assert endpoint.connect_timeout == 1.5 and endpoint.primary is None
    assert "s3cret" not in repr(endpoint)


@pytest.mark.parametrize(
    "reply",
    [
        "READONLY You can't write against a read only replica.",
        "UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)",
    ],
    ids=["readonly", "unblocked"],
)
def test_demoted_primary_is_unavailable_and_dropped(
    client: RedisClient, fake: FakeCommands, aborted: list[bool], reply: str
) -> None:
    """A server that says it is a replica now fails the command as unavailable and loses
    the connection, so that the next one finds the primary."""
    failures: list[Any] = []
    client.execute_command(b"EVALSHA", b"x", b"0").addErrback(failures.append)
    fake.answers[0].errback(txredisapi.ResponseError(reply))
    assert failures[0].check(RedisUnavailable) and reply in str(failures[0].value)
    assert aborted == [True]


# -- against a real redis-server ---------------------------------------------------------


async def connected(db: str, password: str | None = None, **options: Any) -> RedisClient:
    """A client for `db`, once its connection is up."""
    config = redis_config(db, environ={} if password is None else {"NUMD_REDIS_PASSWORD": password})
    assert config is not None
    c = connect(config, reactor, **options)
    try:
        await wait(c.when_connected())
    except BaseException:
        await wait(c.close())
        raise
    return c


async def command(c: RedisClient, *args: bytes) -> Any:
    """One command's reply, bounded."""
    return await wait(c.execute_command(*args))


@pytest_twisted.ensureDeferred
async def test_tcp_selects_the_database(redis_server: RedisServer) -> None:
    """redis://host:port/N works in database N, and replies stay bytes (no number conversion)."""
    three = await connected(f"redis://127.0.0.1:{redis_server.port}/3")
    zero = await connected(f"redis://127.0.0.1:{redis_server.port}")
    try:
        assert await command(three, b"SET", b"k", b"007") == "OK"
        assert await command(three, b"GET", b"k") == b"007"
        assert await command(zero, b"EXISTS", b"k") == 0
        assert b" db=3 " in await command(three, b"CLIENT", b"INFO")
    finally:
        await wait(three.close())
        await wait(zero.close())
    assert not three.connected


@pytest_twisted.ensureDeferred
async def test_password(redis_server: RedisServer) -> None:
    """The password is sent on connecting; a wrong one is refused for good, in one message."""
    assert raw(redis_server.port, b"CONFIG", b"SET", b"requirepass", b"s3 cret") == b"+OK\r\n"
    good = await connected(f"redis://127.0.0.1:{redis_server.port}/1", password="s3 cret")
    try:
        assert await command(good, b"PING") == "PONG"
    finally:
        await wait(good.close())
    config = redis_config(
        f"redis://127.0.0.1:{redis_server.port}", environ={"NUMD_REDIS_PASSWORD": "wrong"}
    )
    assert config is not None
    bad = connect(config, reactor)
    try:
        with pytest.raises(RedisUnavailable, match="could not log in"):
            await wait(bad.when_connected())
        assert bad.refused is not None and "wrong" not in bad.refused
        with pytest.raises(RedisUnavailable, match="could not log in"):
            await wait(bad.execute_command(b"PING"))
    finally:
        await wait(bad.close())


@pytest_twisted.ensureDeferred
async def test_acl_user(redis_server: RedisServer) -> None:
    """A user name in the URL and the password log in as that ACL user."""
    reply = raw(redis_server.port, b"ACL", b"SETUSER", b"numd", b"on", b">pw", b"~*", b"+@all")
    assert reply == b"+OK\r\n"
    c = await connected(f"redis://numd@127.0.0.1:{redis_server.port}", password="pw")
    try:
        assert await command(c, b"ACL", b"WHOAMI") == b"numd"
    finally:
        await wait(c.close())


class SocketRedisServer(RedisServer):
    """A redis-server that also listens on a Unix socket (in a short path: sockets have a
    length limit of about 100 bytes)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.socket_path = os.path.join(tempfile.mkdtemp(prefix="numd-"), "redis.sock")

    def _arguments(self) -> list[str]:
        return super()._arguments() + ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]


@pytest_twisted.ensureDeferred
async def test_unix_socket(tmp_path: Path) -> None:
    """unix:///path?db=N connects through the socket and selects database N."""
    skip_without_redis()
    server = SocketRedisServer(tmp_path / "redis").start()
    try:
        c = await connected(f"unix://{server.socket_path}?db=5")
        try:
            assert await command(c, b"SET", b"k", b"v") == "OK"
            info = await command(c, b"CLIENT", b"INFO")
            assert b" db=5 " in info and b"flags=U" in info  # U: a Unix-socket client
        finally:
            await wait(c.close())
    finally:
        server.stop()
        shutil.rmtree(os.path.dirname(server.socket_path), ignore_errors=True)


def make_certificates(directory: Path) -> tuple[bytes, Path, Path]:
    """A private CA (its PEM) and a server certificate and key it signed for 127.0.0.1."""
    x509 = pytest.importorskip("cryptography.x509", reason="cryptography not installed")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(text: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("numd test CA"))
        .issuer_name(name("numd test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca.public_bytes(serialization.Encoding.PEM), cert_path, key_path


class TlsRedisServer(RedisServer):
    """A redis-server with a TLS port beside its plain one (which answers the readiness PING)."""

    def __init__(self, directory: Path, cert: Path, key: Path) -> None:
        super().__init__(directory)
        self.tls_port = free_port()
        self.cert, self.key = cert, key

    def _arguments(self) -> list[str]:
        return super()._arguments() + [
            "--tls-port",
            str(self.tls_port),
            "--tls-cert-file",
            str(self.cert),
            "--tls-key-file",
            str(self.key),
            "--tls-auth-clients",
            "no",
        ]


@pytest_twisted.ensureDeferred
async def test_tls(tmp_path: Path) -> None:
    """rediss:// speaks TLS and verifies the server: a CA the options trust works; the
    system's trust roots (the default) do not know the private CA, so it never connects."""
    skip_without_redis()
    ssl = pytest.importorskip("twisted.internet.ssl", reason="Twisted's TLS needs pyOpenSSL")
    pytest.importorskip("service_identity", reason="host name checks need service_identity")
    ca, cert, key = make_certificates(tmp_path / "tls")
    server = TlsRedisServer(tmp_path / "redis", cert, key).start()
    try:
        url = f"rediss://127.0.0.1:{server.tls_port}/2"
        trusted = ssl.optionsForClientTLS("127.0.0.1", trustRoot=ssl.Certificate.loadPEM(ca))
        c = await connected(url, tls=trusted)
        try:
            assert await command(c, b"SET", b"k", b"v") == "OK"
            assert b" db=2 " in await command(c, b"CLIENT", b"INFO")
        finally:
            await wait(c.close())
        config = redis_config(url)
        assert config is not None
        untrusted = connect(config, reactor)
        try:
            await sleep(0.5)
            assert not untrusted.connected and untrusted.epoch == 0
            with pytest.raises(RedisUnavailable, match="not connected"):
                await wait(untrusted.execute_command(b"PING"))
        finally:
            await wait(untrusted.close())
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_fails_fast_while_down_and_recovers(redis_server: RedisServer) -> None:
    """Redis stopped: commands (and the change scripts) fail at once; restarted: the same
    client reconnects by itself, with a new epoch, and its commands work again."""
    c = await connected(f"redis://127.0.0.1:{redis_server.port}", reconnect_delay=0.05)
    scripts = StateScripts(c, "instance-a")
    try:
        await wait(scripts.load())
        assert c.epoch == 1
        redis_server.stop()
        await sleep(0.1)
        assert not c.connected
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(RedisUnavailable, match="not connected"):
                await wait(c.execute_command(b"PING"))
            with pytest.raises(RedisUnavailable):
                await wait(scripts.merge(MemberEncoder().encode_all([1])))
            assert time.monotonic() - started < 0.05
            await sleep(0.2)
        redis_server.start()
        await wait(c.when_connected())
        assert c.epoch == 2
        assert await command(c, b"PING") == "PONG"
        applied = await wait(scripts.merge(MemberEncoder().encode_all([1])))  # scripts reloaded
        assert applied.count == 1
    finally:
        await wait(c.close())


@pytest_twisted.ensureDeferred
async def test_frozen_redis_fails_within_the_bound(redis_server: RedisServer) -> None:
    """A Redis that takes commands but never answers (SIGSTOP) fails them at the bound;
    once it runs again the client works without being made anew."""
    c = await connected(f"redis://127.0.0.1:{redis_server.port}", timeout=0.3, reconnect_delay=0.05)
    try:
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(RedisUnavailable, match="no answer within 0.3 s"):
                await wait(c.execute_command(b"PING"))
            assert 0.25 < time.monotonic() - started < 1.0
            assert c.timeouts == 1
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        deadline = time.monotonic() + TIMEOUT
        while True:  # the dropped connection is made again, with backoff
            try:
                assert await command(c, b"PING") == "PONG"
                break
            except RedisUnavailable:
                assert time.monotonic() < deadline
                await sleep(0.05)
        assert c.epoch >= 2
    finally:
        await wait(c.close())


@pytest_twisted.ensureDeferred
async def test_starts_while_redis_is_down(tmp_path: Path) -> None:
    """A client made while nothing listens fails commands at once and connects, by itself,
    once Redis starts."""
    skip_without_redis()
    port = free_port()
    config = redis_config(f"redis://127.0.0.1:{port}")
    assert config is not None
    c = connect(config, reactor, reconnect_delay=0.05, max_reconnect_delay=0.2)
    server = RedisServer(tmp_path / "redis")
    try:
        await sleep(0.3)
        with pytest.raises(RedisUnavailable, match="not connected"):
            await wait(c.execute_command(b"PING"))
        server.port = port
        server.start()
        await wait(c.when_connected())
        assert await command(c, b"PING") == "PONG"
    finally:
        await wait(c.close())
        server.stop()
