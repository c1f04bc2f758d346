"""numd's tables in one SQLite file: opening it safely, writing a batch, and noticing a lost file.

Everything here is synchronous and blocking, and runs on the store's writer
thread (or in place under a test's fake reactor): the Store service decides when,
this module only how. Every reason the file cannot be used becomes a `StoreError`
whose text names the file, in one line, because the daemon's start-up prints it
as is (``numd: cannot use the database ...``) and exits.

The file is SQLite in WAL mode with ``synchronous=FULL``: a committed batch is in
the write-ahead log and fsynced before anyone is told so, and survives ``kill -9``
and a power cut. An exclusive ``flock`` keeps a second numd off the file. After
every commit two ``stat`` calls check that the database file and its ``-wal`` are
still the files opened (`Database.check_files`): a commit into a deleted or
replaced file would be lost at the next crash. The tables themselves are in
`numd.store.schema`.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Callable

from twisted.logger import Logger

from numd.store.batch import Batch
from numd.store.schema import CREATE, MIGRATIONS, SCHEMA_VERSION, ClientRow


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
        for statement in CREATE.split(";"):
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
