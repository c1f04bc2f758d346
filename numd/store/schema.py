"""The layout of numd's database file, its version, and the steps that bring older files up to it.

Kept apart from the code that opens and writes the file (`numd.store.database`)
so that changing the layout is one place to read: the current tables, the number
that names them, and one migration per older version. The older layouts are
here too, though only tests create them: a migration can only be tested against
the layout it starts from. Schema (version 3)::

    meta(key TEXT PRIMARY KEY, value)            -- key 'schema_version'
    list_values(value INTEGER NOT NULL)          -- one row per value, no index
    clients(id INTEGER PRIMARY KEY, number INTEGER NOT NULL,
            last_given INTEGER, last_seen REAL NOT NULL)

Values are appended, one row each (duplicates are repeated rows), in a table with
no index: a commit writes only the table's last pages, where a table keyed by
value (version 2) touched one page per added value, scattered over the file, and
wrote each of them to the write-ahead log. Loading sorts them once, in memory.
Older layouts are migrated in place at start-up (see `MIGRATIONS`).

To change the layout: bump `SCHEMA_VERSION`, change `CREATE`, write the step from
the previous version, add it to `MIGRATIONS`, and keep the previous layout here
as ``CREATE_V<n>`` for its test.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

SCHEMA_VERSION = 3
"""The layout this numd writes; older ones are migrated at start-up."""

ClientRow = tuple[int, "int | None", float]
"""What is stored per client: (number, last_given, last_seen)."""

CREATE = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value);
CREATE TABLE list_values (value INTEGER NOT NULL);
CREATE TABLE clients (
    id INTEGER PRIMARY KEY,
    number INTEGER NOT NULL,
    last_given INTEGER,
    last_seen REAL NOT NULL
);
"""
"""The tables of a new file at `SCHEMA_VERSION` (its version row is written apart)."""

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
