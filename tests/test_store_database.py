"""The database file: start-up checks and refusals, the lock, writing in pieces, no false alarm
from checkpoints."""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from numd.service import NumberService
from numd.signals import StartupError
from numd.store.batch import Batch
from numd.store.database import ROWS_PER_STATEMENT, Database, StoreError, StoreFileLost
from numd.store.schema import SCHEMA_VERSION
from numd.store.service import Store
from numd.tap import Options, makeService

from .manual_writer import ManualWriter
from .store_support import fired, started


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    """Where the test's database lives."""
    return str(tmp_path / "numd.db")


def refused_at_startup(path: Path | str, directory: Path) -> str:
    """The one line a daemon with ``--db path`` exits with when its start-up refuses the file.

    The store raises a `StoreError`; the daemon's start-up turns it into a
    `StartupError`, a `SystemExit` whose code is the line twistd prints.
    """
    options = Options()
    options.parseOptions(["--db", str(path), "--message-log", str(directory / "m.log")])
    daemon = makeService(options, reactor=MemoryReactorClock())
    with pytest.raises(SystemExit) as exited:
        daemon.privilegedStartService()
    assert isinstance(exited.value, StartupError)
    return str(exited.value.code)


# -- opening: a new file, damaged, foreign, too new or locked files ----------------------------------


def test_a_missing_database_starts_empty(
    state: NumberService, tmp_path: Path, clock: Clock
) -> None:
    """No file: an empty registry and list, and a new file at the current schema version."""
    path = tmp_path / "new.db"
    store = Store(state, str(path), clock, run=maybeDeferred)
    store.load()
    assert not state.clients and not state.values
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            SCHEMA_VERSION,
        )
        assert c.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"this is not a database, just garbage\n" * 200, "file is not a database"),
        (b"SQLite format 3\x00" + bytes(range(256)) * 16, "cannot use the database"),
    ],
)
def test_a_corrupt_database_refuses_to_start(
    state: NumberService, tmp_path: Path, clock: Clock, content: bytes, reason: str
) -> None:
    """A damaged file ends the start-up with one line naming it, and is left as it was."""
    path = tmp_path / "broken.db"
    path.write_bytes(content)
    store = Store(state, str(path), clock, run=maybeDeferred)
    with pytest.raises(StoreError) as refused:
        store.privilegedStartService()
    assert not isinstance(refused.value, SystemExit), "the store knows nothing of twistd's exit"
    assert (state.list_size, state.known_count) == (0, 0), "nothing was restored"
    message = refused_at_startup(path, tmp_path)
    assert message == f"numd: {refused.value}"
    assert message.startswith(f"numd: cannot use the database {path}") and reason in message
    assert "\n" not in message
    assert path.read_bytes() == content


def test_a_database_from_a_newer_numd_is_refused(
    state: NumberService, tmp_path: Path, clock: Clock
) -> None:
    """A schema version this numd does not know is not touched."""
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value)")
        c.execute("INSERT INTO meta VALUES ('schema_version', 99)")
    c.close()
    with pytest.raises(StoreError, match="schema version 99 was written by a newer numd"):
        Store(state, str(path), clock).load()
    assert "schema version 99 was written by a newer numd" in refused_at_startup(path, tmp_path)


