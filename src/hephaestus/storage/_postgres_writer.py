"""Group commit for PostgresStorage: one thread owns the write connection.

As in SQLiteStorage (``_sqlite_writer``): puts and deletes from Trio tasks
are queued (a thread-safe ``SimpleQueue.put``, no thread hop); the writer
thread takes everything queued, sends it as one transaction in one pipeline
(``BEGIN``, every row's statement, ``COMMIT``, then one sync: one round trip
and one WAL flush for the whole batch) and hands every outcome back to Trio
with a single ``TrioToken.run_sync_soon`` per batch. What a write does beside
its row (marking inbox rows, notifications) is part of its one statement, so
no result is waited for before the commit.

Each row is fenced by its expected revision inside the transaction
(``UPDATE ... WHERE id = %s AND revision = %s``, ``INSERT ... ON CONFLICT DO
NOTHING`` for "nothing stored"): a conflicting row changes nothing and fails
alone with ``RevisionConflict``; the rest commit. Under READ COMMITTED a
row another transaction changes meanwhile is re-checked against the fence
once that transaction ends, so two engines can never both win. The batch is
applied in id order (stable: requests for one id keep their queue order), so
two engines' batches lock rows in the same order and cannot deadlock on them.

A failed transaction fails every request in it with ``OSError``; nothing of
it is stored. A connection lost during ``COMMIT`` leaves the outcome unknown
to us (PostgreSQL may have committed): the requests fail with ``OSError``
all the same, and a caller that retries with ``expected_revision`` finds out
which it was (``RevisionConflict`` if it had committed). The next batch opens
a new connection.
"""

from __future__ import annotations

import contextlib
import errno
import select
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, final

import outcome
import trio

from .._core._errors import RevisionConflict
from ._batches import WriterThread
from ._rows import Row

if TYPE_CHECKING:
    import psycopg

MAX_BATCH: Final = 1_000
"""Most requests in one transaction (bounds its latency and memory)."""

"""(id, workflow, version, status, revision, updated_at, next_deadline, snapshot)."""

_COLUMNS: Final = "id, workflow, version, status, revision, updated_at, next_deadline, snapshot"
_VALUES: Final = "%s, %s, %s, %s, %s, %s, %s, %s"
UPSERT: Final = (
    f"INSERT INTO hx_instances ({_COLUMNS}) VALUES ({_VALUES}) ON CONFLICT (id) DO UPDATE SET "
    "workflow = excluded.workflow, version = excluded.version, status = excluded.status, "
    "revision = excluded.revision, updated_at = excluded.updated_at, "
    "next_deadline = excluded.next_deadline, snapshot = excluded.snapshot"
)
INSERT_NEW: Final = (
    f"INSERT INTO hx_instances ({_COLUMNS}) VALUES ({_VALUES}) ON CONFLICT (id) DO NOTHING "
    "RETURNING revision"
)
UPDATE_AT: Final = (
    "UPDATE hx_instances SET workflow = %s, version = %s, status = %s, revision = %s, "
    "updated_at = %s, next_deadline = %s, snapshot = %s WHERE id = %s AND revision = %s "
    "RETURNING revision"
)
_DELETE: Final = (
    "WITH inbox AS (DELETE FROM hx_inbox WHERE instance_id = %s) "
    "DELETE FROM hx_instances WHERE id = %s"
)
_QUARANTINE: Final = (
    "WITH moved AS (DELETE FROM hx_instances WHERE id = %s AND snapshot = %s RETURNING id, "
    "snapshot) INSERT INTO hx_quarantine (id, snapshot, reason, at) "
    "SELECT id, snapshot, %s, %s FROM moved"
)
_REVISION: Final = "SELECT revision FROM hx_instances WHERE id = %s"

Connect = Callable[[], "psycopg.Connection[tuple[Any, ...]]"]


