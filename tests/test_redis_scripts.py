"""numd's Redis scripts against a real redis-server: each change, its stream entry, the leases.

Every test starts its own ``redis-server`` (``appendonly yes``, ``appendfsync always``)
on 127.0.0.1 and talks to it through txredisapi, as numd does: ``charset=None`` and
``convertNumbers=False`` so that every reply stays bytes.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred

from numd.service import INT64_MAX, INT64_MIN, ClientRecord, IdInUse
from numd.store.redis.encoding import (
    MIN_BOUND,
    MemberEncoder,
    below_bound,
    decode_members,
    lex_bounds,
    split_members,
)
from numd.store.redis.scripts import (
    SCRIPTS,
    Applied,
    ClientUpdate,
    Keys,
    LeaseLost,
    MemberCollision,
    Registered,
    StateScripts,
    StreamEntry,
    Updated,
    parse_client,
    parse_entries,
)
from tests.redis_server import RedisServer

txredisapi = pytest.importorskip("txredisapi", reason="txredisapi not installed")

TIMEOUT = 5
EXTREMES = [INT64_MIN, -(2**53) - 1, -1, 0, 1, 2**53, 2**53 + 1, INT64_MAX]


def wait(d: Deferred[Any]) -> Deferred[Any]:
    """`d`, failing with TimeoutError if it has not fired within 5 s."""
    return d.addTimeout(TIMEOUT, reactor)


async def connect(port: int) -> Any:
    """A txredisapi connection to 127.0.0.1:`port` that keeps replies as bytes."""
    d = txredisapi.Connection(
        "127.0.0.1",
        port,
        reconnect=False,
        charset=None,
        convertNumbers=False,
        connectTimeout=TIMEOUT,
        replyTimeout=TIMEOUT,
    )
    return await wait(d)


async def command(redis: Any, *args: bytes | str | int) -> Any:
    """One plain Redis command's reply."""
    return await wait(redis.execute_command(*args))


@pytest_twisted.async_yield_fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Any]:
    """A connection to the test's redis-server, closed afterwards."""
    connection = await connect(redis_server.port)
    yield connection
    await wait(connection.disconnect())


@pytest_twisted.async_yield_fixture
async def other_redis(redis_server: RedisServer) -> AsyncIterator[Any]:
    """A second connection (a second numd instance's), closed afterwards."""
    connection = await connect(redis_server.port)
    yield connection
    await wait(connection.disconnect())


@pytest_twisted.async_fixture
async def a(redis: Any) -> StateScripts:
    """Instance A's scripts, loaded."""
    scripts = StateScripts(redis, "instance-a")
    await wait(scripts.load())
    return scripts


@pytest_twisted.async_fixture
async def b(other_redis: Any) -> StateScripts:
    """Instance B's scripts on its own connection, loaded."""
    scripts = StateScripts(other_redis, "instance-b")
    await wait(scripts.load())
    return scripts


async def last_entry(redis: Any, keys: Keys | None = None) -> StreamEntry:
    """The newest entry of the change stream."""
    reply = await command(redis, b"XREVRANGE", (keys or Keys()).changes, b"+", b"-", b"COUNT", 1)
    return parse_entries(reply)[0]


async def stream_length(redis: Any) -> int:
    """How many entries the change stream holds."""
    return int(await command(redis, b"XLEN", Keys().changes))


async def sorted_list(redis: Any) -> list[int]:
    """The whole sorted list, read by rank."""
    return decode_members(await command(redis, b"ZRANGE", Keys().values, 0, -1))


async def client(redis: Any, client_id: int) -> ClientRecord | None:
    """Client `client_id`'s record as the registry hash holds it."""
    return parse_client(client_id, await command(redis, b"HGETALL", Keys().client(client_id)))


@pytest_twisted.ensureDeferred
async def test_scripts_are_loaded(redis: Any, a: StateScripts) -> None:
    """`load` puts every script in Redis's cache under the SHA1 that EVALSHA names."""
    shas = [script.sha for script in SCRIPTS.values()]
    assert await command(redis, b"SCRIPT", b"EXISTS", *shas) == [1] * len(shas)


