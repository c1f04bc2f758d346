"""Local copies of the shared state, kept by `Follower`s against a real redis-server.

Changes go through the Lua scripts (`StateScripts`), as numd instances make them;
each copy is a `NumberService` of its own, compared with what Redis holds (the
sorted list read by rank, each client's hash) and with the other copies. Every
test starts its own ``redis-server`` on 127.0.0.1 and skips with one line without it.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater

from numd.service import INT64_MAX, INT64_MIN, ClientRecord, NumberService, StateObserver
from numd.store.redis.address import redis_config
from numd.store.redis.connection import RedisClient, RedisUnavailable, connect
from numd.store.redis.encoding import MemberEncoder, decode_members
from numd.store.redis.follower import Follower
from numd.store.redis.lua import SCRIPTS
from numd.store.redis.scripts import ClientUpdate, Keys, StateScripts, parse_client
from numd.store.redis.snapshot import parse_clients, parse_id, values_of
from tests.redis_server import RedisServer, skip_without_redis

pytest.importorskip("txredisapi", reason="txredisapi not installed")

TIMEOUT = 5
EXTREMES = [INT64_MIN, -(2**53) - 1, -1, 0, 1, 2**53, 2**53 + 1, INT64_MAX]


def wait(d: Deferred[Any]) -> Deferred[Any]:
    """`d`, failing with TimeoutError if it has not fired within 5 s."""
    return d.addTimeout(TIMEOUT, reactor)


def sleep(seconds: float) -> Deferred[None]:
    """A real pause of `seconds`, bounded like every other wait."""
    return wait(deferLater(reactor, seconds, lambda: None))


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` every 10 ms until it holds; fail after 5 s."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition not met within 5 s"
        await sleep(0.01)


class Recorder(StateObserver):
    """Notes every change a service tells its observers of, with what the record held then."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def registered(self, record: ClientRecord) -> None:
        self.events.append(("registered", record.client_id, record.number, record.connected))

    def disconnected(self, record: ClientRecord) -> None:
        self.events.append(("disconnected", record.client_id, record.connected))

    def reported(self, record: ClientRecord) -> None:
        self.events.append(("reported", record.client_id, record.number))

    def given(self, record: ClientRecord) -> None:
        self.events.append(("given", record.client_id, record.last_given))

    def merged(self, values: list[int]) -> None:
        self.events.append(("merged", sorted(values)))

    def cleared(self) -> None:
        self.events.append(("cleared",))


class Rig:
    """Connections, scripts and followers on one redis-server, all closed at the end."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.clients: list[RedisClient] = []
        self.followers: list[Follower] = []

    async def client(self, **options: Any) -> RedisClient:
        """A connected client of the test's redis-server."""
        config = redis_config(f"redis://127.0.0.1:{self.server.port}")
        assert config is not None
        c = connect(config, reactor, reconnect_delay=0.05, max_reconnect_delay=0.2, **options)
        self.clients.append(c)
        await wait(c.when_connected())
        return c

    async def scripts(self, instance: str, **options: Any) -> StateScripts:
        """One instance's change scripts on a connection of their own, loaded."""
        scripts = StateScripts(await self.client(), instance, **options)
        await wait(scripts.load())
        return scripts

    async def follower(
        self, start: bool = True, kind: type[Follower] = Follower, **options: Any
    ) -> Follower:
        """A follower with a service and a connection of its own; started (and loaded) unless
        `start` is false."""
        service = NumberService(reactor, random.Random(1))
        follower = kind(service, await self.client(), reactor, **options)
        self.followers.append(follower)
        if start:
            follower.startService()
            await until(lambda: follower.ready)
        return follower

    async def close(self) -> None:
        for follower in self.followers:
            if follower.running:
                follower.stopService()
        for c in self.clients:
            await wait(c.close())


@pytest_twisted.async_yield_fixture
async def rig(redis_server: RedisServer) -> AsyncIterator[Rig]:
    """Connections to the test's redis-server, closed afterwards."""
    r = Rig(redis_server)
    yield r
    await r.close()


async def last_entry(redis: RedisClient) -> bytes:
    """The ID of the change stream's newest entry (``0-0`` if it has none)."""
    reply = await wait(
        redis.execute_command(b"XREVRANGE", Keys().changes, b"+", b"-", b"COUNT", b"1")
    )
    return reply[0][0] if reply else b"0-0"


