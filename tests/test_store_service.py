"""The Store service: group commit, ordering, reload, the report policies, failures, stopping,
the wiring in the daemon, and a lost file under a running store."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage

from numd.counter.protocol import CounterFactory
from numd.service import NumberService
from numd.store.batch import Batch
from numd.store.schema import CREATE_V1
from numd.store.service import LAZY_SLICE, Store, make_store
from numd.tap import Options, makeService

from .manual_writer import ManualWriter
from .store_support import fired, reloaded, started


@pytest.fixture
def writer() -> ManualWriter:
    """A writer the test drives by hand."""
    return ManualWriter()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    """Where the test's database lives."""
    return str(tmp_path / "numd.db")


@pytest.fixture
def store(
    state: NumberService, db_path: str, clock: Clock, writer: ManualWriter
) -> Iterator[Store]:
    """A started store with the default sync policy and a hand-driven writer."""
    s = started(state, db_path, clock, writer)
    yield s
    if s.running:
        s.stopService()
        writer.finish_all()


# -- acknowledged changes and group commit -----------------------------------------------------------


def test_a_merge_is_durable_only_once_its_batch_is_committed(
    state: NumberService, store: Store, clock: Clock, writer: ManualWriter, db_path: str
) -> None:
    """when_durable() fires after the commit, not before; the values are then in the file."""
    state.merge([3, 1])
    durable = state.when_durable()
    assert durable is not None and not fired(state.when_durable())
    clock.advance(0)
    assert len(writer.jobs) == 1
    writer.finish()
    assert fired(durable)
    assert state.when_durable() is None
    assert list(reloaded(db_path).values) == [1, 3]


def test_changes_during_a_commit_share_the_next_one(
    state: NumberService, store: Store, clock: Clock, writer: ManualWriter
) -> None:
    """Group commit: everything that arrives while one batch is written goes into one next batch."""
    state.merge([1])
    first = state.when_durable()
    clock.advance(0)
    waiters = []
    for value in range(2, 50):
        state.merge([value])
        waiters.append(state.when_durable())
    clock.advance(0)
    assert len(writer.jobs) == 1, "no second commit while the first runs"
    writer.finish()
    assert fired(first) and not any(fired(w) for w in waiters)
    assert len(writer.jobs) == 1, "the next batch starts as soon as the first is done"
    writer.finish()
    assert all(fired(w) for w in waiters)
    assert (store.commits, store.committed_changes) == (2, 49)


def test_one_turn_of_the_reactor_is_one_batch(
    state: NumberService, store: Store, clock: Clock, writer: ManualWriter
) -> None:
    """Changes made before the reactor turns (one read of the network) are committed together."""
    for value in range(10):
        state.merge([value])
    clock.advance(0)
    assert len(writer.jobs) == 1
    writer.finish()
    assert store.commits == 1 and not writer.jobs


@pytest.mark.parametrize(
    "changes,expected",
    [
        ([None, [7], [7, 8]], [7, 7, 8]),
        ([[2, 3], None], []),
        ([[1], None, [2], None, [3]], [3]),
    ],
    ids=["clear-then-adds", "adds-then-clear", "interleaved"],
)
def test_clears_and_adds_in_one_batch_keep_their_order(
    state: NumberService,
    store: Store,
    clock: Clock,
    writer: ManualWriter,
    db_path: str,
    changes: list[list[int] | None],
    expected: list[int],
) -> None:
    """Within one batch a clear wipes what came before it (older batches too) and keeps what follows."""
    state.merge([5, 6])
    clock.advance(0)
    writer.finish()
    for change in changes:
        if change is None:
            state.clear()
        else:
            state.merge(change)
    clock.advance(0)
    assert len(writer.jobs) == 1
    writer.finish_all()
    assert list(reloaded(db_path).values) == expected == list(state.values)