@pytest_twisted.ensureDeferred
async def test_merge_keeps_duplicates_and_extremes_exactly(redis: Any, a: StateScripts) -> None:
    """Merged values, duplicates and 64-bit extremes included, read back exactly by rank."""
    values = EXTREMES * 2 + [5, 5, 5, -7]
    random.Random(1).shuffle(values)
    members = MemberEncoder(random.Random(2)).encode_all(values)
    applied = await wait(a.merge(members))
    assert isinstance(applied, Applied) and applied.count == len(values)
    assert await sorted_list(redis) == sorted(values)
    assert int(await command(redis, b"ZCARD", Keys().values)) == len(values)
    # all scores 0: the order is the members' bytes, never a double
    assert await command(redis, b"ZCOUNT", Keys().values, 0, 0) == len(values)

    entry = await last_entry(redis)
    assert (entry.entry, entry.op, entry.instance) == (applied.entry, "merge", "instance-a")
    assert split_members(entry.fields[b"members"]) == members
    assert decode_members(split_members(entry.fields[b"members"])) == values


@pytest_twisted.ensureDeferred
async def test_second_merge_interleaves(redis: Any, a: StateScripts, b: StateScripts) -> None:
    """Merges from two instances (two encoders) make one list in value order, a stream entry each."""
    first, second = [3, 1, 2, 2], [2, 0, 4, INT64_MAX]
    await wait(a.merge(MemberEncoder(random.Random(3)).encode_all(first)))
    applied = await wait(b.merge(MemberEncoder(random.Random(4)).encode_all(second)))
    assert await sorted_list(redis) == sorted(first + second)
    assert await stream_length(redis) == 2
    assert (await last_entry(redis)).instance == "instance-b" and applied.count == 4


@pytest_twisted.ensureDeferred
async def test_large_merge_is_one_change(redis: Any, a: StateScripts) -> None:
    """A merge larger than Lua's unpack limit (about 8000) goes in whole, as one stream entry."""
    rng = random.Random(5)
    values = [rng.randint(INT64_MIN, INT64_MAX) for _ in range(12_000)] + [7] * 100
    members = MemberEncoder(rng).encode_all(values)
    applied = await wait(a.merge(members))
    assert applied.count == len(values)
    assert await sorted_list(redis) == sorted(values)
    assert await stream_length(redis) == 1
    assert split_members((await last_entry(redis)).fields[b"members"]) == members


@pytest_twisted.ensureDeferred
async def test_collision_applies_nothing(redis: Any, a: StateScripts) -> None:
    """A batch with a member already in the list is refused whole; a retag makes it go in."""
    encoder = MemberEncoder(random.Random(6))
    await wait(a.merge(encoder.encode_all([1, 2, 3])))
    again = MemberEncoder(random.Random(6))  # the same tag: as if two instances drew it
    batch = [1, 20, 30]  # 1 gets the same suffix as the 1 merged before
    with pytest.raises(MemberCollision):
        await wait(a.merge(again.encode_all(batch)))
    assert await sorted_list(redis) == [1, 2, 3]
    assert await stream_length(redis) == 1
    again.retag()
    await wait(a.merge(again.encode_all(batch)))
    assert await sorted_list(redis) == [1, 1, 2, 3, 20, 30]


@pytest_twisted.ensureDeferred
async def test_malformed_member_applies_nothing(redis: Any, a: StateScripts) -> None:
    """A member of the wrong length fails the whole merge, naming its position."""
    members = MemberEncoder(random.Random(7)).encode_all([1, 2])
    with pytest.raises(txredisapi.ResponseError, match="bad-member 2"):
        await wait(a.merge([members[0], members[1][:15]]))
    assert await sorted_list(redis) == []
    assert await stream_length(redis) == 0
    with pytest.raises(ValueError, match="repeats a member"):
        a.merge([members[0], members[0]])


@pytest_twisted.ensureDeferred
async def test_clear(redis: Any, a: StateScripts) -> None:
    """A clear empties the list, says how many values it held, and leaves a 'clear' entry."""
    await wait(a.merge(MemberEncoder(random.Random(8)).encode_all([4, 4, 9])))
    applied = await wait(a.clear())
    assert applied.count == 3
    assert await sorted_list(redis) == []
    entry = await last_entry(redis)
    assert (entry.entry, entry.op, entry.instance) == (applied.entry, "clear", "instance-a")
    assert (await wait(a.clear())).count == 0