async def caught_up(redis: RedisClient, *followers: Follower) -> None:
    """Wait until every follower has applied the stream's newest entry."""
    entry = await last_entry(redis)
    for follower in followers:
        await wait(follower.wait_applied(entry, timeout=TIMEOUT))


async def truth(redis: RedisClient) -> tuple[list[int], dict[int, ClientRecord]]:
    """The shared state as Redis holds it: the list read by rank, and each client's hash."""
    keys = Keys()
    values = decode_members(await wait(redis.execute_command(b"ZRANGE", keys.values, b"0", b"-1")))
    registry = {}
    for raw in await wait(redis.execute_command(b"ZRANGE", keys.clients, b"0", b"-1")):
        client_id = int(raw)
        flat = await wait(redis.execute_command(b"HGETALL", keys.client(client_id)))
        record = parse_client(client_id, flat)
        assert record is not None
        registry[client_id] = record
    return values, registry


def copy_of(follower: Follower) -> tuple[list[int], dict[int, ClientRecord]]:
    """A follower's local copy: its service's list and registry."""
    service = follower.service
    return service.all_values(), {i: replace(r) for i, r in service.clients.items()}


# -- without Redis -----------------------------------------------------------------------


@given(st.lists(st.integers(INT64_MIN, INT64_MAX) | st.sampled_from(EXTREMES), max_size=200))
def test_values_of_is_plain_decoding(values: list[int]) -> None:
    """The one-call decoding of concatenated members equals decoding them one by one."""
    members = MemberEncoder(random.Random(0)).encode_all(values)
    assert values_of(b"".join(members)) == decode_members(members) == values


def test_values_of_refuses_a_partial_member() -> None:
    """A blob that is not whole members is an error, not a wrong value."""
    with pytest.raises(ValueError, match="whole number"):
        values_of(b"\x00" * 17)


def test_entry_ids_compare_as_redis_orders_them() -> None:
    """Entry IDs compare by milliseconds, then by sequence, as numbers (not as text)."""
    ids = [b"0-0", b"9-5", b"10-0", b"10-2", b"10-10", b"1700000000000-0", b"1700000000000-1"]
    assert sorted(ids, key=parse_id) == ids
    assert sorted(ids) != ids  # bytewise order would be wrong


def test_registry_lines() -> None:
    """Each registry line of a snapshot is one record, numbers and times exact."""
    blob = b"3 9223372036854775807 - 1234567.123456789 1\n10000 -9223372036854775808 98 2.5 0"
    assert parse_clients(blob) == [
        ClientRecord(3, INT64_MAX, None, True, 1234567.123456789),
        ClientRecord(10000, INT64_MIN, 98, False, 2.5),
    ]
    assert parse_clients(b"") == []


def test_wait_applied_is_bounded_on_the_given_clock(clock: Clock) -> None:
    """Waiting for an entry fails with RedisUnavailable at its timeout, on the follower's clock;
    stopping leaves nothing scheduled."""
    redis = RedisClient(commands=None, clock=clock)  # type: ignore[arg-type]  # never connected
    follower = Follower(NumberService(clock), redis, clock)
    follower.startService()
    failures: list[Any] = []
    follower.wait_applied(b"5-0", timeout=1.5).addErrback(failures.append)
    stopped: list[Any] = []
    follower.wait_applied(b"6-0").addErrback(stopped.append)
    clock.advance(1.4)
    assert failures == []
    clock.advance(0.1)
    assert failures[0].check(RedisUnavailable)
    follower.stopService()
    assert stopped[0].check(RedisUnavailable)
    assert clock.getDelayedCalls() == []
    assert not follower.ready


