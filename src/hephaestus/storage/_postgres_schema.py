"""PostgresStorage's schema, its version (table ``hx_schema``) and the migrations to it.

Schema version 1::

    hx_schema(version)             one row: the schema version of this database
    hx_instances(id PRIMARY KEY, workflow, version, status, revision,
                 updated_at, next_deadline, snapshot bytea)
        index (status, id)         query(status=...), recovery, paging by status
        index (workflow, id)       query(workflow=...), paging by workflow
        index (next_deadline)      partial: only rows with a timer (due-timer claims)
    hx_quarantine(id, snapshot, reason, at)   rows whose snapshot failed to decode

Schema version 2 adds what several engines sharing the store need
(``SharedStorage``, DESIGN.md "Scale-out")::

    hx_engines(engine_id PRIMARY KEY, epoch, heartbeat_at, expires_at)
                                   one row per engine id; times by the database clock
    hx_instances + owner_id, owner_epoch   the lease that may write the row, or null
        index (owner_id, owner_epoch)      partial: owned rows (release, takeover)
        index (id) WHERE status = 'running'  claims of runnable instances
    hx_inbox(instance_id, request_id PRIMARY KEY together, seq, sender, request,
             consumed, answer)     requests for instances another engine owns
        index (instance_id, seq) WHERE NOT consumed   pending rows, in order

Schema version 3 adds ``max_active`` across engines (``SharedStorage.put_limited``)::

    hx_instances + slot, queued    the admission slot flag (it counts while the row is
                                   not terminal) and a PENDING row's place in its
                                   workflow's queue (from the sequence hx_queue_order)
        index (workflow) WHERE slot            counting a workflow's slots
        index (workflow, queued, id) WHERE pending without a slot
                                               the admission queue, first in first
        index (id) WHERE pending with a slot   claims of admitted, unstarted rows
    hx_admission(workflow PRIMARY KEY)   one row per limited workflow name, locked
                                   (FOR UPDATE) by every change of its slots

Schema version 4 records the limit (``SharedStorage.admission_limit``)::

    hx_admission + max_active      the max_active of the last change of its slots

Times are epoch seconds (``double precision``) of the database's clock, so
every engine judges liveness and due timers by one clock.

Text columns that are ordered or compared use ``COLLATE "C"`` (byte order,
which for UTF-8 is code point order): ``query`` and paging order ids the way
Python's ``sorted`` does, whatever the database's locale. ``snapshot`` is the
msgspec blob of the instance (``_core._codec``), the one source of truth; the
other columns are copies of its fields for the indexes, written in the same
statement. Tables are prefixed ``hx_`` so the store can share a database with
an application's own tables.

``migrate`` runs every script above the database's version and records the
new version in one transaction, under a transaction-scoped advisory lock, so
several engines opening a new database at once migrate it once, and a crash
mid-migration leaves the old schema whole (PostgreSQL's DDL is
transactional). Only add: new tables, nullable columns, indexes. Statements
name their columns, so added columns never shift what a release reads or
writes. A database whose version is newer than this release knows is
refused rather than guessed at.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import psycopg

MIGRATIONS: Final[list[str]] = [
    # 0 -> 1: the first schema.
    """
    CREATE TABLE hx_instances (
        id text COLLATE "C" PRIMARY KEY,
        workflow text COLLATE "C" NOT NULL,
        version integer NOT NULL,
        status text COLLATE "C" NOT NULL,
        revision bigint NOT NULL,
        updated_at double precision NOT NULL,
        next_deadline double precision,
        snapshot bytea NOT NULL
    );
    CREATE INDEX hx_instances_by_status ON hx_instances (status, id);
    CREATE INDEX hx_instances_by_workflow ON hx_instances (workflow, id);
    CREATE INDEX hx_instances_by_deadline ON hx_instances (next_deadline)
        WHERE next_deadline IS NOT NULL;
    CREATE TABLE hx_quarantine (
        id text COLLATE "C" NOT NULL,
        snapshot bytea,
        reason text NOT NULL,
        at double precision NOT NULL
    );
    """,
    # 1 -> 2: what several engines sharing the store need (SharedStorage).
    """
    CREATE TABLE hx_engines (
        engine_id text COLLATE "C" PRIMARY KEY,
        epoch bigint NOT NULL,
        heartbeat_at double precision NOT NULL,
        expires_at double precision NOT NULL
    );
    ALTER TABLE hx_instances ADD COLUMN owner_id text COLLATE "C";
    ALTER TABLE hx_instances ADD COLUMN owner_epoch bigint;
    CREATE INDEX hx_instances_by_owner ON hx_instances (owner_id, owner_epoch)
        WHERE owner_id IS NOT NULL;
    CREATE INDEX hx_instances_running ON hx_instances (id) WHERE status = 'running';
    CREATE TABLE hx_inbox (
        instance_id text COLLATE "C" NOT NULL,
        request_id text COLLATE "C" NOT NULL,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        sender text COLLATE "C" NOT NULL,
        request bytea NOT NULL,
        consumed boolean NOT NULL DEFAULT false,
        answer bytea,
        PRIMARY KEY (instance_id, request_id)
    );
    CREATE INDEX hx_inbox_pending ON hx_inbox (instance_id, seq) WHERE NOT consumed;
    """,
    # 2 -> 3: max_active across engines (admission slots and queues).
    """
    ALTER TABLE hx_instances ADD COLUMN slot boolean;
    ALTER TABLE hx_instances ADD COLUMN queued bigint;
    CREATE SEQUENCE hx_queue_order;
    CREATE INDEX hx_instances_slots ON hx_instances (workflow) WHERE slot;
    CREATE INDEX hx_instances_queue ON hx_instances (workflow, queued, id)
        WHERE status = 'pending' AND slot IS NOT TRUE;
    CREATE INDEX hx_instances_startable ON hx_instances (id)
        WHERE status = 'pending' AND slot IS TRUE;
    CREATE TABLE hx_admission (
        workflow text COLLATE "C" PRIMARY KEY
    );
    """,
    # 3 -> 4: the limit slots were last counted against, for tools without the definition.
    """
    ALTER TABLE hx_admission ADD COLUMN max_active integer;
    """,
]

_LOCK_KEY: Final = 0x6878_5343_4845_4D41 & 0x7FFF_FFFF_FFFF_FFFF
"""The advisory lock every migration takes (``hxSCHEMA``), so concurrent openers migrate once."""


def schema_version() -> int:
    """The schema version this release writes (the number of migrations)."""
    return len(MIGRATIONS)


class SchemaError(ValueError):
    """The database is not a hephaestus store this release can use; the message says why."""


def stored_version(conn: psycopg.Connection[tuple[object, ...]]) -> int | None:
    """Return the database's schema version, or None when it has no ``hx_schema`` table."""
    found = conn.execute("SELECT to_regclass('hx_schema') IS NOT NULL").fetchone()
    if not found or not found[0]:
        return None
    row = conn.execute("SELECT max(version) FROM hx_schema").fetchone()
    return 0 if row is None or row[0] is None else int(str(row[0]))