@pytest_twisted.ensureDeferred
async def test_bylex_reads_value_ranges(redis: Any, a: StateScripts) -> None:
    """ZRANGE BYLEX and ZLEXCOUNT with `lex_bounds` select exactly the values in [low, high]."""
    rng = random.Random(9)
    values = EXTREMES * 3 + [rng.randint(-50, 50) for _ in range(200)]
    await wait(a.merge(MemberEncoder(rng).encode_all(values)))
    key = Keys().values
    ranges = [(None, None), (0, 0), (5, 5), (-10, 10), (2**53, 2**53 + 1), (INT64_MIN, -1)]
    ranges += [(1, INT64_MAX), (INT64_MAX, INT64_MAX), (INT64_MIN, INT64_MIN), (10, -10)]
    for low, high in ranges:
        expected = sorted(
            v for v in values if (low is None or v >= low) and (high is None or v <= high)
        )
        minimum, maximum = lex_bounds(low, high)
        got = await command(redis, b"ZRANGE", key, minimum, maximum, b"BYLEX")
        assert decode_members(got) == expected, (low, high)
        assert await command(redis, b"ZLEXCOUNT", key, minimum, maximum) == len(expected)
        page = await command(redis, b"ZRANGE", key, minimum, maximum, b"BYLEX", b"LIMIT", 3, 5)
        assert decode_members(page) == expected[3:8], (low, high)
    for value in [INT64_MIN, 0, 2**53 + 1, INT64_MAX]:
        below = await command(redis, b"ZLEXCOUNT", key, MIN_BOUND, below_bound(value))
        assert below == sum(v < value for v in values)


@pytest_twisted.ensureDeferred
async def test_register_report_give_disconnect(redis: Any, a: StateScripts) -> None:
    """Each client change updates the registry hash and leaves its own stream entry."""
    registered = await wait(a.register(42, now=1000.5))
    assert isinstance(registered, Registered) and registered.number == 0
    assert await client(redis, 42) == ClientRecord(42, 0, None, True, 1000.5)
    entry = await last_entry(redis)
    assert (entry.entry, entry.op, entry.instance) == (registered.entry, "register", "instance-a")
    assert entry.fields[b"id"] == b"42" and entry.fields[b"number"] == b"0"
    assert await command(redis, b"ZRANGE", Keys().clients, 0, -1) == [b"42"]

    reported = await wait(a.report(42, INT64_MAX, now=1001.25))
    assert await client(redis, 42) == ClientRecord(42, INT64_MAX, None, True, 1001.25)
    entry = await last_entry(redis)
    assert (entry.entry, entry.op) == (reported, "report")
    assert entry.fields[b"number"] == b"9223372036854775807"
    assert entry.fields[b"last_seen"] == b"1001.25"

    given = await wait(a.give(42, 77, now=1001.75))
    assert await client(redis, 42) == ClientRecord(42, INT64_MAX, 77, True, 1001.75)
    entry = await last_entry(redis)
    assert (entry.entry, entry.op, entry.fields[b"last_given"]) == (given, "give", b"77")

    gone = await wait(a.disconnect(42, now=1002.0))
    assert await client(redis, 42) == ClientRecord(42, INT64_MAX, 77, False, 1002.0)
    entry = await last_entry(redis)
    assert (entry.entry, entry.op, entry.fields[b"id"]) == (gone, "disconnect", b"42")
    assert await command(redis, b"EXISTS", Keys().lease(42)) == 0
    assert await wait(a.disconnect(42, now=1003.0)) is None
    assert await stream_length(redis) == 4


@pytest_twisted.ensureDeferred
async def test_register_many_registers_each_free_id_in_one_entry(
    redis: Any, a: StateScripts, b: StateScripts
) -> None:
    """Several registrations in one call: each free ID gets its start number (from any
    instance), an ID live elsewhere gets None and is left alone; one 'register-many' entry."""
    await wait(b.register(2, 1.0))
    await wait(b.update([ClientUpdate(2, number=40), ClientUpdate(3, number=0)], 1.5))
    await wait(b.register(3, 1.0))
    await wait(b.update([ClientUpdate(3, number=33, bye=True)], 2.0))
    numbers = await wait(a.register_many([1, 2, 3], 5.0))
    assert numbers == [0, None, 33]
    entry = await last_entry(redis)
    assert (entry.op, entry.instance) == ("register-many", "instance-a")
    assert entry.fields[b"clients"] == b"1 0\n3 33"
    assert entry.fields[b"last_seen"] == b"5.0"
    three = await client(redis, 3)
    assert three is not None and (three.number, three.connected) == (33, True)
    assert await command(redis, b"GET", Keys().lease(3)) == b"instance-a"
    assert await command(redis, b"GET", Keys().lease(2)) == b"instance-b"
    assert await wait(a.register_many([2], 6.0)) == [None]  # nothing applied: no entry
    assert (await last_entry(redis)).entry == entry.entry