def test_clear_while_a_commit_runs(
    state: NumberService, store: Store, clock: Clock, writer: ManualWriter, db_path: str
) -> None:
    """A clear arriving while adds are being written wipes them in the next batch."""
    state.merge([1, 2])
    clock.advance(0)
    state.clear()
    state.merge([9])
    writer.finish_all()
    assert list(reloaded(db_path).values) == [9]


def test_duplicates_add_up_across_batches(
    state: NumberService, store: Store, clock: Clock, writer: ManualWriter, db_path: str
) -> None:
    """The same value merged in several batches is kept as often as it was added."""
    state.merge([2, 2, -5])
    clock.advance(0)
    writer.finish()
    state.merge([2])
    clock.advance(0)
    writer.finish()
    assert list(reloaded(db_path).values) == [-5, 2, 2, 2]


def test_extreme_values_round_trip(
    state: NumberService, store: Store, writer: ManualWriter, db_path: str
) -> None:
    """The 64-bit limits are stored and loaded exactly."""
    state.merge([2**63 - 1, -(2**63), 0])
    store.flush()
    writer.finish_all()
    assert list(reloaded(db_path).values) == [-(2**63), 0, 2**63 - 1]


def test_extreme_client_rows_round_trip(
    state: NumberService, store: Store, clock: Clock, writer: ManualWriter, db_path: str
) -> None:
    """Client numbers at the 64-bit limits, no given number and odd times come back exactly."""
    clock.advance(1732245600.123456)
    for client_id, number in ((0, 2**63 - 1), (10_000, -(2**63)), (5, 0)):
        state.register(client_id)
        state.report(client_id, number)
    state.give(5, "even")
    store.flush()
    writer.finish_all()
    fresh = reloaded(db_path)
    for client_id in (0, 5, 10_000):
        assert fresh.clients[client_id].as_dict() == {
            **state.clients[client_id].as_dict(),
            "connected": False,
        }
    assert fresh.clients[0].last_given is None


# -- the registry and the lazy report policy ---------------------------------------------------------


def test_the_registry_is_reloaded_with_every_client_disconnected(
    state: NumberService, store: Store, clock: Clock, writer: ManualWriter, db_path: str
) -> None:
    """Numbers, given numbers and last-seen times come back; nobody is connected after a restart."""
    state.register(7)
    state.report(7, 1080)
    state.give(7, "odd")
    clock.advance(2)
    state.disconnect(7)
    state.register(8)
    state.report(8, -3)
    store.flush()
    writer.finish_all()
    fresh = reloaded(db_path)
    assert fresh.clients[7].as_dict() == {**state.clients[7].as_dict(), "connected": False}
    assert fresh.clients[8].as_dict() == {**state.clients[8].as_dict(), "connected": False}
    assert fresh.register(8) == -3


def test_everysec_writes_reports_within_a_second(
    state: NumberService, store: Store, clock: Clock, writer: ManualWriter, db_path: str
) -> None:
    """Under the default policy reports wait for the once-a-second tick, and nobody waits for them."""
    state.register(1)
    for number in range(1, 6):
        state.report(1, number)
    assert state.when_durable() is None
    clock.advance(0.99)
    assert not writer.jobs
    clock.advance(0.01)
    assert len(writer.jobs) == 1
    writer.finish()
    assert reloaded(db_path).clients[1].number == 5
    clock.advance(1)
    assert not writer.jobs, "nothing changed, nothing to write"