def check_readable(conn: psycopg.Connection[tuple[object, ...]], where: str) -> None:
    """Raise SchemaError unless the database holds a store this release can read.

    Raises:
        SchemaError: no store there (no ``hx_schema``), or a newer schema.
    """
    version = stored_version(conn)
    if version is None or version == 0:
        raise SchemaError(
            f"no hephaestus store in {where}: the database has no hx_schema table; "
            "open it once with PostgresStorage (not read-only) to create one"
        )
    _check_not_newer(version, where)


def migrate(conn: psycopg.Connection[tuple[object, ...]], where: str) -> int:
    """Create or migrate the schema to this release's version; return the version before.

    Runs in one transaction on ``conn`` (which must not be in one), under an
    advisory lock: a concurrent opener waits, then finds the work done.

    Raises:
        SchemaError: the database's schema is newer than this release knows.
        psycopg.Error: the database refused a statement (nothing changed).
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        version = stored_version(conn)
        if version is None:
            conn.execute("CREATE TABLE hx_schema (version integer NOT NULL)")
            version = 0
        _check_not_newer(version, where)
        for script in MIGRATIONS[version:]:
            conn.execute(script.encode())
        if version < schema_version():
            conn.execute("DELETE FROM hx_schema")
            conn.execute("INSERT INTO hx_schema (version) VALUES (%s)", (schema_version(),))
    return version


def _check_not_newer(version: int, where: str) -> None:
    if version > schema_version():
        raise SchemaError(
            f"{where} has schema version {version}, newer than this release's "
            f"{schema_version()}: upgrade hephaestus-trio to use it"
        )