@pytest_twisted.ensureDeferred
async def test_update_applies_many_clients_in_one_entry(redis: Any, a: StateScripts) -> None:
    """Reports, given numbers and disconnects of several clients: one call, one 'update' entry
    with a line per client; a disconnect frees the lease."""
    for client_id in (1, 2, 3):
        await wait(a.register(client_id, 10.0))
    changes = [
        ClientUpdate(1, number=INT64_MAX),
        ClientUpdate(2, given=41),
        ClientUpdate(3, number=-5, given=8, bye=True),
    ]
    updated = await wait(a.update(changes, 11.5))
    assert isinstance(updated, Updated) and len(updated.entries) == 1 and updated.lost == []
    entry = await last_entry(redis)
    assert (entry.entry, entry.op) == (updated.entries[0], "update")
    assert entry.fields[b"clients"] == f"1 {INT64_MAX} - 0\n2 - 41 0\n3 -5 8 1".encode()
    assert entry.fields[b"last_seen"] == b"11.5"
    one, two, three = [await client(redis, i) for i in (1, 2, 3)]
    assert one is not None and (one.number, one.connected) == (INT64_MAX, True)
    assert two is not None and two.last_given == 41
    assert three is not None and (three.number, three.last_given, three.connected) == (-5, 8, False)
    assert await command(redis, b"EXISTS", Keys().lease(3)) == 0


@pytest_twisted.ensureDeferred
async def test_update_skips_clients_whose_lease_is_not_held_here(
    redis: Any, a: StateScripts, b: StateScripts
) -> None:
    """A client now live on another instance is not updated and comes back as lost; with
    nothing applied there is no entry."""
    await wait(b.register(4, 10.0))
    before = await stream_length(redis)
    updated = await wait(a.update([ClientUpdate(4, number=99)], 11.0))
    assert (updated.entries, updated.lost) == ([], [4])
    assert await stream_length(redis) == before
    record = await client(redis, 4)
    assert record is not None and record.number == 0


@pytest_twisted.ensureDeferred
async def test_update_of_more_than_a_batch_is_split(redis: Any, a: StateScripts) -> None:
    """More clients than one call takes (1,000): several calls, every client updated."""
    for client_id in range(1500):
        await wait(a.register(client_id, 1.0))
    updated = await wait(a.update([ClientUpdate(i, number=i * 3) for i in range(1500)], 2.0))
    assert len(updated.entries) == 2 and updated.lost == []
    record = await client(redis, 1499)
    assert record is not None and record.number == 4497


@pytest_twisted.ensureDeferred
async def test_numbers_never_pass_through_doubles(redis: Any, a: StateScripts) -> None:
    """Reported numbers past 2^53 (and times with many digits) come back digit for digit."""
    await wait(a.register(1, now=1234567.123456789))
    for number in [2**53 + 1, INT64_MIN, INT64_MAX, 2**63 - 3]:
        await wait(a.report(1, number, now=1.0))
        assert (await client(redis, 1)).number == number  # type: ignore[union-attr]
    record = await client(redis, 1)
    await wait(a.disconnect(1, now=1234567.123456789))
    assert (await client(redis, 1)).last_seen == 1234567.123456789  # type: ignore[union-attr]
    assert record is not None and record.number == 2**63 - 3


@pytest_twisted.ensureDeferred
async def test_returning_client_resumes_on_another_instance(
    redis: Any, a: StateScripts, b: StateScripts
) -> None:
    """A client that reported on A and comes back on B starts from its last number there."""
    await wait(a.register(9, now=1.0))
    await wait(a.report(9, 2**53 + 1, now=2.0))
    await wait(a.disconnect(9, now=3.0))
    registered = await wait(b.register(9, now=4.0))
    assert registered.number == 2**53 + 1
    assert (await last_entry(redis)).instance == "instance-b"
    assert await command(redis, b"HGET", Keys().client(9), b"instance") == b"instance-b"