class Op(Protocol):
    """One write of a batch: one statement in the batch's transaction, then its outcome.

    ``send`` queues its statement (everything the write changes and sends
    rides in it) and returns the cursor. Once the batch has committed,
    ``finish`` reads that cursor and returns the outcome; to explain a
    refusal it may read the row again (a read outside the transaction: under
    READ COMMITTED it sees what a read inside it would), never write.
    """

    instance_id: str

    def send(self, conn: psycopg.Connection[tuple[Any, ...]]) -> psycopg.Cursor[Any]: ...

    def finish(
        self, conn: psycopg.Connection[tuple[Any, ...]], cur: psycopg.Cursor[Any]
    ) -> outcome.Outcome[Any]: ...


@final
class Request:
    """One queued write (an :class:`Op`) and, once its batch is done, its outcome."""

    __slots__ = ("op", "outcome", "task")

    def __init__(self, op: Op) -> None:
        self.op = op
        self.task: trio.lowlevel.Task | None = None
        self.outcome: outcome.Outcome[Any] | None = None


@final
class Put:
    """``put``: upsert, or fenced by the expected revision (0: insert only)."""

    __slots__ = ("expected", "instance_id", "row")

    def __init__(self, row: Row, expected: int | None) -> None:
        self.instance_id = row[0]
        self.row = row
        self.expected = expected

    def send(self, conn: psycopg.Connection[tuple[Any, ...]]) -> psycopg.Cursor[Any]:
        if self.expected is None:
            return conn.execute(UPSERT, self.row)
        if self.expected == 0:
            return conn.execute(INSERT_NEW, self.row)
        return conn.execute(UPDATE_AT, (*self.row[1:], self.instance_id, self.expected))

    def finish(
        self, conn: psycopg.Connection[tuple[Any, ...]], cur: psycopg.Cursor[Any]
    ) -> outcome.Outcome[Any]:
        if self.expected is None or cur.fetchone() is not None:
            return outcome.Value(None)
        return outcome.Error(conflict(conn, self.instance_id, self.expected))


@final
class Delete:
    """``delete``: the instance's row and its inbox rows."""

    __slots__ = ("instance_id",)

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id

    def send(self, conn: psycopg.Connection[tuple[Any, ...]]) -> psycopg.Cursor[Any]:
        return conn.execute(_DELETE, (self.instance_id, self.instance_id))

    def finish(
        self, conn: psycopg.Connection[tuple[Any, ...]], cur: psycopg.Cursor[Any]
    ) -> outcome.Outcome[Any]:
        return outcome.Value(None)


@final
class Quarantine:
    """Move a row whose snapshot failed to decode to ``hx_quarantine`` (if it is unchanged)."""

    __slots__ = ("at", "blob", "instance_id", "reason")

    def __init__(self, instance_id: str, blob: bytes, reason: str, at: float) -> None:
        self.instance_id = instance_id
        self.blob = blob
        self.reason = reason
        self.at = at

    def send(self, conn: psycopg.Connection[tuple[Any, ...]]) -> psycopg.Cursor[Any]:
        return conn.execute(_QUARANTINE, (self.instance_id, self.blob, self.reason, self.at))

    def finish(
        self, conn: psycopg.Connection[tuple[Any, ...]], cur: psycopg.Cursor[Any]
    ) -> outcome.Outcome[Any]:
        return outcome.Value(None)


def conflict(
    conn: psycopg.Connection[tuple[Any, ...]], instance_id: str, expected: int
) -> RevisionConflict:
    """The RevisionConflict for a fenced write of ``instance_id`` that matched no row."""
    found = conn.execute(_REVISION, (instance_id,)).fetchone()
    current = 0 if found is None else int(found[0])
    return RevisionConflict(
        f"instance {instance_id!r} is at revision {current}, not the expected {expected}"
    )