# -- against a real redis-server -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_followers_agree_after_interleaved_changes(rig: Rig) -> None:
    """Two instances change the state, in turn and at once; two copies end up equal to Redis
    and to each other: the list as a multiset (duplicates and 64-bit extremes exact) and
    every client's record, ``last_seen`` included. Observers saw every change."""
    a, b = await rig.scripts("instance-a"), await rig.scripts("instance-b")
    seen = Recorder()
    first = await rig.follower(start=False)
    first.service.add_observer(seen)
    first.startService()
    await until(lambda: first.ready)
    second = await rig.follower()
    enc_a, enc_b = MemberEncoder(random.Random(1)), MemberEncoder(random.Random(2))

    await wait(a.merge(enc_a.encode_all(EXTREMES + [5, 5])))
    await wait(a.register(1, now=10.5))
    await wait(b.merge(enc_b.encode_all([5, INT64_MIN, 7])))
    await wait(a.report(1, INT64_MAX, now=11.25))
    await wait(a.give(1, 77, now=11.5))
    await wait(b.register(2, now=12.0))
    await wait(b.report(2, INT64_MIN, now=12.5))
    await wait(a.clear())
    await wait(b.merge(enc_b.encode_all(EXTREMES * 2 + [0])))
    await wait(a.disconnect(1, now=13.0))
    await wait(b.register(1, now=14.0))  # resumes on B
    await wait(b.give(1, 4, now=14.5))
    rng = random.Random(3)
    burst = [
        scripts.merge(encoder.encode_all(rng.choice(EXTREMES + [5]) for _ in range(20)))
        for _ in range(25)
        for scripts, encoder in ((a, enc_a), (b, enc_b))
    ]
    await wait(gatherResults(burst))
    await caught_up(rig.clients[0], first, second)

    values, registry = await truth(rig.clients[0])
    assert len(values) == 17 + 1000
    assert copy_of(first) == copy_of(second) == (values, registry)
    assert registry == {
        1: ClientRecord(1, INT64_MAX, 4, True, 14.5),
        2: ClientRecord(2, INT64_MIN, None, True, 12.5),
    }
    assert seen.events[:13] == [
        ("cleared",),  # the (empty) snapshot at start
        ("merged", sorted(EXTREMES + [5, 5])),
        ("registered", 1, 0, True),
        ("merged", [INT64_MIN, 5, 7]),
        ("reported", 1, INT64_MAX),
        ("given", 1, 77),
        ("registered", 2, 0, True),
        ("reported", 2, INT64_MIN),
        ("cleared",),
        ("merged", sorted(EXTREMES * 2 + [0])),
        ("disconnected", 1, False),
        ("registered", 1, INT64_MAX, True),
        ("given", 1, 4),
    ]
    assert len(seen.events) == 13 + 50
    assert first.service.rng.random() == random.Random(1).random()  # its own draws untouched
    assert first.loads == second.loads == 1 and first.applied == 62


@pytest_twisted.ensureDeferred
async def test_own_changes_are_applied_once_from_the_stream(rig: Rig) -> None:
    """An instance's own change reaches its copy through the stream, exactly once, and is in
    the copy as soon as wait_applied fires for the entry the script returned."""
    scripts = await rig.scripts("instance-a")
    own = await rig.follower()
    encoder = MemberEncoder(random.Random(4))
    for batch in ([3, 3, INT64_MAX], [INT64_MIN, 3], [2**53 + 1]):
        applied = await wait(scripts.merge(encoder.encode_all(batch)))
        await wait(own.wait_applied(applied.entry))
        assert own.position is not None and parse_id(own.position) >= parse_id(applied.entry)
        assert own.service.all_values() == (await truth(rig.clients[0]))[0]
    registered = await wait(scripts.register(9, now=1.0))
    await wait(own.wait_applied(registered.entry))
    assert own.service.client(9) == ClientRecord(9, 0, None, True, 1.0)
    assert own.service.all_values() == [INT64_MIN, 3, 3, 3, 2**53 + 1, INT64_MAX]
    assert own.applied == 4
    await wait(own.wait_applied(b"0-1"))  # long applied: fires at once


@pytest_twisted.ensureDeferred
async def test_stopped_from_a_waiter_it_applies_nothing_more(rig: Rig) -> None:
    """A follower stopped by code that ran when an entry was applied (a waiter's callback)
    stops there: later entries do not reach its copy until it is started again."""
    scripts = await rig.scripts("instance-a")
    follower = await rig.follower()
    encoder = MemberEncoder(random.Random(13))
    applied = await wait(scripts.merge(encoder.encode_all([1])))
    await wait(follower.wait_applied(applied.entry).addCallback(lambda _: follower.stopService()))
    await wait(scripts.merge(encoder.encode_all([2])))
    await sleep(0.3)
    assert follower.service.all_values() == [1] and follower.applied == 1
    follower.startService()
    await caught_up(rig.clients[0], follower)
    assert follower.service.all_values() == [1, 2] and follower.loads == 1