def test_another_programs_database_is_refused(
    state: NumberService, tmp_path: Path, clock: Clock
) -> None:
    """A SQLite file with someone else's tables is not numd's."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE recipes (name TEXT)")
    c.close()
    with pytest.raises(StoreError, match="it is not a numd database"):
        Store(state, str(path), clock).load()
    assert "it is not a numd database" in refused_at_startup(path, tmp_path)


def test_a_damaged_page_refuses_to_start(
    state: NumberService, tmp_path: Path, clock: Clock
) -> None:
    """A real numd database with a page overwritten is caught at start-up, not at the next commit."""
    path = tmp_path / "damaged.db"
    db = Database(str(path))
    batch = Batch()
    batch.merge(list(range(0, 200_000, 3)))
    db.write(batch)
    db.close()
    data = bytearray(path.read_bytes())
    data[8192 : 8192 + 4096] = b"\xff" * 4096
    path.write_bytes(bytes(data))
    malformed = f"cannot use the database {path}: database disk image is malformed"
    with pytest.raises(StoreError, match=malformed):
        Store(state, str(path), clock).load()
    assert f"numd: {malformed}" in refused_at_startup(path, tmp_path)


def test_a_database_in_use_by_another_numd_is_refused(
    state: NumberService, db_path: str, clock: Clock, tmp_path: Path
) -> None:
    """A second store on a file that a running one holds refuses to start; the lock goes when the first closes it."""
    writer = ManualWriter()
    store = started(state, db_path, clock, writer)
    in_use = f"cannot use the database {db_path}: another process"
    with pytest.raises(StoreError, match=in_use):
        Store(NumberService(clock), db_path, clock).load()
    assert f"numd: {in_use}" in refused_at_startup(db_path, tmp_path)
    stopped = store.stopService()
    writer.finish_all()
    assert fired(stopped)
    second = Store(NumberService(clock), db_path, clock, run=maybeDeferred)
    second.load()
    second.startService()
    second.stopService()


# -- writing and loading -----------------------------------------------------------------------------


def test_large_batches_are_written_in_pieces(db_path: str) -> None:
    """A batch with more rows than one statement takes round-trips exactly, in several statements."""
    db = Database(db_path)
    batch = Batch()
    values = [(i * 7919) % 10007 - 5000 for i in range(3 * ROWS_PER_STATEMENT + 1)]
    batch.merge(values)
    batch.put_clients(
        {i: (i, None if i % 2 else i + 1, i / 3) for i in range(2 * ROWS_PER_STATEMENT + 3)}
    )
    db.write(batch)
    assert db.load_values() == sorted(values)
    assert db.load_clients() == batch.clients
    db.close()


def test_a_million_values_load_fast(tmp_path: Path, clock: Clock) -> None:
    """10^6 values (some repeated) load in well under a few seconds."""
    path = str(tmp_path / "big.db")
    db = Database(path)
    batch = Batch()
    rng = random.Random(6)
    batch.merge(sorted(rng.randrange(-(2**40), 2**40) for _ in range(999_000)) + [7] * 1000)
    db.write(batch)
    db.close()
    fresh = NumberService(clock)
    store = Store(fresh, path, clock)
    started_at = time.perf_counter()
    store.load()
    elapsed = time.perf_counter() - started_at
    assert len(fresh.values) == 1_000_000 and fresh.values.count(7) >= 1000
    assert elapsed < 2.0, f"loading 10^6 values took {elapsed:.2f} s"


# -- the files stay the ones opened ------------------------------------------------------------------


def test_checkpoints_keep_the_wal_file(db_path: str) -> None:
    """SQLite's automatic checkpoints restart the -wal in place: many commits past the
    checkpoint threshold never look like a lost -wal."""
    db = Database(db_path)
    db._connection.execute("PRAGMA wal_autocheckpoint = 10")  # pages, instead of 1000
    wal = os.stat(db.wal_path)
    for start in range(0, 200_000, 10_000):
        batch = Batch()
        batch.merge(list(range(start, start + 10_000)))
        db.write(batch)  # checks the files after each commit
    assert os.path.getsize(db_path) > 100 * 4096, "checkpoints copied pages into the file"
    now = os.stat(db.wal_path)
    assert (now.st_dev, now.st_ino) == (wal.st_dev, wal.st_ino)
    assert now.st_size < 10 * wal.st_size + 200 * 4096, "the log was restarted, not grown"
    db.close()


def test_an_outside_backup_and_checkpoint_keep_the_wal_file(db_path: str) -> None:
    """Another process reading, backing up and checkpointing the live database (as
    ``sqlite3 numd.db .backup`` does) and then closing it leaves numd's -wal in place."""
    import subprocess
    import sys

    db = Database(db_path)
    batch = Batch()
    batch.merge([1, 2])
    db.write(batch)
    outside = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "backup = sqlite3.connect(sys.argv[2])\n"
        "c.backup(backup)\n"
        "backup.close()\n"
        "c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchall()\n"
        "c.close()\n"
    )
    subprocess.run(
        [sys.executable, "-c", outside, db_path, db_path + ".backup"], check=True, timeout=30
    )
    batch = Batch()
    batch.merge([3])
    db.write(batch)  # raises StoreFileLost if the -wal was replaced
    db.close()
    with sqlite3.connect(db_path + ".backup") as c:
        assert c.execute("SELECT count(*) FROM list_values").fetchone() == (2,)
    c.close()


def replace(path: str) -> None:
    """Put another (empty) file at `path`, as a careless copy or restore would."""
    os.remove(path)
    Path(path).touch()


@pytest.mark.parametrize(
    "lose,suffix,what",
    [
        (os.remove, "-wal", "was deleted"),
        (replace, "-wal", "was replaced by another file"),
        (os.remove, "", "was deleted"),
        (replace, "", "was replaced by another file"),
    ],
    ids=["wal-deleted", "wal-replaced", "file-deleted", "file-replaced"],
)
def test_a_commit_names_the_file_that_was_lost(
    db_path: str, lose: Callable[[str], None], suffix: str, what: str
) -> None:
    """A -wal or database file deleted or replaced by name makes the commit's own check raise
    `StoreFileLost` naming that file, so that commit is never taken for stored."""
    db = Database(db_path)
    db.check_files()  # the files as opened: nothing to say
    lose(db_path + suffix)
    batch = Batch()
    batch.merge([1])
    with pytest.raises(StoreFileLost) as lost:
        db.write(batch)
    assert (lost.value.path, lost.value.what) == (db_path + suffix, what)
    assert str(lost.value) == f"{db_path}{suffix} {what}"
    assert isinstance(lost.value, StoreError)
    db.close()