def test_a_tick_takes_many_clients_a_slice_per_reactor_turn(
    state: NumberService,
    store: Store,
    clock: Clock,
    writer: ManualWriter,
    db_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Thousands of changed clients reach the writer in slices of LAZY_SLICE, one per turn, all of them."""
    slices: list[int] = []
    put_clients = Batch.put_clients

    def record(batch: Batch, rows: dict[int, Any]) -> None:
        slices.append(len(rows))
        put_clients(batch, rows)

    monkeypatch.setattr(Batch, "put_clients", record)
    count = 2 * LAZY_SLICE + 10
    for client_id in range(count):
        state.register(client_id)
        state.report(client_id, client_id * 3)
    clock.advance(1)  # the tick, then each slice in a later call of its own
    assert slices == [LAZY_SLICE, LAZY_SLICE, 10]
    writer.finish_all()
    fresh = reloaded(db_path)
    assert len(fresh.clients) == count
    assert all(fresh.clients[i].number == i * 3 for i in range(count))
    state.report(5, -1)  # a change after the tick waits for the next one
    clock.advance(1)
    writer.finish_all()
    assert reloaded(db_path).clients[5].number == -1


def test_everysec_merges_do_not_wait_for_reports(
    state: NumberService, store: Store, clock: Clock, writer: ManualWriter, db_path: str
) -> None:
    """An acknowledged merge is committed at once; the lazy reports stay for the tick."""
    state.register(1)
    state.report(1, 42)
    state.merge([4])
    clock.advance(0)
    writer.finish()
    assert state.when_durable() is None, "the merge is stored; the report is not awaited"
    assert 1 not in reloaded(db_path).clients
    clock.advance(1)
    writer.finish()
    assert reloaded(db_path).clients[1].number == 42


def test_always_puts_each_report_in_the_next_commit(
    state: NumberService, db_path: str, clock: Clock, writer: ManualWriter
) -> None:
    """With sync="always" a report is committed with the next batch, which merges wait for."""
    store = started(state, db_path, clock, writer, sync="always")
    state.register(3)
    state.report(3, 99)
    durable = state.when_durable()
    assert durable is not None
    clock.advance(0)
    writer.finish()
    assert fired(durable)
    assert reloaded(db_path).clients[3].number == 99
    store.stopService()
    writer.finish_all()


def test_unknown_sync_policy_is_refused(state: NumberService, db_path: str, clock: Clock) -> None:
    """Only everysec and always exist."""
    with pytest.raises(ValueError, match="everysec, always"):
        Store(state, db_path, clock, sync="sometimes")


# -- failures and stopping ---------------------------------------------------------------------------


def test_a_failed_commit_fails_its_waiters_and_is_retried_in_order(
    state: NumberService, store: Store, clock: Clock, writer: ManualWriter, db_path: str
) -> None:
    """The failed batch is kept ahead of newer changes and written again after the retry delay."""
    state.merge([1])
    failing = state.when_durable()
    clock.advance(0)
    state.clear()
    state.merge([2])
    later = state.when_durable()
    writer.fail_next = True
    writer.finish()
    errors: list[Any] = []
    assert failing is not None
    failing.addErrback(errors.append)
    assert errors and errors[0].check(OSError)
    assert store.failures == 1 and not writer.jobs
    clock.advance(store.retry_delay)
    writer.finish()
    assert fired(later)
    assert list(reloaded(db_path).values) == [2]


def test_stop_writes_everything_pending_and_closes(
    state: NumberService, db_path: str, clock: Clock, writer: ManualWriter
) -> None:
    """Stopping flushes the lazy reports and the open batch, waits for them, then closes."""
    store = started(state, db_path, clock, writer)
    state.register(5)
    state.report(5, 12)
    state.merge([1])
    clock.advance(0)
    state.merge([2])
    stopped = store.stopService()
    assert not fired(stopped)
    writer.finish_all()
    assert fired(stopped)
    assert store._db is None, "the file is closed (on the writer)"
    assert state.when_durable() is None, "a stopped store makes nobody wait"
    fresh = reloaded(db_path)
    assert list(fresh.values) == [1, 2] and fresh.clients[5].number == 12


# -- the counter protocol, HTTP and the legacy listener wait for the store ---------------------------


def test_an_array_reply_waits_for_its_commit(
    factory: CounterFactory, db_path: str, clock: Clock, writer: ManualWriter
) -> None:
    """Over the counter protocol the array's reply (its acknowledgement) follows the commit."""
    store = started(factory.service, db_path, clock, writer)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"[3,1] ")
    clock.advance(0)
    assert transport.value() == b""
    writer.finish()
    clock.advance(0)  # replies are released at the end of the reactor turn
    assert transport.value() == b"[1,3] "
    protocol.connectionLost(None)
    store.stopService()
    writer.finish_all()


