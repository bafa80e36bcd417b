"""SQLiteStorage's schema, its version (``PRAGMA user_version``) and the migrations to it.

Schema version 1::

    instances(id TEXT PRIMARY KEY, workflow, version, status, revision,
              updated_at, next_deadline, snapshot BLOB)
        index (status, id)        query(status=...), recovery, paging by status
        index (workflow, id)      query(workflow=...), paging by workflow
        index (next_deadline)     partial: only rows with a timer
    quarantine(id, snapshot, reason, at)   rows whose snapshot failed to decode

``snapshot`` is the msgspec blob of the instance (``_core._codec``), the one
source of truth; the other columns are copies of its fields for the indexes,
written in the same statement.

How later schemas are added (the scale-out work: owner/lease columns, inbox
and engine tables): append one script to ``MIGRATIONS``. ``migrate`` runs every
script above the file's ``user_version`` and sets the new version in one
transaction, so a crash mid-migration leaves the old schema whole. Only add:
``ALTER TABLE instances ADD COLUMN owner TEXT`` (nullable or with a default),
``CREATE TABLE engines (...)``, ``CREATE TABLE inbox (...)``, new indexes.
Every statement of this release names its columns (no ``SELECT *``, no
positional ``INSERT``), so added columns never shift what it reads or writes.
A file whose ``user_version`` is newer than this release knows is refused
rather than guessed at.
"""

from __future__ import annotations

import sqlite3
from typing import Final

HEADER: Final = b"SQLite format 3\x00"
"""The first 16 bytes of every SQLite database file."""

MIGRATIONS: Final[list[str]] = [
    # 0 -> 1: the first schema.
    """
    CREATE TABLE instances (
        id TEXT PRIMARY KEY NOT NULL,
        workflow TEXT NOT NULL,
        version INTEGER NOT NULL,
        status TEXT NOT NULL,
        revision INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        next_deadline REAL,
        snapshot BLOB NOT NULL
    );
    CREATE INDEX instances_by_status ON instances (status, id);
    CREATE INDEX instances_by_workflow ON instances (workflow, id);
    CREATE INDEX instances_by_deadline ON instances (next_deadline)
        WHERE next_deadline IS NOT NULL;
    CREATE TABLE quarantine (
        id TEXT NOT NULL,
        snapshot BLOB,
        reason TEXT NOT NULL,
        at REAL NOT NULL
    );
    """,
]


def schema_version() -> int:
    """The schema version this release writes (the number of migrations)."""
    return len(MIGRATIONS)


class SchemaError(ValueError):
    """The database is not a hephaestus store this release can use; the message says why."""


def user_version(conn: sqlite3.Connection) -> int:
    """Return the database's ``PRAGMA user_version``."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def _is_empty(conn: sqlite3.Connection) -> bool:
    return bool(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0)


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the database to this release's schema; return the version it had.

    Runs in one ``BEGIN IMMEDIATE`` transaction (``conn`` in autocommit mode),
    so the file has either its old schema or the new one.

    Raises:
        SchemaError: the file was written by a newer release, or holds tables
            that are not a hephaestus store.
        sqlite3.Error: from SQLite.
    """
    current = schema_version()
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = user_version(conn)
        check_migratable(conn, path, found)
        for script in MIGRATIONS[found:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        if found != current:
            conn.execute(f"PRAGMA user_version = {current:d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


def check_migratable(conn: sqlite3.Connection, path: str, found: int) -> None:
    """Raise SchemaError unless a database at schema ``found`` can be migrated here."""
    current = schema_version()
    if found > current:
        raise SchemaError(
            f"{path!r} has hephaestus schema {found}, newer than this release knows "
            f"({current}): upgrade hephaestus-trio to open it"
        )
    if found == 0 and not _is_empty(conn):
        raise SchemaError(
            f"{path!r} is an SQLite database but not a hephaestus store (it has tables "
            "and no hephaestus schema version): give SQLiteStorage a new file"
        )


def check_readable(conn: sqlite3.Connection, path: str) -> None:
    """Check that a read-only connection can read this database with this release.

    Raises:
        SchemaError: the file is no hephaestus store, or has another schema version.
    """
    found = user_version(conn)
    current = schema_version()
    if found == current:
        return
    if found == 0:
        raise SchemaError(
            f"{path!r} is an SQLite database but not a hephaestus store "
            "(no hephaestus schema version)"
        )
    if found > current:
        raise SchemaError(
            f"{path!r} has hephaestus schema {found}, newer than this release knows "
            f"({current}): upgrade hephaestus-trio to read it"
        )
    raise SchemaError(
        f"{path!r} has the older hephaestus schema {found} (this release uses {current}): "
        "open it once with an engine of this release, which migrates it, then read it"
    )
