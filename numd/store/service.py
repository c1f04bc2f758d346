"""Durable state: the registry and the sorted list kept in an embedded SQLite database.

The service's in-memory registry and `SortedList` stay the source of truth; the
store only follows them. It observes every change through
`NumberService.add_observer`, collects changes into batches, and writes each batch
in one transaction on a single writer thread, so the reactor never waits for the
disk. It installs the service's durability hook, so a change that gets an answer
(an array merge, an add or a clear) is answered only once its batch is committed.

Group commit: while one batch is being written, every change that arrives goes
into the next one; that batch starts as soon as the first finishes, so a thousand
clients waiting for their acknowledgements share one commit and one fsync.

Client records (registrations, reports, given numbers, disconnects) get no answer
that promises anything, so under ``sync="everysec"`` (the default) they are
collected in memory and handed to the writer once a second: a crash can lose at
most about the last second of reports, like Redis's ``appendfsync everysec``.
``sync="always"`` puts each of them into the next group commit instead.

The file is SQLite in WAL mode with ``synchronous=FULL``: a committed batch is in
the write-ahead log and fsynced before anyone is told so, and survives ``kill -9``
and a power cut. Schema (version 3)::

    meta(key TEXT PRIMARY KEY, value)            -- key 'schema_version'
    list_values(value INTEGER NOT NULL)          -- one row per value, no index
    clients(id INTEGER PRIMARY KEY, number INTEGER NOT NULL,
            last_given INTEGER, last_seen REAL NOT NULL)

Values are appended, one row each (duplicates are repeated rows), in a table with
no index: a commit writes only the table's last pages, where a table keyed by
value (version 2) touched one page per added value, scattered over the file, and
wrote each of them to the write-ahead log. Loading sorts them once, in memory.
Older layouts are migrated in place at start-up (see `MIGRATIONS`).

After every commit the writer checks (two ``stat`` calls) that the database file
and its ``-wal`` are still the files it opened. If one was deleted or replaced,
commits from then on would go into a file that no restart reads, so the store
stops for good: it copies what the lost log holds into the database file (a
checkpoint through SQLite's open descriptors), logs an error, and every change
from then on is answered as a failed commit is. Only a restart, which opens the
files afresh, makes it store again: reopening them in place would quietly drop
whatever the lost file held. `Store.checks` tells ``/readyz``.

``docs/durability.md`` has the whole story.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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
from numd.signals import StartupError
from numd.timers import cancel
from numd.writer import Runner, Writer

MEMORY = ":memory:"
"""The ``--db`` value that keeps nothing: numd runs without a store."""
SYNC_POLICIES = ("everysec", "always")
"""How client records are written: once a second (default) or in every group commit."""
DEFAULT_SYNC = "everysec"
LAZY_SLICE = 1000
"""Client records taken into a batch per reactor turn at a once-a-second tick."""
SCHEMA_VERSION = 3
"""The layout this numd writes; older ones are migrated at start-up."""

ClientRow = tuple[int, "int | None", float]
"""What is stored per client: (number, last_given, last_seen)."""


class StoreError(Exception):
    """The database cannot be used: unreadable, corrupt, not numd's, or too new."""