@pytest_twisted.ensureDeferred
async def test_late_follower_loads_a_snapshot_then_follows(rig: Rig) -> None:
    """A follower started after the changes loads them in chunks (several calls here) and
    then follows the stream without loading again."""
    scripts = await rig.scripts("instance-a")
    encoder = MemberEncoder(random.Random(5))
    rng = random.Random(6)
    values = EXTREMES * 3 + [rng.randint(-20, 20) for _ in range(90)]
    for start in range(0, len(values), 13):
        await wait(scripts.merge(encoder.encode_all(values[start : start + 13])))
    for client_id in (0, 17, 10_000):
        await wait(scripts.register(client_id, now=client_id + 0.125))
        await wait(scripts.report(client_id, INT64_MIN + client_id, now=client_id + 0.25))
    await wait(scripts.disconnect(17, now=20.0))

    late = await rig.follower(chunk=7)
    assert copy_of(late) == await truth(rig.clients[0])
    assert late.service.all_values() == sorted(values)
    assert late.service.client(17) == ClientRecord(17, INT64_MIN + 17, None, False, 20.0)
    assert late.loads == 1 and late.applied == 0

    await wait(scripts.merge(encoder.encode_all([INT64_MAX, 0])))
    await wait(scripts.give(0, 98, now=30.0))
    await caught_up(rig.clients[0], late)
    assert copy_of(late) == await truth(rig.clients[0])
    assert late.loads == 1 and late.applied == 2


@pytest_twisted.ensureDeferred
async def test_prefix_keeps_copies_apart(rig: Rig) -> None:
    """A follower reads its own deployment's keys only (``--redis-prefix``)."""
    blue = await rig.scripts("blue-1", keys=Keys("blue:"))
    await wait(blue.merge(MemberEncoder(random.Random(14)).encode_all([1, 1])))
    await wait(blue.register(3, now=1.0))
    blue_copy = await rig.follower(keys=Keys("blue:"))
    green_copy = await rig.follower(keys=Keys("green:"))
    assert blue_copy.service.all_values() == [1, 1]
    assert blue_copy.service.client(3) == ClientRecord(3, 0, None, True, 1.0)
    assert copy_of(green_copy) == ([], {})


class Interleaved(Follower):
    """A follower that lets the test change the shared state before each snapshot call after
    the first (so changes land between chunks)."""

    between: Callable[[int], Awaitable[None]]
    chunk_calls = 0

    async def _snapshot_call(self, *args: Any) -> Any:
        self.chunk_calls += 1
        if self.chunk_calls > 1:
            await self.between(self.chunk_calls)
        return await super()._snapshot_call(*args)


@pytest_twisted.ensureDeferred
async def test_snapshot_is_exact_while_changes_land_between_chunks(rig: Rig) -> None:
    """Changes between snapshot calls (merges below and above where the next chunk starts,
    clients registered and reported both in chunks already read and in chunks still to
    read) all end up in the snapshot exactly once: it equals Redis as of its entry."""
    scripts = await rig.scripts("instance-a")
    encoder = MemberEncoder(random.Random(7))
    await wait(scripts.merge(encoder.encode_all(list(range(-50, 50)) * 2)))
    for client_id in range(0, 1000, 100):
        await wait(scripts.register(client_id, now=1.0))
    follower = await rig.follower(start=False, kind=Interleaved, chunk=10, client_chunk=3)
    assert isinstance(follower, Interleaved)

    async def between(call: int) -> None:
        low, high = INT64_MIN + call, INT64_MAX - call  # one below every chunk, one above
        await wait(scripts.merge(encoder.encode_all([low, high, -50, 0, 49])))
        await wait(scripts.report(0, call, now=1.0 + call))  # read by the first call
        await wait(scripts.report(900, -call, now=1.0 + call))  # read by a later one
        await wait(scripts.register(call, now=2.0))  # among the clients read already
        await wait(scripts.register(5000 + call, now=2.0))  # after them
        await wait(scripts.update([ClientUpdate(5000 + call, number=call)], now=2.5))  # a batch
        await wait(scripts.register_many([7000 + call], now=2.0))  # a batch of registrations
        await wait(scripts.give(call, call % 100, now=3.0))

    follower.between = between
    snapshot = await wait(Deferred.fromCoroutine(follower.read_snapshot()))
    values, registry = await truth(rig.clients[0])
    calls = follower.chunk_calls
    assert calls > 10
    assert snapshot.values == values and len(values) == 200 + 5 * (calls - 1)
    assert snapshot.clients == registry and len(registry) == 10 + 3 * (calls - 1)
    assert registry[5000 + calls - 1].number == calls - 1 and registry[7000 + calls - 1].connected
    assert registry[0].number == calls and registry[900].number == -calls
    assert registry[calls] == ClientRecord(calls, 0, calls % 100, True, 3.0)
    assert snapshot.entry == await last_entry(rig.clients[0])
    assert snapshot.calls > calls  # the entries between were read too