def ended_by_server(conn: psycopg.Connection[tuple[Any, ...]]) -> bool:
    """True when the server has closed, or is closing, idle ``conn`` (no round trip, no wait).

    An idle connection of ours has nothing to read, unless the server spoke
    unasked: it says why it ends a session (``FATAL``: terminated, idle
    timeout, shutting down) just before it closes the socket. Either counts.
    Nothing is sent here, so a request that then goes out on a new connection
    cannot have been applied twice. A connection cut without a word (a
    network partition) is not noticed: its next request fails with ``OSError``.
    """
    if conn.closed:
        return True
    pgconn = conn.pgconn
    if pgconn.status != _CONNECTION_OK:
        return True
    poller = select.poll()
    poller.register(pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


_CONNECTION_OK: Final = 0
"""libpq's ``CONNECTION_OK``."""


def fault(exc: BaseException, what: str) -> OSError:
    """The OSError callers get for an error of PostgreSQL or of the connection."""
    name = type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None)
    code = f" [{sqlstate}]" if sqlstate else ""
    text = str(exc).strip() or repr(exc)
    number = errno.ENOSPC if sqlstate in ("53100",) else errno.EIO
    return OSError(number, f"{what} failed: {name}{code}: {text}; nothing of it was stored")


@final
class Writer(WriterThread[Request]):
    """The writer thread and its queue. ``submit`` from Trio; everything else is internal.

    Counters (for tests and benchmarks): ``commits`` (transactions committed),
    ``requests`` (requests those carried), ``reconnects`` (connections found
    closed by the server before a batch, and replaced).
    """

    def __init__(self, connect: Connect, token: trio.lowlevel.TrioToken, describe: str) -> None:
        self._connect = connect
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._describe = describe
        self.commits = 0
        self.requests = 0
        self.reconnects = 0
        super().__init__(token, f"hephaestus-pg-writer {describe}", MAX_BATCH)

    # -- the writer thread ----------------------------------------------------------------

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()

    def _run(self, batch: list[Request]) -> None:
        """Apply ``batch`` in one transaction and set every request's outcome.

        A connection the server closed while it was idle (this process was
        paused past the server's patience, the server restarted) is replaced
        before anything is sent on it, so the batch does not fail for it.
        """
        ordered = sorted(batch, key=lambda r: r.op.instance_id)
        try:
            stale = self._conn
            if stale is not None and ended_by_server(stale):
                self._conn = None
                self.reconnects += 1
                with contextlib.suppress(Exception):
                    stale.close()
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            results = apply_batch(self._conn, ordered)
        except BaseException as exc:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            noun = "write" if len(batch) == 1 else "writes"
            error = fault(exc, f"a transaction of {len(batch)} {noun} to {self._describe}")
            for request in batch:
                copy = OSError(error.errno, error.strerror)
                copy.__cause__ = exc
                request.outcome = outcome.Error(copy)
            if not isinstance(exc, Exception):
                raise
            return
        self.commits += 1
        self.requests += len(batch)
        for request, result in zip(ordered, results, strict=True):
            request.outcome = result


def apply_batch(
    conn: psycopg.Connection[tuple[Any, ...]], batch: Sequence[Request]
) -> list[outcome.Outcome[Any]]:
    """Run ``batch`` in one transaction in one round trip; return each request's outcome.

    ``BEGIN``, each request's statement and ``COMMIT`` go out in one pipeline,
    synced once when it closes. A statement that fails makes PostgreSQL skip
    the rest up to that sync, ``COMMIT`` included: the transaction is left
    failed and the caller closes the connection, which rolls it back.

    Raises:
        psycopg.Error: the transaction failed (rolled back: nothing stored),
            or it did not end in a commit.
    """
    with conn.pipeline():
        conn.execute(b"BEGIN")
        cursors = [request.op.send(conn) for request in batch]
        end = conn.execute(b"COMMIT")
    if end.statusmessage != "COMMIT":  # what PostgreSQL answers a failed transaction's COMMIT
        import psycopg

        raise psycopg.OperationalError(
            f"the transaction ended in {end.statusmessage!r}, not COMMIT: nothing was stored"
        )
    return [r.op.finish(conn, cur) for r, cur in zip(batch, cursors, strict=True)]