class StoreFileLost(StoreError):
    """The database file or its ``-wal`` was deleted or replaced under the running store."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path} {what}")
        self.path = path
        """The file that is no longer the one the store opened."""
        self.what = what
        """What became of it: "was deleted", "was replaced by another file"..."""


# -- batches ------------------------------------------------------------------------


@dataclass
class Batch:
    """Changes written together in one transaction.

    A clear throws away every value change before it, so a batch is "maybe empty
    the list first, then add these values": a clear followed by adds in one batch
    leaves exactly those adds, and adds followed by a clear leave nothing.
    """

    cleared: bool = False
    values: list[int] = field(default_factory=list)
    """The values added (after the clear, if any), duplicates kept."""
    clients: dict[int, ClientRow] = field(default_factory=dict)
    """The latest row of each client changed in this batch."""
    changes: int = 0
    """How many service changes this batch holds (merges, clears, client rows)."""
    waiters: list[Deferred[None]] = field(default_factory=list)
    """Fired when the batch is committed (errbacked if it fails)."""

    def __bool__(self) -> bool:
        return self.changes > 0

    def merge(self, values: list[int]) -> None:
        """Add `values` (duplicates kept)."""
        self.values += values
        self.changes += 1

    def clear(self) -> None:
        """Empty the list: earlier adds in this batch no longer matter."""
        self.cleared = True
        self.values.clear()
        self.changes += 1

    def client(self, client_id: int, row: ClientRow) -> None:
        """Record the latest state of one client."""
        self.clients[client_id] = row
        self.changes += 1

    def put_clients(self, rows: dict[int, ClientRow]) -> None:
        """Record the latest state of several clients."""
        self.clients.update(rows)
        self.changes += len(rows)

    def then(self, later: Batch) -> None:
        """Append `later`'s changes to this batch's (in that order); waiters are taken over."""
        if later.cleared:
            self.cleared = True
            self.values = later.values
        else:
            self.values += later.values
        self.clients.update(later.clients)
        self.changes += later.changes
        self.waiters = later.waiters

    def waiter(self) -> Deferred[None]:
        """A Deferred that fires once this batch is committed."""
        d: Deferred[None] = Deferred()
        self.waiters.append(d)
        return d


# -- the database file ----------------------------------------------------------------

_CREATE = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value);
CREATE TABLE list_values (value INTEGER NOT NULL);
CREATE TABLE clients (
    id INTEGER PRIMARY KEY,
    number INTEGER NOT NULL,
    last_given INTEGER,
    last_seen REAL NOT NULL
);
"""

# A batch's rows reach SQLite as one JSON array, written by one statement: SQLite
# runs it without holding the GIL. `executemany` took the GIL back for every row,
# and each time waited for the busy reactor thread to let go of it (a commit of 200
# values took 3 ms in the daemon against 0.3 ms alone).
ROWS_PER_STATEMENT = 1000
_ADD_VALUES = "INSERT INTO list_values (value) SELECT value FROM json_each(?)"
_PUT_CLIENTS = (
    "INSERT INTO clients (id, number, last_given, last_seen) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
    "json_extract(value, '$[2]'), json_extract(value, '$[3]') FROM json_each(?) WHERE true "
    "ON CONFLICT (id) DO UPDATE SET number = excluded.number, "
    "last_given = excluded.last_given, last_seen = excluded.last_seen"
)

CREATE_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value);
CREATE TABLE sorted_values (value INTEGER NOT NULL);
CREATE INDEX sorted_values_value ON sorted_values (value);
CREATE TABLE clients (id INTEGER PRIMARY KEY, number INTEGER NOT NULL, last_given INTEGER);
INSERT INTO meta (key, value) VALUES ('schema_version', 1);
"""
"""Schema version 1, the first layout: one row per value (duplicates as repeated
rows) and no ``last_seen``. Kept here so the migration can be tested."""

CREATE_V2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value);
CREATE TABLE sorted_values (value INTEGER PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE clients (
    id INTEGER PRIMARY KEY, number INTEGER NOT NULL, last_given INTEGER,
    last_seen REAL NOT NULL DEFAULT 0
);
INSERT INTO meta (key, value) VALUES ('schema_version', 2);
"""
"""Schema version 2: one row per distinct value, keyed by value, with its count."""


def migrate_1_to_2(connection: sqlite3.Connection) -> None:
    """Version 1 to 2: one row per distinct value with its count; clients get ``last_seen``.

    Runs inside the caller's transaction, so a crash half-way leaves version 1 intact.
    """
    connection.execute("ALTER TABLE sorted_values RENAME TO sorted_values_v1")
    connection.execute("DROP INDEX IF EXISTS sorted_values_value")
    connection.execute(
        "CREATE TABLE sorted_values (value INTEGER PRIMARY KEY, count INTEGER NOT NULL)"
    )
    connection.execute(
        "INSERT INTO sorted_values (value, count) "
        "SELECT value, count(*) FROM sorted_values_v1 GROUP BY value"
    )
    connection.execute("DROP TABLE sorted_values_v1")
    connection.execute("ALTER TABLE clients ADD COLUMN last_seen REAL NOT NULL DEFAULT 0")