@pytest_twisted.ensureDeferred
async def test_clear_between_chunks_reads_the_snapshot_again(rig: Rig) -> None:
    """A clear while a snapshot is read spoils it; the follower reads it again and its copy
    is exact."""
    scripts = await rig.scripts("instance-a")
    encoder = MemberEncoder(random.Random(8))
    await wait(scripts.merge(encoder.encode_all(list(range(40)))))
    follower = await rig.follower(start=False, kind=Interleaved, chunk=10)
    assert isinstance(follower, Interleaved)

    async def between(call: int) -> None:
        if call == 3:
            await wait(scripts.clear())
        await wait(scripts.merge(encoder.encode_all([call, -call])))

    follower.between = between
    follower.startService()
    await until(lambda: follower.ready)
    assert copy_of(follower) == await truth(rig.clients[0])
    assert follower.loads == 1 and follower.chunk_calls > 3


@pytest_twisted.ensureDeferred
async def test_trimmed_stream_makes_a_follower_reload(rig: Rig) -> None:
    """A follower that was away while the stream was trimmed past its entry loads a snapshot
    again; one that was away without a trim just resumes."""
    scripts = await rig.scripts("instance-a", stream_maxlen=10)
    await wait(scripts.register(1, now=1.0))
    follower = await rig.follower()
    encoder = MemberEncoder(random.Random(9))

    follower.stopService()
    for n in range(20):  # fewer than a stream node holds: nothing is trimmed
        await wait(scripts.report(1, n, now=2.0))
    follower.startService()
    await caught_up(rig.clients[0], follower)
    assert follower.loads == 1 and follower.gaps == 0

    follower.stopService()
    position = follower.position
    assert position is not None
    for n in range(300):
        await wait(scripts.report(1, n, now=3.0 + n))
        if n % 50 == 0:
            await wait(scripts.merge(encoder.encode_all([n, n])))
    reply = await wait(
        rig.clients[0].execute_command(b"XRANGE", Keys().changes, position, position)
    )
    assert reply == []  # trimmed away
    follower.startService()
    await caught_up(rig.clients[0], follower)
    assert follower.loads == 2 and follower.gaps == 1
    assert copy_of(follower) == await truth(rig.clients[0])
    assert follower.service.client(1) == ClientRecord(1, 299, None, True, 302.0)


@pytest_twisted.ensureDeferred
async def test_follower_resumes_after_redis_restarts(rig: Rig, redis_server: RedisServer) -> None:
    """Redis stopped: the copy is no longer ready and changes fail at once; restarted (its
    append-only file kept everything): the follower reloads by itself and converges."""
    scripts = await rig.scripts("instance-a")
    follower = await rig.follower()
    encoder = MemberEncoder(random.Random(10))
    await wait(scripts.merge(encoder.encode_all(EXTREMES)))
    await wait(scripts.register(4, now=1.0))
    await caught_up(rig.clients[0], follower)

    redis_server.stop()
    await until(lambda: not follower.ready)
    with pytest.raises(RedisUnavailable):
        await wait(scripts.merge(encoder.encode_all([1])))
    assert follower.service.all_values() == sorted(EXTREMES)  # still served, not ready

    redis_server.start()
    await wait(rig.clients[0].when_connected())
    await wait(scripts.merge(encoder.encode_all([2, 2])))
    await wait(scripts.report(4, INT64_MAX, now=5.0))
    await until(lambda: follower.ready)
    await caught_up(rig.clients[0], follower)
    assert copy_of(follower) == await truth(rig.clients[0])
    assert follower.service.all_values() == sorted(EXTREMES + [2, 2])
    assert follower.loads == 2