def test_http_and_legacy_array_answers_wait_for_the_real_store(
    state: NumberService, store: Store, clock: Clock, writer: ManualWriter, db_path: str
) -> None:
    """POST/DELETE over HTTP and a legacy pickled array are answered only after the store commits them."""
    import pickle

    from treq.testing import StubTreq
    from twisted.internet.address import IPv4Address

    from numd.counter.legacy_array import LegacyArrayFactory
    from numd.http.api import NumdApi

    http = StubTreq(NumdApi(state).resource())
    answers: list[int] = []
    http.delete("http://numd/api/v1/values").addCallback(lambda r: answers.append(r.code))
    http.post("http://numd/api/v1/values", data=b"[4,2]").addCallback(
        lambda r: answers.append(r.code)
    )
    http.flush()
    legacy = LegacyArrayFactory(state).buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    legacy.makeConnection(transport)
    legacy.dataReceived(pickle.dumps([3], protocol=2))
    clock.advance(0)
    assert answers == [] and transport.value() == b""
    writer.finish_all()
    http.flush()
    assert answers == [200, 200]
    assert pickle.loads(transport.value()) == [2, 3, 4]
    assert list(reloaded(db_path).values) == [2, 3, 4]
    legacy.connectionLost(None)


# -- wiring: options, makeService, a real writer thread ----------------------------------------------


def test_db_and_sync_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--db defaults to numd.db and --sync to everysec; bad values are usage errors naming the option."""
    monkeypatch.chdir(tmp_path)
    options = Options()
    options.parseOptions([])
    assert (options["db"], options["sync"]) == ("numd.db", "everysec")
    options = Options()
    options.parseOptions(["--db", ":memory:", "--sync", "always"])
    assert (options["db"], options["sync"]) == (":memory:", "always")
    with pytest.raises(usage.UsageError, match="--sync: 'never' is not one of everysec, always"):
        Options().parseOptions(["--sync", "never"])
    with pytest.raises(usage.UsageError, match="--db: directory /nonexistent/dir"):
        Options().parseOptions(["--db", "/nonexistent/dir/numd.db"])


def test_memory_keeps_nothing(tmp_path: Path) -> None:
    """--db :memory: builds no store, so nothing waits for a disk."""
    options = Options()
    options.parseOptions(["--db", ":memory:", "--message-log", str(tmp_path / "m.log")])
    daemon = makeService(options, reactor=MemoryReactorClock())
    assert daemon.store is None and "numd-store" not in [s.name for s in daemon]
    daemon.state.merge([1])
    assert daemon.state.when_durable() is None
    assert make_store(daemon.state, ":memory:", Clock()) is None


def test_make_service_loads_the_store_before_the_listeners(tmp_path: Path) -> None:
    """The store sits after the state and the log and before every listener, so it loads first."""
    db = tmp_path / "state.db"
    with sqlite3.connect(db) as c:
        c.executescript(CREATE_V1)
        c.execute("INSERT INTO sorted_values (value) VALUES (41)")
    c.close()
    reactor = MemoryReactorClock()
    options = Options()
    options.parseOptions(["--db", str(db), "--message-log", str(tmp_path / "m.log")])
    daemon = makeService(options, reactor=reactor)
    names = [s.name for s in daemon]
    assert names[:3] == ["numd-state", "numd-message-log", "numd-store"]
    assert daemon.store is not None and daemon.store.path == str(db)
    daemon.privilegedStartService()
    assert list(daemon.state.values) == [41]
    daemon.startService()
    daemon.state.merge([1])
    durable = daemon.state.when_durable()
    reactor.advance(0)
    assert fired(durable), "without threads in the reactor the batch is written in place"
    daemon.stopService()
    assert list(reloaded(str(db)).values) == [1, 41]


@pytest_twisted.ensureDeferred
async def test_the_writer_thread_commits_off_the_reactor_thread(tmp_path: Path) -> None:
    """With the real reactor batches are written on the store's own thread, and stop joins it."""
    from twisted.internet import reactor

    path = str(tmp_path / "threaded.db")
    state = NumberService(reactor)
    store = Store(state, path, reactor)
    store.privilegedStartService()
    store.startService()
    threads: list[str] = []
    db = store._db
    assert db is not None
    original = db.write
    db.write = lambda batch: (threads.append(threading.current_thread().name), original(batch))[1]  # type: ignore[method-assign]
    try:
        for value in range(100):
            state.merge([value])
        durable = state.when_durable()
        assert durable is not None
        await durable.addTimeout(5, reactor)
    finally:
        await store.stopService().addTimeout(5, reactor)
    assert threads and threading.main_thread().name not in threads
    assert list(reloaded(path).values) == list(range(100))