def migrate_2_to_3(connection: sqlite3.Connection) -> None:
    """Version 2 to 3: values become one appended row each, in a table with no index.

    Version 2 kept one row per distinct value, keyed by value, so every added value
    rewrote a page somewhere in the file; version 3 appends. Runs inside the caller's
    transaction.
    """
    connection.execute("CREATE TABLE list_values (value INTEGER NOT NULL)")
    connection.execute(
        "WITH RECURSIVE copies (value, left) AS ("
        " SELECT value, count FROM sorted_values WHERE count > 0"
        " UNION ALL SELECT value, left - 1 FROM copies WHERE left > 1)"
        " INSERT INTO list_values (value) SELECT value FROM copies"
    )
    connection.execute("DROP TABLE sorted_values")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: migrate_1_to_2,
    2: migrate_2_to_3,
}
"""``MIGRATIONS[n]`` turns a version-n database into version n + 1."""


class Database:
    """numd's tables in one SQLite file, in WAL mode. Synchronous; one thread at a time.

    Opening checks the file, creates the tables in a new or empty file and
    migrates an older layout; any problem is a `StoreError` naming the file.
    """

    log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path
        self.migrated_from: int | None = None
        """The schema version the file had before this open migrated it, if it did."""
        self._lock = _lock(path)
        try:
            self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            os.close(self._lock)
            raise StoreError(f"cannot open the database {path}: {e}") from None
        try:
            self._prepare()
            self._files = self._opened_files()
        except (sqlite3.Error, StoreError) as e:
            self.close()
            if isinstance(e, StoreError):
                raise
            raise StoreError(f"cannot use the database {path}: {e}") from None

    @property
    def wal_path(self) -> str:
        """The write-ahead log next to the database file."""
        return self.path + "-wal"

    def _opened_files(self) -> tuple[tuple[str, tuple[int, int]], ...]:
        """(name, (device, inode)) of the database file and its ``-wal`` as opened now."""
        db = os.fstat(self._lock)  # the file this store locked
        try:
            # Reading a database in WAL mode (the last step of opening) creates the -wal.
            wal = os.stat(self.wal_path)
        except OSError as e:
            raise StoreError(
                f"cannot use the database {self.path}: its write-ahead log "
                f"{self.wal_path} is missing ({e.strerror})"
            ) from None
        return (
            (self.path, (db.st_dev, db.st_ino)),
            (self.wal_path, (wal.st_dev, wal.st_ino)),
        )

    def check_files(self) -> None:
        """Raise `StoreFileLost` unless the database file and its ``-wal`` are the ones opened.

        A commit into a ``-wal`` that was deleted (or replaced by another file)
        goes into a file no restart reads, so it would be lost at the next
        crash. SQLite keeps the file it opened and never unlinks its ``-wal``
        while numd holds its connection: its checkpoints restart the log in
        place. Two ``stat`` calls, cheap enough for every commit.
        """
        for name, (device, inode) in self._files:
            try:
                now = os.stat(name)
            except FileNotFoundError:
                raise StoreFileLost(name, "was deleted") from None
            except OSError as e:
                raise StoreFileLost(name, f"cannot be checked ({e.strerror})") from None
            if (now.st_dev, now.st_ino) != (device, inode):
                raise StoreFileLost(name, "was replaced by another file")

    def _prepare(self) -> None:
        c = self._connection
        # The first read fails on a file that is not SQLite ("file is not a database").
        tables = {
            row[0] for row in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        try:
            c.execute("SELECT value FROM json_each('[1]')").fetchall()
        except sqlite3.Error:
            raise StoreError(
                f"cannot use the database {self.path}: SQLite {sqlite3.sqlite_version} "
                "has no JSON functions (json_each)"
            ) from None
        if c.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise StoreError(f"cannot use the database {self.path}: WAL mode is not available")
        c.execute("PRAGMA synchronous = FULL")
        if not tables:
            self._transaction(self._create)
            return
        if "meta" not in tables:
            raise StoreError(f"cannot use the database {self.path}: it is not a numd database")
        row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or not isinstance(row[0], int):
            raise StoreError(f"cannot use the database {self.path}: it has no schema version")
        version = row[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"cannot use the database {self.path}: schema version {version} was written "
                f"by a newer numd (this one reads up to {SCHEMA_VERSION})"
            )
        if version < SCHEMA_VERSION:
            self._transaction(lambda: self._migrate(version))
            self.migrated_from = version
        # Read every page once now, so damage inside the tables stops the start
        # rather than a later commit.
        check = c.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StoreError(f"cannot use the database {self.path}: it is damaged ({check})")

    def _create(self) -> None:
        for statement in _CREATE.split(";"):
            if statement.strip():
                self._connection.execute(statement)
        self._connection.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
        )

    def _migrate(self, version: int) -> None:
        while version < SCHEMA_VERSION:
            step = MIGRATIONS.get(version)
            if step is None:
                raise StoreError(
                    f"cannot use the database {self.path}: no migration from schema version {version}"
                )
            step(self._connection)
            version += 1
        self._connection.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,)
        )

    def _transaction(self, work: Callable[[], None]) -> None:
        c = self._connection
        c.execute("BEGIN IMMEDIATE")
        try:
            work()
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def load_values(self) -> list[int]:
        """Every stored value in ascending order, each as many times as it was added."""
        values = [value for (value,) in self._connection.execute("SELECT value FROM list_values")]
        values.sort()
        return values

    def load_clients(self) -> dict[int, ClientRow]:
        """Every stored client row, by client ID."""
        return {
            client_id: (number, last_given, last_seen)
            for client_id, number, last_given, last_seen in self._connection.execute(
                "SELECT id, number, last_given, last_seen FROM clients"
            )
        }

    def write(self, batch: Batch) -> None:
        """Apply `batch` in one transaction: the clear first, then the adds, then client rows.

        Then check that the files are still the ones opened (`check_files`): if
        not, the commit went into a lost file and `StoreFileLost` says so.
        """

        def apply() -> None:
            c = self._connection
            if batch.cleared:
                c.execute("DELETE FROM list_values")
            # In pieces: json.dumps holds the GIL, and so stops the reactor thread, while it runs.
            values = batch.values
            for start in range(0, len(values), ROWS_PER_STATEMENT):
                c.execute(_ADD_VALUES, (json.dumps(values[start : start + ROWS_PER_STATEMENT]),))
            rows = [(client_id, *row) for client_id, row in batch.clients.items()]
            for start in range(0, len(rows), ROWS_PER_STATEMENT):
                c.execute(_PUT_CLIENTS, (json.dumps(rows[start : start + ROWS_PER_STATEMENT]),))

        self._transaction(apply)
        self.check_files()

    def checkpoint(self) -> None:
        """Copy every commit in the write-ahead log into the database file, and fsync it.

        SQLite reads the log through the descriptor it opened, so this works
        even after the ``-wal`` was deleted or replaced by name.
        """
        busy, _, _ = self._connection.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
        if busy:
            raise StoreError(f"cannot checkpoint {self.path}: the database is busy")

    def close(self) -> None:
        """Close the file (the write-ahead log is checkpointed into it) and release it."""
        self._connection.close()
        # Only after SQLite let go: closing any descriptor of the file drops SQLite's
        # own (POSIX) locks on it.
        os.close(self._lock)


