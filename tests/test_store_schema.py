"""The store's schema: every older layout is migrated in place, to the current tables, and loads
the same list and registry."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from numd.service import NumberService
from numd.store.schema import CREATE, CREATE_V1, CREATE_V2, MIGRATIONS, SCHEMA_VERSION
from numd.store.service import Store


def test_migration_from_version_1(state: NumberService, tmp_path: Path, clock: Clock) -> None:
    """A version-1 file (a row per value, no last_seen) is migrated in place and loads the same."""
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as c:
        c.executescript(CREATE_V1)
        c.executemany(
            "INSERT INTO sorted_values (value) VALUES (?)", [(5,), (-1,), (5,), (3,), (5,)]
        )
        c.execute("INSERT INTO clients (id, number, last_given) VALUES (9, 1080, 37)")
    c.close()
    store = Store(state, str(path), clock, run=maybeDeferred)
    store.load()
    assert list(state.values) == [-1, 3, 5, 5, 5]
    assert state.clients[9].as_dict() == {
        "id": 9, "number": 1080, "last_given": 37, "connected": False, "last_seen": 0.0,
    }  # fmt: skip
    store.startService()
    state.merge([5])
    store.stopService()
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            SCHEMA_VERSION,
        )
        assert c.execute("SELECT value FROM list_values ORDER BY value").fetchall() == [
            (-1,), (3,), (5,), (5,), (5,), (5,),
        ]  # fmt: skip
    c.close()


def test_migration_from_version_2(state: NumberService, tmp_path: Path, clock: Clock) -> None:
    """A version-2 file (a row per distinct value with its count) becomes one row per value."""
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as c:
        c.executescript(CREATE_V2)
        c.executemany(
            "INSERT INTO sorted_values (value, count) VALUES (?, ?)",
            [(2**63 - 1, 1), (-(2**63), 2), (7, 3), (8, 0)],
        )
        c.execute(
            "INSERT INTO clients (id, number, last_given, last_seen) VALUES (4, 12, NULL, 1.5)"
        )
    c.close()
    store = Store(state, str(path), clock, run=maybeDeferred)
    store.load()
    assert list(state.values) == [-(2**63), -(2**63), 7, 7, 7, 2**63 - 1]
    assert state.clients[4].as_dict() == {
        "id": 4, "number": 12, "last_given": None, "connected": False, "last_seen": 1.5,
    }  # fmt: skip
    store.stopService()
    with sqlite3.connect(path) as c:
        tables = {row[0] for row in c.execute("SELECT name FROM sqlite_master")}
        assert "sorted_values" not in tables
        assert c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (3,)
    c.close()


def test_every_older_version_has_one_migration_step() -> None:
    """A file of any version numd ever wrote can be brought up to `SCHEMA_VERSION`, one step each."""
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))


def columns(connection: sqlite3.Connection) -> dict[str, list[tuple[str, str, int, int]]]:
    """Each table's columns as (name, type, not null, primary key), by table name."""
    tables = [
        name
        for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        )
    ]
    return {
        table: [
            (name, kind, notnull, pk)
            for _, name, kind, notnull, _, pk in connection.execute(f"PRAGMA table_info({table})")
        ]
        for table in tables
    }


@pytest.mark.parametrize("old", [1, 2])
def test_a_migrated_file_has_the_tables_of_a_new_one(old: int) -> None:
    """Every migration path ends in the tables `CREATE` makes (defaults aside), so a migrated
    file and a new one are read and written alike."""
    new = sqlite3.connect(":memory:")
    new.executescript(CREATE)
    migrated = sqlite3.connect(":memory:")
    migrated.executescript({1: CREATE_V1, 2: CREATE_V2}[old])
    for version in range(old, SCHEMA_VERSION):
        MIGRATIONS[version](migrated)
    assert columns(migrated) == columns(new)
    new.close()
    migrated.close()