# -- readiness: a store that cannot commit, a lost -wal ----------------------------------------------


def api_answers(api: Any, method: str, path: str, data: bytes | None = None) -> tuple[int, Any]:
    """Status and JSON body of one request through StubTreq (answered before this returns)."""
    from treq.testing import StubTreq

    stub = StubTreq(api.resource())
    results: list[Any] = []
    kwargs = {} if data is None else {"data": data}
    stub.request(method, "http://127.0.0.1" + path, **kwargs).addCallback(
        lambda r: r.json().addCallback(lambda body: (r.code, body))
    ).addBoth(results.append)
    stub.flush()
    assert len(results) == 1, "answered"
    return results[0]  # type: ignore[no-any-return]


def test_readyz_is_degraded_while_commits_fail_and_ready_after_a_good_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While every commit fails, changes get store-failed/503 and /readyz is 503 degraded
    (``store_writable`` false); the first good retry makes it ready again."""
    from .counter_client import FakeClient

    db = str(tmp_path / "numd.db")
    options = Options()
    options.parseOptions(["--db", db, "--message-log", str(tmp_path / "m.log")])
    reactor = MemoryReactorClock()
    daemon = makeService(options, reactor=reactor)
    daemon.privilegedStartService()
    daemon.startService()
    daemon.site.doStart()  # as the listeners do once they listen
    daemon.counter_factory.doStart()
    store = daemon.store
    assert store is not None and store._db is not None
    ready = {
        "status": "ready",
        "checks": {
            "api_listener": True,
            "counter_listeners": True,
            "store_files_intact": True,
            "store_writable": True,
            "message_log_writable": True,
        },
    }
    assert api_answers(daemon.api, "GET", "/readyz") == (200, ready)

    def disk_io_error(batch: Batch) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store._db, "write", disk_io_error)
    client = FakeClient(daemon.counter_factory)
    client.send(b"[5] ")
    reactor.advance(0)  # the commit, then the held reply goes out
    reactor.advance(0)
    assert client.replies() == [b"error:store-failed"]
    from treq.testing import StubTreq

    stub = StubTreq(daemon.api.resource())
    posted: list[Any] = []
    stub.post("http://127.0.0.1/api/v1/values", data=b"[6]").addCallback(
        lambda r: posted.append(r.code)
    )
    stub.flush()
    reactor.advance(store.retry_delay)  # the retry fails too
    stub.flush()
    assert posted == [503]
    code, body = api_answers(daemon.api, "GET", "/readyz")
    assert (code, body["status"]) == (503, "degraded")
    assert body["checks"] == {**ready["checks"], "store_writable": False}  # type: ignore[dict-item]
    monkeypatch.undo()  # the disk is back
    reactor.advance(store.retry_delay)
    assert store.failures == 2 and store.writable
    assert api_answers(daemon.api, "GET", "/readyz") == (200, ready)
    client.close()
    daemon.stopService()
    assert list(reloaded(db).values) == [5, 6], "the retried changes were stored"


def lose_wal(db_path: str, how: str) -> None:
    """Delete the database's -wal under the running store, and with "replaced" put an empty file there."""
    wal = db_path + "-wal"
    os.remove(wal)
    if how == "replaced":
        Path(wal).touch()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_lost_wal_stops_acknowledging_changes_until_restart(
    how: str,
    state: NumberService,
    store: Store,
    factory: CounterFactory,
    clock: Clock,
    writer: ManualWriter,
    db_path: str,
) -> None:
    """A -wal deleted (or replaced) under numd is noticed at the next commit: that change and
    every later one is answered store-failed (503 over HTTP), an error says which file and to
    restart, /readyz is degraded, and what was acknowledged before is copied into the file."""
    from twisted.logger import Logger, formatEvent

    from numd.http.api import NumdApi
    from numd.store.database import StoreFileLost

    from .counter_client import FakeClient

    events: list[dict[str, Any]] = []
    store.log = Logger(observer=events.append)
    api = NumdApi(state, degraded_checks=store.checks())
    state.merge([1])
    acknowledged = state.when_durable()
    clock.advance(0)
    writer.finish()
    assert fired(acknowledged)
    assert api_answers(api, "GET", "/readyz")[0] == 200

    lose_wal(db_path, how)
    client = FakeClient(factory)
    client.send(b"[2] ")
    clock.advance(0)
    writer.finish()  # the commit goes into the lost file: not acknowledged
    clock.advance(0)
    assert client.replies() == [b"error:store-failed"]
    assert isinstance(store.lost, StoreFileLost) and store.lost.path == db_path + "-wal"
    (error,) = [e for e in events if e["log_level"].name == "error"]
    text = formatEvent(error)
    assert f"{db_path}-wal was {how}" in text and "Restart numd" in text

    # Every later change fails at once, without touching the disk.
    state.merge([3])
    later = state.when_durable()
    assert later is not None
    failures: list[Any] = []
    later.addErrback(failures.append)
    assert failures and failures[0].check(StoreFileLost)
    assert api_answers(api, "POST", "/api/v1/values", b"[4]")[0] == 503
    client.protocol.dataReceived(b"[5] ")
    clock.advance(0)
    assert client.replies() == [b"error:store-failed"]
    clock.advance(store.interval * 3)
    assert api_answers(api, "GET", "/readyz") == (
        503,
        {"status": "degraded", "checks": {"store_files_intact": False, "store_writable": False}},
    )

    # What the lost -wal held is copied into the database file: a crash now keeps [1].
    assert len(writer.jobs) == 1, "only the checkpoint: nothing more is written"
    writer.finish()
    assert list(reloaded(db_path).values) == [1, 2]
    assert store.lost is not None and not store.writable, "it stays failed"

    client.close()
    stopped = store.stopService()
    writer.finish_all()
    assert fired(stopped)
    restarted = started(NumberService(clock), db_path, clock, maybeDeferred)
    assert list(restarted.service.values) == [1, 2]
    restarted.service.merge([7])
    clock.advance(0)
    assert restarted.writable and restarted.commits == 1, "a restart stores again"
    restarted.stopService()


def test_a_deleted_database_file_stops_the_store_too(
    state: NumberService, store: Store, clock: Clock, writer: ManualWriter, db_path: str
) -> None:
    """The database file itself deleted under numd is noticed the same way: changes fail,
    and the error says a restart loads whatever file is then at that path."""
    from twisted.logger import Logger, formatEvent

    events: list[dict[str, Any]] = []
    store.log = Logger(observer=events.append)
    os.remove(db_path)
    state.merge([1])
    durable = state.when_durable()
    clock.advance(0)
    writer.finish()
    failures: list[Any] = []
    assert durable is not None
    durable.addErrback(failures.append)
    assert failures and failures[0].value.path == db_path
    assert store.lost is not None and store.lost.what == "was deleted"
    (error,) = [e for e in events if e["log_level"].name == "error"]
    assert f"it then loads whatever file is at {db_path}" in formatEvent(error)
    assert not writer.jobs, "no checkpoint into a file no restart reads"