@pytest_twisted.ensureDeferred
async def test_id_in_use_across_instances(redis: Any, a: StateScripts, b: StateScripts) -> None:
    """An ID live on A is refused on B (and on A again) with IdInUse, changing nothing."""
    await wait(a.register(5, now=1.0))
    length = await stream_length(redis)
    with pytest.raises(IdInUse) as caught:
        await wait(b.register(5, now=2.0))
    assert caught.value.args == (5,)
    with pytest.raises(IdInUse):
        await wait(a.register(5, now=2.0))
    assert await stream_length(redis) == length
    assert await client(redis, 5) == ClientRecord(5, 0, None, True, 1.0)
    assert await command(redis, b"GET", Keys().lease(5)) == b"instance-a"
    # B may not report for, give to or disconnect a client live on A
    with pytest.raises(LeaseLost):
        await wait(b.report(5, 3, now=3.0))
    with pytest.raises(LeaseLost):
        await wait(b.give(5, 3, now=3.0))
    assert await wait(b.disconnect(5, now=3.0)) is None
    assert await client(redis, 5) == ClientRecord(5, 0, None, True, 1.0)
    assert await stream_length(redis) == length


@pytest_twisted.ensureDeferred
async def test_disconnect_frees_the_id_at_once(
    redis: Any, a: StateScripts, b: StateScripts
) -> None:
    """A clean disconnect frees the lease: another instance may register the ID right away."""
    await wait(a.register(6, now=1.0, lease_time=60))
    await wait(a.disconnect(6, now=2.0))
    assert (await wait(b.register(6, now=3.0))).number == 0


@pytest_twisted.ensureDeferred
async def test_lease_expires_after_its_time(redis: Any, a: StateScripts, b: StateScripts) -> None:
    """An instance that stops renewing (it died) loses its IDs after the lease time; B takes over."""
    await wait(a.register(7, now=1.0, lease_time=0.3))
    await wait(a.report(7, 12, now=1.1))
    with pytest.raises(IdInUse):
        await wait(b.register(7, now=1.2))
    await wait(task.deferLater(reactor, 0.45))
    assert (await wait(b.register(7, now=2.0))).number == 12
    # A, come back to life, has lost the client: it may no longer change it
    with pytest.raises(LeaseLost):
        await wait(a.report(7, 13, now=2.1))
    assert await wait(a.disconnect(7, now=2.2)) is None
    assert await client(redis, 7) == ClientRecord(7, 12, None, True, 2.0)
    assert await wait(a.renew([7])) == [7]


@pytest_twisted.ensureDeferred
async def test_expired_lease_still_disconnects(redis: Any, a: StateScripts) -> None:
    """If A's lease ran out and nobody took the ID, A's disconnect still marks it disconnected."""
    await wait(a.register(8, now=1.0, lease_time=0.1))
    await wait(task.deferLater(reactor, 0.25))
    assert await wait(a.disconnect(8, now=2.0)) is not None
    assert await client(redis, 8) == ClientRecord(8, 0, None, False, 2.0)


@pytest_twisted.ensureDeferred
async def test_renewal_keeps_ids_live(redis: Any, a: StateScripts, b: StateScripts) -> None:
    """Renewed leases outlive their first term; renew names the IDs this instance does not hold."""
    await wait(a.register(1, now=1.0, lease_time=0.4))
    await wait(a.register(2, now=1.0, lease_time=0.4))
    await wait(b.register(3, now=1.0, lease_time=10))
    await wait(task.deferLater(reactor, 0.25))
    assert await wait(a.renew([1, 2, 3, 4], lease_time=10)) == [3, 4]
    await wait(task.deferLater(reactor, 0.3))  # past the first term
    for client_id in (1, 2, 3):
        with pytest.raises(IdInUse):
            await wait(b.register(client_id, now=2.0))
    assert int(await command(redis, b"PTTL", Keys().lease(1))) > 5000
    assert await command(redis, b"GET", Keys().lease(3)) == b"instance-b"


@pytest_twisted.ensureDeferred
async def test_renewal_in_batches(redis: Any, a: StateScripts) -> None:
    """More leases than one renewal call takes are renewed over several calls, lost ones named."""
    for client_id in range(0, 2500, 2):
        await wait(a.register(client_id, now=1.0))
    lost = await wait(a.renew(range(2500)))
    assert lost == list(range(1, 2500, 2))


@pytest_twisted.ensureDeferred
async def test_scripts_reload_after_redis_forgets_them(redis: Any, a: StateScripts) -> None:
    """After SCRIPT FLUSH (as after a restart) the next call loads its script again and works."""
    await command(redis, b"SCRIPT", b"FLUSH")
    await wait(a.merge(MemberEncoder(random.Random(10)).encode_all([3, 1])))
    assert await sorted_list(redis) == [1, 3]
    assert await command(redis, b"SCRIPT", b"EXISTS", SCRIPTS["merge"].sha) == [1]


