"""`SharedState`: two numd instances' states on one real redis-server.

Each instance is a `SharedState` with its own connections and local copy; what one
changes, the other reads (through the change stream), and the leases keep an ID live
on one instance at a time. Every test starts its own ``redis-server`` on 127.0.0.1 and
skips with one line without it.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from numd.service import INT64_MAX, INT64_MIN, IdInUse, StateUnavailable
from numd.store.redis.address import redis_config
from numd.store.redis.connection import connect
from numd.store.redis.encoding import MemberEncoder
from numd.store.redis.lua import SCRIPTS
from numd.store.redis.scripts import Keys, StateScripts
from numd.store.redis.state import SharedState
from tests.redis_server import RedisServer

pytest.importorskip("txredisapi", reason="txredisapi not installed")

TIMEOUT = 5


def wait(d: Deferred[Any]) -> Deferred[Any]:
    """`d`, failing with TimeoutError if it has not fired within 5 s."""
    return d.addTimeout(TIMEOUT, reactor)


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` every 10 ms until it holds; fail after 5 s."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition not met within 5 s"
        await wait(deferLater(reactor, 0.01, lambda: None))


class Instances:
    """SharedStates on one redis-server, each as a numd instance would run it; stopped at the end."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.states: list[SharedState] = []

    async def start(self, name: str, lease_time: float = 10.0, **options: Any) -> SharedState:
        config = redis_config(f"redis://127.0.0.1:{self.server.port}")
        assert config is not None

        def client(preload: list[bytes] | None = None) -> Any:
            return connect(
                config,
                reactor,
                reconnect_delay=0.05,
                max_reconnect_delay=0.2,
                preload=preload or (),
            )

        redis = client([script.source for script in SCRIPTS.values()])
        scripts = StateScripts(redis, name, Keys())
        state = SharedState(
            reactor, scripts, redis, client(), random.Random(1), lease_time, **options
        )
        self.states.append(state)
        state.startService()
        await until(lambda: state.ready)
        return state

    async def stop(self) -> None:
        for state in self.states:
            if state.running:
                await wait(state.stopService())


@pytest_twisted.async_yield_fixture
async def instances(redis_server: RedisServer) -> AsyncIterator[Instances]:
    """Instances of the test's redis-server, stopped afterwards."""
    i = Instances(redis_server)
    yield i
    await i.stop()


@pytest_twisted.ensureDeferred
async def test_a_merge_is_in_the_next_read_here_and_soon_on_the_other_instance(
    instances: Instances,
) -> None:
    """Once `when_durable` fires the merge is in this instance's copy; the other's follows."""
    a, b = await instances.start("a"), await instances.start("b")
    a.merge([3, INT64_MAX, 3])
    assert a.list_size == 0  # not applied here directly: it comes back from Redis
    await wait(a.when_durable())
    assert a.all_values() == [3, 3, INT64_MAX]
    b.merge([INT64_MIN, 2**53 + 1])
    await wait(b.when_durable())
    assert b.all_values() == [INT64_MIN, 3, 3, 2**53 + 1, INT64_MAX]
    await until(lambda: a.all_values() == b.all_values())
    b.clear()
    await wait(b.when_durable())
    assert b.list_size == 0
    await until(lambda: a.list_size == 0)


@pytest_twisted.ensureDeferred
async def test_an_id_is_live_on_one_instance_and_resumes_on_another(
    instances: Instances,
) -> None:
    """IdInUse across instances while a holds the lease; after a's disconnect, b resumes from
    the last number a's client reported."""
    a, b = await instances.start("a"), await instances.start("b")
    assert await wait(a.claim(42)) == 0
    a.report(42, 17)
    number = a.give(42, "odd")
    with pytest.raises(IdInUse):
        await wait(b.claim(42))
    await until(lambda: number_of(b, 42) == 17)
    record = b.client(42)
    assert record is not None and record.connected and record.last_given == number
    a.disconnect(42)
    await until(lambda: not getattr(b.client(42), "connected", True))
    assert await wait(b.claim(42)) == 17


@pytest_twisted.ensureDeferred
async def test_a_disconnect_then_a_registration_keep_their_order(instances: Instances) -> None:
    """A client that reconnects to the same instance at once: its disconnect (still in the
    batch) goes before its new registration, which then succeeds."""
    a = await instances.start("a")
    await wait(a.claim(5))
    a.report(5, 9)
    a.disconnect(5)
    assert await wait(a.claim(5)) == 9


@pytest_twisted.ensureDeferred
async def test_a_silent_connections_lease_runs_out_and_its_instance_is_told(
    instances: Instances,
) -> None:
    """Leases are renewed only for talking connections: a's silent one runs out, b takes the
    ID, and a's next update for it tells a (`lease_lost`) instead of being applied."""
    a = await instances.start("a", lease_time=0.6)
    b = await instances.start("b", lease_time=0.6)
    lost: list[int] = []
    a.lease_lost = lost.extend
    talking = {7}
    a.talking = lambda since: [i for i in (7, 8) if i in talking]
    await wait(a.claim(7))
    await wait(a.claim(8))
    talking.discard(8)
    await wait(deferLater(reactor, 1.0, lambda: None))  # past 8's lease time, unrenewed
    assert await wait(b.claim(8)) == 0
    with pytest.raises(IdInUse):  # 7 kept talking: its lease was renewed
        await wait(b.claim(7))
    a.report(8, 5)
    await until(lambda: lost == [8])
    assert number_of(b, 8) == 0


def number_of(state: SharedState, client_id: int) -> int | None:
    """The number `state`'s copy holds for `client_id`, or None if it does not know it."""
    record = state.client(client_id)
    return None if record is None else record.number