def _lock(path: str) -> int:
    """Open `path` (creating it empty) and take an exclusive flock on it; return the descriptor.

    Two daemons writing one database would each write their own changes into it;
    the second one is refused instead. The lock dies with the process, kill -9 included.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StoreError(f"cannot open the database {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(
            f"cannot use the database {path}: another process (another numd?) is using it"
        ) from None
    return fd


# -- the service ----------------------------------------------------------------------


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

        Every client is loaded as not connected. A database numd cannot use ends
        the start-up with a one-line message naming the file (`StartupError`).
        """
        started = time.perf_counter()
        try:
            db = Database(self.path)
        except StoreError as e:
            raise StartupError(f"numd: {e}") from None
        try:
            clients = db.load_clients()
            values = db.load_values()
        except sqlite3.Error as e:
            db.close()
            raise StartupError(f"numd: cannot use the database {self.path}: {e}") from None
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
        if failure.check(StoreFileLost):
            self._lose(failure, batch)
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

    def _lose(self, failure: Failure, batch: Batch) -> None:
        """The database file or its ``-wal`` is gone: stop storing, until a restart.

        The batch just written went into the lost file, so it is not acknowledged,
        and neither is anything after it. What the lost log holds is copied into
        the database file, so changes acknowledged before are not lost at a crash.
        The store stays stopped: reopening the files would hide what was lost.
        """
        lost: StoreFileLost = failure.value  # type: ignore[assignment]
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
