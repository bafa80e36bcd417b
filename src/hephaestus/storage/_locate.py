"""Which store is at a path: an SQLite file, a FileStorage directory, a PostgreSQL DSN, or none.

Used by the command line, whose ``--store`` takes any of them. A
``postgresql://`` (or ``postgres://``) URL is a PostgresStorage; whether a
store is there is found out on opening (``NotAStore`` for read-only use of a
database without one). An SQLite
database is recognised by its 16-byte header; a FileStorage directory by its
lock file (every FileStorage creates ``hephaestus.lock`` when it is first
opened, so a new, empty one is recognised too) or, for a copy made without
it, by a snapshot file. Anything else is no store, and says so.
"""

from __future__ import annotations

import os

from ._errors import NotAStore
from ._file import FileStorage
from ._lock import LOCK_NAME
from ._names import is_snapshot_name
from ._postgres import PostgresStorage, is_postgres_dsn
from ._sqlite import SQLiteStorage
from ._sqlite_schema import HEADER


def store_at(path: str, *, read_only: bool) -> FileStorage | SQLiteStorage | PostgresStorage:
    """Return an (unopened) storage for the store at ``path``; never creates one.

    Args:
        path: an SQLite database file, a FileStorage directory or a
            ``postgresql://`` DSN.
        read_only: open it read-only (no lock: works while an engine has it).

    Raises:
        NotAStore: nothing is at ``path``, or what is there is neither kind of
            store; the message names the path and what was found.
        ImportError: a PostgreSQL DSN without psycopg installed (names the extra).
        OSError: when ``path`` exists but cannot be inspected.
    """
    if is_postgres_dsn(path):
        return PostgresStorage(path, read_only=read_only)
    if not os.path.exists(path):
        raise NotAStore(
            f"no store at {path!r}: the path does not exist (a PostgreSQL store is "
            "given as a postgresql:// URL)"
        )
    if os.path.isdir(path):
        if _is_file_store(path):
            return FileStorage(path, read_only=read_only)
        raise NotAStore(
            f"no store at {path!r}: the directory is no FileStorage (it has no {LOCK_NAME} "
            "and no .snap files); pass a FileStorage directory or an SQLiteStorage file"
        )
    with open(path, "rb") as file:
        head = file.read(len(HEADER))
    if head == HEADER:
        return SQLiteStorage(path, read_only=read_only)
    raise NotAStore(
        f"no store at {path!r}: it is not a directory (a FileStorage) nor an SQLite database "
        "(an SQLiteStorage file starts with 'SQLite format 3')"
    )


def _is_file_store(path: str) -> bool:
    if os.path.isfile(os.path.join(path, LOCK_NAME)):
        return True
    with os.scandir(path) as entries:
        return any(is_snapshot_name(e.name) and e.is_file() for e in entries)
