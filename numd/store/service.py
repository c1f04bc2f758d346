"""Durable state: the Store service keeps a `NumberService` in an embedded SQLite database.

The service's in-memory registry and `SortedList` stay the source of truth; the
store only follows them. It observes every change as a `StateObserver` (through
`NumberService.add_observer`), collects changes into batches (`numd.store.batch`),
and writes each batch in one transaction on a single writer thread, so the
reactor never waits for the disk. It installs the service's durability hook, so a
change that gets an answer (an array merge, an add or a clear) is answered only
once its batch is committed. At start-up it loads the file into the service
through `NumberService.restore`, never by writing the service's state itself.

Group commit: while one batch is being written, every change that arrives goes
into the next one; that batch starts as soon as the first finishes, so a thousand
clients waiting for their acknowledgements share one commit and one fsync.

Client records (registrations, reports, given numbers, disconnects) get no answer
that promises anything, so under ``sync="everysec"`` (the default) they are
collected in memory and handed to the writer once a second: a crash can lose at
most about the last second of reports, like Redis's ``appendfsync everysec``.
``sync="always"`` puts each of them into the next group commit instead.

If the database file or its ``-wal`` is deleted or replaced under the running
store (`numd.store.database` notices it after a commit), commits from then on
would go into a file that no restart reads, so the store stops for good: it
copies what the lost log holds into the database file (a checkpoint through
SQLite's open descriptors), logs an error, and every change from then on is
answered as a failed commit is. Only a restart, which opens the files afresh,
makes it store again: reopening them in place would quietly drop whatever the
lost file held. `Store.checks` tells ``/readyz``.

A file the store cannot use is a `StoreError` naming it, in one line; the store
knows nothing of twistd, and the daemon's start-up turns that into its exit.
The file itself (WAL mode, the lock, the checks) is `numd.store.database`, its
layout and migrations `numd.store.schema`. ``docs/durability.md`` has the whole story.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from numd.service import ClientRecord, NumberService, StateObserver
from numd.store.batch import Batch
from numd.store.database import Database, StoreError, StoreFileLost
from numd.store.schema import SCHEMA_VERSION, ClientRow
from numd.timers import cancel
from numd.writer import Runner, Writer

MEMORY = ":memory:"
"""The ``--db`` value that keeps nothing: numd runs without a store."""
SYNC_POLICIES = ("everysec", "always")
"""How client records are written: once a second (default) or in every group commit."""
DEFAULT_SYNC = "everysec"
"""The ``--sync`` policy when none is given: client records once a second."""
LAZY_SLICE = 1000
"""Client records taken into a batch per reactor turn at a once-a-second tick."""


def _row(record: ClientRecord) -> ClientRow:
    """What is stored of one client record."""
    return (record.number, record.last_given, record.last_seen)


class Store(Service, StateObserver):
    """Keeps a `NumberService` in a SQLite file: loads it at start, writes its changes.

    `reactor` is the clock for the once-a-second flush and the retry delay; if it
    can take calls from threads, batches are written on one writer thread of the
    store's own, otherwise (a test's memory reactor) in place. `run` replaces the
    writer altogether (tests use it to decide when a commit finishes).
    """

    log = Logger()
    name = "numd-store"

    def __init__(
        self,
        service: NumberService,
        path: str,
        reactor: IReactorTime,
        sync: str = DEFAULT_SYNC,
        interval: float = 1.0,
        retry_delay: float = 1.0,
        run: Runner | None = None,
    ) -> None:
        if sync not in SYNC_POLICIES:
            raise ValueError(f"sync policy must be one of {', '.join(SYNC_POLICIES)}, not {sync!r}")
        self.service = service
        self.path = os.path.abspath(path)
        self.sync = sync
        self.interval = interval
        self.retry_delay = retry_delay
        self._reactor = reactor
        self._writer = Writer(reactor, "numd-store")
        self._run: Runner = run if run is not None else self._writer.run
        self._db: Database | None = None
        self._pending = Batch()
        self._lazy: set[int] = set()
        """IDs of clients changed since the last tick (``sync="everysec"``); their rows
        are read from the live records at the tick, so a report allocates nothing."""
        self._draining: list[int] = []
        """IDs taken by the last tick whose rows are not in a batch yet (`LAZY_SLICE` a turn)."""
        self._slice_call: IDelayedCall | None = None
        self._inflight: Batch | None = None
        self._call: IDelayedCall | None = None
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = reactor
        self.commits = 0
        """Batches committed so far."""
        self.committed_changes = 0
        """Service changes in those batches."""
        self.failures = 0
        """Commits that failed (each is retried after `retry_delay`, unless a file was lost)."""
        self.lost: StoreFileLost | None = None
        """Why the store stopped storing for good (a file deleted or replaced), else None."""
        self._failing = False
        """Whether the last commit failed (cleared by the next one that succeeds)."""
        self.load_seconds = 0.0
        """How long loading the database took at start-up."""

    # -- lifecycle ------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Load the database before any listener binds its port."""
        self.load()
        super().privilegedStartService()

    def startService(self) -> None:
        """Start the writer, follow the service's changes and guard its answers."""
        if self._db is None:
            self.load()
        super().startService()
        self._writer.start()  # a thread only if the reactor takes calls from threads
        self.service.add_observer(self)
        self.service.set_durability(self.when_durable)
        if self.sync == "everysec":
            self._ticker.start(self.interval, now=False)

    @property
    def writable(self) -> bool:
        """Whether changes are being stored: the last commit succeeded and no file was lost."""
        return not self._failing and self.lost is None

    def checks(self) -> dict[str, Callable[[], bool]]:
        """Readiness checks by name, for ``/readyz``: numd serves, degraded, if one is false.

        ``store_writable`` is false while commits fail and after a file was lost;
        ``store_files_intact`` is false once the database file or its ``-wal``
        was deleted or replaced (until a restart).
        """
        return {
            "store_writable": lambda: self.writable,
            "store_files_intact": lambda: self.lost is None,
        }

    def load(self) -> None:
        """Open the database and fill the service with its registry and list.

        Every client is loaded as not connected. A database numd cannot use is a
        `StoreError` whose one line names the file (the daemon's start-up ends
        with it); the service is then left as it was.
        """
        started = time.perf_counter()
        db = Database(self.path)
        try:
            clients = db.load_clients()
            values = db.load_values()
        except sqlite3.Error as e:
            db.close()
            raise StoreError(f"cannot use the database {self.path}: {e}") from None
        self._db = db
        self.service.restore(
            values,
            (
                ClientRecord(client_id, number=number, last_given=last_given, last_seen=last_seen)
                for client_id, (number, last_given, last_seen) in clients.items()
            ),
        )
        self.load_seconds = time.perf_counter() - started
        if db.migrated_from is not None:
            self.log.info(
                "migrated {path} from schema version {old} to {new}",
                path=self.path,
                old=db.migrated_from,
                new=SCHEMA_VERSION,
            )
        self.log.info(
            "loaded {clients} clients and {values} values from {path} in {seconds:.3f} s",
            clients=len(clients),
            values=len(values),
            path=self.path,
            seconds=self.load_seconds,
        )

    def stopService(self) -> Deferred[None]:
        """Write everything still pending, lazy client records included, then close the file."""
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    def _unfollow(self) -> None:
        """Stop observing the service and stop every timer of the store."""
        self.service.remove_observer(self)
        if self._ticker.running:
            self._ticker.stop()
        cancel(self._call)
        self._call = None
        cancel(self._slice_call)
        self._slice_call = None

    async def _stop(self) -> None:
        self._unfollow()
        self.service.set_durability(None)
        try:
            while self._inflight is not None or self._pending or self._lazy or self._draining:
                await self.flush()
        except Exception:
            self.log.failure("could not store the last changes in {path}", path=self.path)
        cancel(self._call)
        db, self._db = self._db, None
        if db is not None:
            try:
                # Closing checkpoints the write-ahead log into the file: disk work, so on the writer.
                await self._run(db.close)
            except Exception:
                self.log.failure("could not close {path}", path=self.path)
        self._writer.stop()

    # -- following the service --------------------------------------------------------

    def merged(self, values: list[int]) -> None:
        """Values merged: into the pending batch (answers to it wait for its commit)."""
        self._pending.merge(values)
        self._schedule()

    def cleared(self) -> None:
        """The list was emptied: the pending batch starts with a clear."""
        self._pending.clear()
        self._schedule()

    def _client_changed(self, record: ClientRecord) -> None:
        """A client's record changed: written lazily (``everysec``) or in the next commit."""
        if self.sync == "always":
            self._pending.client(record.client_id, _row(record))
            self._schedule()
        else:
            self._lazy.add(record.client_id)

    registered = disconnected = reported = given = _client_changed

    def when_durable(self) -> Deferred[None] | None:
        """A Deferred that fires once every change so far is committed; None if all are.

        Lazily written client records (``sync="everysec"``) are not waited for.
        Once a file was lost it fails at once: nothing is stored any more.
        """
        if self.lost is not None:
            return fail(self.lost)
        if self._pending:
            return self._pending.waiter()
        if self._inflight is not None:
            return self._inflight.waiter()
        return None

    def flush(self) -> Deferred[None]:
        """Hand every change so far (lazy client records too) to the writer now.

        The Deferred fires when they are committed.
        """
        self._take_lazy()
        waiter = self.when_durable()
        if self._inflight is None and self._pending:
            cancel(self._call)
            self._commit()
        return waiter if waiter is not None else succeed(None)

    def _take_lazy(self) -> None:
        """Every client record changed so far goes into the pending batch now."""
        self._drain_lazy()
        self._take_rows(len(self._draining))

    def _drain_lazy(self) -> None:
        self._draining.extend(self._lazy)
        self._lazy.clear()

    def _take_rows(self, count: int) -> None:
        """Put the rows of `count` clients (from those the last tick took) into the pending batch."""
        draining = self._draining
        taken, self._draining = draining[:count], draining[count:]
        self._pending.put_clients(
            {
                r.client_id: (r.number, r.last_given, r.last_seen)
                for r in self.service.clients_by_id(taken)
            }
        )

    def _tick(self) -> None:
        """Once a second: the client records changed since the last tick go to the writer.

        `LAZY_SLICE` of them per reactor turn: with 10,000 clients, taking every
        row at once held the reactor thread for 7-14 ms each second.
        """
        self._drain_lazy()
        self._take_slice()

    def _take_slice(self) -> None:
        self._slice_call = None
        self._take_rows(LAZY_SLICE)
        self._schedule()
        if self._draining:
            self._slice_call = self._reactor.callLater(0, self._take_slice)

    # -- group commit ---------------------------------------------------------------------

    def _schedule(self) -> None:
        """Commit at the next reactor turn, unless a commit or a retry is already under way.

        Waiting for the turn to end lets every change that arrived in one read of
        the network share the commit.
        """
        if self._inflight is None and self._call is None and self._pending:
            self._call = self._reactor.callLater(0, self._commit)

    def _commit(self) -> None:
        self._call = None
        if self._inflight is not None or not self._pending or self._db is None:
            return
        batch, self._pending = self._pending, Batch()
        self._inflight = batch
        db = self._db
        self._run(lambda: db.write(batch)).addCallbacks(
            self._committed, self._failed, callbackArgs=(batch,), errbackArgs=(batch,)
        )

    def _committed(self, _: None, batch: Batch) -> None:
        self._inflight = None
        self._failing = False
        self.commits += 1
        self.committed_changes += batch.changes
        # Start the next batch before telling anyone, so the disk stays busy.
        if self._pending and self._call is None:
            self._commit()
        for waiter in batch.waiters:
            waiter.callback(None)

    def _failed(self, failure: Failure, batch: Batch) -> None:
        self._inflight = None
        self.failures += 1
        if isinstance(failure.value, StoreFileLost):
            self._lose(failure.value, failure, batch)
            return
        self._failing = True
        self.log.failure(
            "storing {changes} changes in {path} failed; retrying in {delay} s",
            failure,
            changes=batch.changes,
            path=self.path,
            delay=self.retry_delay,
        )
        waiters = batch.waiters
        # The changes are still in memory: keep them, in order, ahead of the newer ones.
        batch.then(self._pending)
        self._pending = batch
        if self._call is None or not self._call.active():
            self._call = self._reactor.callLater(self.retry_delay, self._commit)
        for waiter in waiters:
            waiter.errback(failure)

    def _lose(self, lost: StoreFileLost, failure: Failure, batch: Batch) -> None:
        """The database file or its ``-wal`` is gone: stop storing, until a restart.

        The batch just written went into the lost file, so it is not acknowledged,
        and neither is anything after it. What the lost log holds is copied into
        the database file, so changes acknowledged before are not lost at a crash.
        The store stays stopped: reopening the files would hide what was lost.
        """
        self.lost = lost
        wal = lost.path != self.path
        self.log.error(
            "{file} {what}: numd stops storing changes, since a commit from now on could be "
            "lost at the next crash; it keeps serving from memory and answers every change "
            "store-failed (HTTP 503 not-stored). Restart numd to store changes again{then}.",
            file=lost.path,
            what=lost.what,
            path=self.path,
            then="" if wal else f" (it then loads whatever file is at {self.path})",
        )
        # Nothing more to write: stop following the service, and drop what waits.
        self._unfollow()
        self._lazy.clear()
        self._draining.clear()
        pending, self._pending = self._pending, Batch()
        db = self._db
        if db is not None and wal:
            # Into the database file, which is still the one at `path`.
            self._run(db.checkpoint).addCallbacks(
                lambda _: self.log.warn(
                    "copied the changes committed before {file} {what} into {path}",
                    file=lost.path,
                    what=lost.what,
                    path=self.path,
                ),
                lambda f: self.log.failure(
                    "could not copy the committed changes into {path}", f, path=self.path
                ),
            )
        for waiter in batch.waiters + pending.waiters:
            waiter.errback(failure)


def make_store(
    service: NumberService, path: str, reactor: IReactorTime, sync: str = DEFAULT_SYNC
) -> Store | None:
    """The store for ``--db path --sync sync``, or None for ``--db :memory:`` (nothing kept)."""
    if path == MEMORY:
        return None
    return Store(service, path, reactor, sync=sync)