@pytest_twisted.ensureDeferred
async def test_full_memory_refuses_whole_changes(redis: Any, a: StateScripts) -> None:
    """With memory full (noeviction), a change is refused before it starts: nothing half-applied.

    Lease renewal still works: it takes no memory, and a live client must keep its ID.
    """
    await wait(a.register(1, now=1.0))
    await wait(a.merge(MemberEncoder(random.Random(11)).encode_all([1])))
    await command(redis, b"CONFIG", b"SET", b"maxmemory", b"1")
    try:
        with pytest.raises(txredisapi.ResponseError, match="OOM"):
            await wait(a.merge(MemberEncoder(random.Random(12)).encode_all([2, 3])))
        with pytest.raises(txredisapi.ResponseError, match="OOM"):
            await wait(a.report(1, 5, now=2.0))
        assert await wait(a.renew([1])) == []
    finally:
        await command(redis, b"CONFIG", b"SET", b"maxmemory", b"0")
    assert await sorted_list(redis) == [1]
    assert await stream_length(redis) == 2
    assert (await client(redis, 1)).number == 0  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_acknowledged_changes_survive_a_crash(
    redis_server: RedisServer, redis: Any, a: StateScripts
) -> None:
    """With appendfsync always, every change Redis acknowledged is there after SIGKILL and restart."""
    values = EXTREMES + [2, 2]
    await wait(a.merge(MemberEncoder(random.Random(13)).encode_all(values)))
    await wait(a.register(3, now=1.0))
    await wait(a.report(3, INT64_MAX, now=2.0))
    redis_server.kill()
    redis_server.start()
    again = await connect(redis_server.port)
    try:
        scripts = StateScripts(again, "instance-a2")  # scripts not loaded: the cache is gone
        assert await sorted_list(again) == sorted(values)
        assert (await client(again, 3)).number == INT64_MAX  # type: ignore[union-attr]
        assert await stream_length(again) == 3
        await wait(scripts.merge(MemberEncoder(random.Random(14)).encode_all([0])))
        assert await sorted_list(again) == sorted([*values, 0])
    finally:
        await wait(again.disconnect())


@pytest_twisted.ensureDeferred
async def test_prefix_keeps_deployments_apart(redis: Any) -> None:
    """Two deployments with different prefixes share one Redis without seeing each other."""
    blue = StateScripts(redis, "blue-1", Keys("blue:"))
    green = StateScripts(redis, "green-1", Keys("green:"))
    await wait(blue.merge(MemberEncoder(random.Random(15)).encode_all([1, 2])))
    await wait(blue.register(4, now=1.0))
    await wait(green.register(4, now=1.0))  # the same ID, another deployment: no conflict
    got = await command(redis, b"ZRANGE", Keys("green:").values, 0, -1)
    assert got == []
    assert sorted(await command(redis, b"KEYS", b"*")) == [
        b"blue:changes",
        b"blue:client:4",
        b"blue:clients",
        b"blue:lease:4",
        b"blue:values",
        b"green:changes",
        b"green:client:4",
        b"green:clients",
        b"green:lease:4",
    ]
    assert (await last_entry(redis, Keys("green:"))).op == "register"


@pytest_twisted.ensureDeferred
async def test_stream_is_trimmed(redis: Any) -> None:
    """The change stream keeps about `stream_maxlen` entries (MAXLEN ~), never far more."""
    scripts = StateScripts(redis, "small", stream_maxlen=10)
    await wait(scripts.register(1, now=1.0))
    for n in range(300):
        await wait(scripts.report(1, n, now=2.0))
    assert 10 <= await stream_length(redis) < 300


def test_arguments_are_checked() -> None:
    """Bad client IDs, non-integer numbers and instance names are refused before Redis is asked."""
    scripts = StateScripts(object(), "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside 0-10000"):
        scripts.register(10_001, now=1.0)
    with pytest.raises(TypeError, match="not an integer"):
        scripts.report(1, 1.5, now=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shorter than a millisecond"):
        scripts.register(1, now=1.0, lease_time=0.0001)
    with pytest.raises(ValueError, match="without spaces"):
        StateScripts(object(), "a b")  # type: ignore[arg-type]