@pytest_twisted.ensureDeferred
async def test_copy_drops_what_a_restarted_redis_lost(tmp_path: Path) -> None:
    """A Redis without persistence restarts empty: the follower's reload drops the values and
    clients it no longer has (observers are told the list was cleared), then follows."""
    skip_without_redis()
    server = RedisServer(tmp_path / "redis").start()  # no append-only file
    r = Rig(server)
    try:
        scripts = await r.scripts("instance-a")
        seen = Recorder()
        follower = await r.follower()
        follower.service.add_observer(seen)
        await wait(scripts.merge(MemberEncoder(random.Random(11)).encode_all([1, 2, 3])))
        await wait(scripts.register(5, now=1.0))
        await caught_up(r.clients[0], follower)
        server.kill()
        await until(lambda: not r.clients[0].connected)
        server.start()
        await wait(r.clients[0].when_connected())
        await wait(scripts.merge(MemberEncoder(random.Random(12)).encode_all([7])))
        await until(lambda: follower.ready and follower.loads == 2)
        await caught_up(r.clients[0], follower)
        assert copy_of(follower) == ([7], {}) == await truth(r.clients[0])
        assert ("cleared",) in seen.events[2:]
    finally:
        await r.close()
        server.stop()


# -- propagation -----------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    # A numd instance's writes, in a process of its own: one merge script call at a time,
    # one value each, over a plain socket; it notes when each was sent and acknowledged.
    import json, socket, sys, time
    port, sha, count, pause, out = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    def command(*args):
        return b"*%d\\r\\n" % len(args) + b"".join(b"$%d\\r\\n%s\\r\\n" % (len(a), a) for a in args)
    s = socket.create_connection(("127.0.0.1", int(port)))
    s.settimeout(5)
    notes = []
    for n in range(count):
        member = (n + 2**63).to_bytes(8, "big") + b"prop" + n.to_bytes(4, "big")
        sent = time.monotonic()
        s.sendall(command(b"EVALSHA", sha, b"2", b"numd:values", b"numd:changes", b"100000", b"w", member))
        reply = b""
        while not reply.endswith(b":1\\r\\n"):
            reply += s.recv(4096)
        notes.append((n, sent, time.monotonic()))
        time.sleep(pause)
    with open(out, "w") as f:
        json.dump(notes, f)
    """
)


class Arrivals(StateObserver):
    """When each merged value reached a copy (the monotonic clock is shared by all processes)."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}

    def merged(self, values: list[int]) -> None:
        now = time.monotonic()
        for value in values:
            self.at[value] = now


def percentile(samples: list[float], p: float) -> float:
    """The `p`-th percentile (nearest rank) of `samples`."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * len(ordered)))]


@pytest_twisted.ensureDeferred
async def test_propagation_from_another_process(rig: Rig, tmp_path: Path) -> None:
    """Every entry written by another process reaches both followers here, once each.

    A bounded run: 300 merges, 2 ms apart. The time each took (p50, p99 from the
    writer's send and from its acknowledgement) is printed (``pytest -s``), not
    asserted: it is measured in ``bench/`` on a quiet machine.
    """
    await rig.scripts("instance-a")  # loads the merge script
    copies = []
    for _ in range(2):
        follower = await rig.follower()
        arrivals = Arrivals()
        follower.service.add_observer(arrivals)
        copies.append(arrivals)
    out = tmp_path / "writer.json"
    count = 300
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(rig.server.port), SCRIPTS["merge"].sha.decode()]
        + [str(count), "0.002", str(out)],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while writer.poll() is None:
            assert time.monotonic() < deadline, "the writer did not finish within 30 s"
            await sleep(0.05)
        assert writer.returncode == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    await caught_up(rig.clients[0], *rig.followers)
    notes = json.loads(out.read_text())
    figures = {}
    for i, arrivals in enumerate(copies):
        assert sorted(arrivals.at) == list(range(count))
        from_send = [(arrivals.at[n] - sent) * 1000 for n, sent, _ in notes]
        from_ack = [(arrivals.at[n] - acked) * 1000 for n, _, acked in notes]
        figures[f"copy {i + 1}"] = {
            "from send p50 ms": round(statistics.median(from_send), 3),
            "from send p99 ms": round(percentile(from_send, 99), 3),
            "from ack p50 ms": round(statistics.median(from_ack), 3),
            "from ack p99 ms": round(percentile(from_ack, 99), 3),
            "max ms": round(max(from_send), 3),
        }
    print(f"\npropagation over {count} entries ({os.cpu_count()} cores):", json.dumps(figures))