@pytest_twisted.ensureDeferred
async def test_many_reports_share_few_script_calls(instances: Instances) -> None:
    """1,500 clients' reports of one reactor turn go in two calls (1,000 a call at most)."""
    a, b = await instances.start("a"), await instances.start("b")
    await wait(gatherResults([a.claim(i) for i in range(750)]))  # at most 1,000 may wait
    await wait(gatherResults([a.claim(i) for i in range(750, 1500)]))
    before = a.update_batches
    for i in range(1500):
        a.report(i, i + 1)
    await until(lambda: all(number_of(b, i) == i + 1 for i in range(1500)))
    assert a.update_batches - before == 1  # one batch, split in two calls by the scripts


@pytest_twisted.ensureDeferred
async def test_redis_down_refuses_changes_at_once_and_keeps_reports(
    instances: Instances,
) -> None:
    """Redis stopped: merges and registrations fail with StateUnavailable at once, not after a
    hang; a report made meanwhile is sent once Redis is back."""
    a = await instances.start("a")
    await wait(a.claim(1))
    instances.server.stop()
    await until(lambda: not a.redis.connected)
    started = time.monotonic()
    a.merge([1])
    with pytest.raises(StateUnavailable):
        await wait(a.when_durable())
    with pytest.raises(StateUnavailable):
        await wait(a.claim(2))
    assert time.monotonic() - started < 1
    a.report(1, 99)
    instances.server.start()
    await until(lambda: a.ready)
    await until(lambda: number_of(a, 1) == 99)
    assert a.unavailable == 2


@pytest_twisted.ensureDeferred
async def test_a_member_collision_is_merged_again_under_a_new_tag(instances: Instances) -> None:
    """Two instances whose encoders drew the same tag: the second merge collides, is retagged
    and applied; duplicates stay duplicates."""
    a = await instances.start("a", encoder=MemberEncoder(random.Random(5)))
    b = await instances.start("b", encoder=MemberEncoder(random.Random(5)))
    a.merge([10])
    await wait(a.when_durable())
    b.merge([10])
    await wait(b.when_durable())
    assert b.all_values() == [10, 10]
    assert a.encoder.tag != b.encoder.tag


@pytest_twisted.ensureDeferred
async def test_each_instance_lists_the_instances_alive_with_their_client_counts(
    instances: Instances,
) -> None:
    """Heartbeats: every instance sees the others and their client counts; one that stops
    cleanly leaves the list at once (at the others' next heartbeat)."""
    a, b = await instances.start("a"), await instances.start("b")
    a.local_clients = lambda: 3
    b.local_clients = lambda: 1
    a.heartbeat()
    b.heartbeat()
    await until(
        lambda: [(i["name"], i["clients"]) for i in b.instances() or []] == [("a", 3), ("b", 1)]
    )
    await wait(b.stopService())
    a.heartbeat()
    await until(lambda: [i["name"] for i in a.instances() or []] == ["a"])


@pytest_twisted.ensureDeferred
async def test_changes_redis_refuses_are_unavailable_and_logged_without_a_flood(
    instances: Instances,
) -> None:
    """Redis out of memory (``maxmemory`` with ``noeviction``): each refused merge fails with
    StateUnavailable, counted; the log gets one line for the lot, not one per change."""
    from twisted.logger import capturedLogs

    a = await instances.start("a")
    await wait(a.redis.execute_command(b"CONFIG", b"SET", b"maxmemory", b"1"))
    with capturedLogs() as events:
        for value in range(20):
            a.merge([value])
            with pytest.raises(StateUnavailable, match="OOM"):
                await wait(a.when_durable())
    await wait(a.redis.execute_command(b"CONFIG", b"SET", b"maxmemory", b"0"))
    assert (a.refused, a.unavailable) == (20, 20)
    refusals = [e for e in events if "refused" in e.get("log_format", "")]
    assert len(refusals) == 1
    a.merge([1])
    await wait(a.when_durable())
    assert a.all_values() == [1]


@pytest_twisted.ensureDeferred
async def test_registrations_past_the_waiting_limit_are_refused_at_once(
    instances: Instances, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of registrations larger than may wait for Redis: the excess is refused at once
    (StateUnavailable: the client backs off), the others registered; nothing times out."""
    import numd.store.redis.state as state_module

    monkeypatch.setattr(state_module, "MAX_PENDING_CLAIMS", 5)
    a = await instances.start("a")
    outcomes: dict[int, object] = {}
    claims = [a.claim(i).addBoth(lambda r, i=i: outcomes.__setitem__(i, r)) for i in range(8)]
    refused = dict(outcomes)  # those answered at once, before Redis could answer any
    assert sorted(refused) == [5, 6, 7]
    assert all("5 registrations wait for Redis" in str(f.value) for f in refused.values())  # type: ignore[attr-defined]
    for d in claims:
        await wait(d)
    assert [outcomes[i] for i in range(5)] == [0] * 5
    assert await wait(a.claim(9)) == 0  # room again once they were answered


@pytest_twisted.ensureDeferred
async def test_metrics_count_this_instances_redis_work(instances: Instances) -> None:
    """``/metrics`` figures of an instance on Redis: connected, ready, its clients, what it applied."""
    from numd.store.redis.figures import metric_values

    a = await instances.start("a")
    a.local_clients = lambda: 4
    a.merge([1])
    await wait(a.when_durable())
    figures = {name: value for _, name, _, value in metric_values(a)}
    assert figures["numd_redis_connected"] == figures["numd_redis_ready"] == 1.0
    assert figures["numd_instance_clients_connected"] == 4
    assert figures["numd_redis_entries_applied"] >= 1 and figures["numd_redis_snapshot_loads"] == 1
    assert figures["numd_redis_unavailable"] == 0 and figures["numd_redis_pending_updates"] == 0
