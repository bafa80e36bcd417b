"""Group commit for SQLiteStorage: one thread owns the write connection.

Puts and deletes from Trio tasks are queued (``submit`` is a thread-safe
``SimpleQueue.put``, no thread hop); the writer thread takes everything
queued, runs it in one ``BEGIN IMMEDIATE ... COMMIT`` and hands every
outcome back to Trio with a single ``TrioToken.run_sync_soon`` per batch.
Requests queued while a transaction commits go into the next one, so N
concurrent writers cost about one commit (one WAL fsync), not N.

Each row is fenced by its expected revision inside the transaction
(``UPDATE ... WHERE id = ? AND revision = ?``, ``INSERT ... ON CONFLICT DO
NOTHING`` for "nothing stored"): a conflicting row changes nothing and fails
alone with ``RevisionConflict``; the rest commit. Requests for the same id in
one batch apply in queue order, as if run one by one.

Every outcome is delivered only after COMMIT returned (or failed): a failed
commit fails every request in the batch. What a failure means is SQLite's to
say (https://sqlite.org/rescode.html, "Response To Errors Within A
Transaction" in lang_transaction.html):

- ``SQLITE_FULL`` (disk or quota full): SQLite rolled the transaction back;
  WAL frames past the last commit are never read. Nothing of the batch is
  stored and nothing earlier is harmed, so the store stays writable and heals
  once there is space (DESIGN guarantee 8).
- ``SQLITE_IOERR*`` (EIO, a failed fsync, a short read...), ``SQLITE_CORRUPT``,
  ``SQLITE_NOTADB``, or anything that is no SQLite error: the file may be
  damaged, or a failed fsync may have dropped pages that a retry would
  "successfully" sync without (fsyncgate). The store refuses every later
  write until it is reopened, which lets SQLite run its recovery.
- anything else (``SQLITE_READONLY``, ``SQLITE_BUSY``, ``SQLITE_CANTOPEN``...):
  nothing was written; the batch fails and later batches try again.
"""

from __future__ import annotations

import errno
import sqlite3
from typing import Final, final

import outcome
import trio

from .._core._errors import RevisionConflict
from ._batches import WriterThread
from ._rows import Row

MAX_BATCH: Final = 1_000
"""Most requests in one transaction (bounds its latency and memory)."""

_FULL: Final = 13
_IOERR: Final = 10
_CORRUPT: Final = 11
_NOTADB: Final = 26
_READONLY: Final = 8
_DAMAGED: Final = frozenset({_IOERR, _CORRUPT, _NOTADB})

"""(id, workflow, version, status, revision, updated_at, next_deadline, snapshot)."""

_COLUMNS: Final = "id, workflow, version, status, revision, updated_at, next_deadline, snapshot"
_VALUES: Final = "?, ?, ?, ?, ?, ?, ?, ?"
_SET: Final = (
    "workflow = excluded.workflow, version = excluded.version, status = excluded.status, "
    "revision = excluded.revision, updated_at = excluded.updated_at, "
    "next_deadline = excluded.next_deadline, snapshot = excluded.snapshot"
)
_UPSERT: Final = (
    f"INSERT INTO instances ({_COLUMNS}) VALUES ({_VALUES}) ON CONFLICT(id) DO UPDATE SET {_SET}"
)
_INSERT_NEW: Final = (
    f"INSERT INTO instances ({_COLUMNS}) VALUES ({_VALUES}) ON CONFLICT(id) DO NOTHING"
)
_UPDATE_AT: Final = (
    "UPDATE instances SET workflow = ?, version = ?, status = ?, revision = ?, "
    "updated_at = ?, next_deadline = ?, snapshot = ? WHERE id = ? AND revision = ?"
)
_UPDATE_SAME_KIND: Final = (
    "UPDATE instances SET status = ?, revision = ?, updated_at = ?, next_deadline = ?, "
    "snapshot = ? WHERE id = ? AND revision = ? AND workflow = ? AND version = ?"
)
"""The usual fenced update: it leaves workflow and version alone, so SQLite does not
rewrite their index entry (a WAL frame less per commit); ``_UPDATE_AT`` is the fallback."""
_DELETE: Final = "DELETE FROM instances WHERE id = ?"
_QUARANTINE: Final = (
    "INSERT INTO quarantine (id, snapshot, reason, at) "
    "SELECT id, snapshot, ?, ? FROM instances WHERE id = ? AND snapshot = ?"
)
_UNQUARANTINED: Final = "DELETE FROM instances WHERE id = ? AND snapshot = ?"


@final
class Request:
    """One queued write and, once its batch is done, its outcome."""

    __slots__ = ("expected", "instance_id", "kind", "outcome", "payload", "task")

    def __init__(
        self,
        kind: str,
        instance_id: str,
        payload: Row | tuple[bytes, str, float] | None,
        expected: int | None,
    ) -> None:
        self.kind = kind  # "put", "delete" or "quarantine"
        self.instance_id = instance_id
        self.payload = payload
        self.expected = expected
        self.task: trio.lowlevel.Task | None = None
        self.outcome: outcome.Outcome[None] | None = None


def fault(exc: BaseException, what: str) -> tuple[OSError, bool]:
    """Map an error of SQLite to (the OSError callers get, whether the file may be damaged)."""
    if not isinstance(exc, sqlite3.Error):
        return OSError(errno.EIO, f"{what} did not complete: {exc!r}"), True
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", "an SQLite error")
    primary = -1 if code is None else code & 0xFF
    if primary == _FULL:
        return (
            OSError(
                errno.ENOSPC,
                f"{what} failed: the disk is full ({name}: {exc}); nothing of it was stored "
                "and earlier writes are intact: free some space, writes then succeed again",
            ),
            False,
        )
    if primary in _DAMAGED:
        return (
            OSError(
                errno.EIO,
                f"{what} failed with {name} ({exc}): the database may be damaged or recent "
                "writes lost",
            ),
            True,
        )
    number = errno.EROFS if primary == _READONLY else errno.EIO
    return OSError(number, f"{what} failed with {name} ({exc}); nothing of it was stored"), False


@final
class Writer(WriterThread[Request]):
    """The writer thread and its queue. ``submit`` from Trio; everything else is internal.

    Counters (for tests and benchmarks): ``commits`` (transactions committed),
    ``requests`` (requests those carried).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        token: trio.lowlevel.TrioToken,
        describe: str,
    ) -> None:
        self._conn = conn
        self._describe = describe
        self.failure: OSError | None = None
        """Set once a failure means the file may be damaged: no write is tried again."""
        self.commits = 0
        self.requests = 0
        super().__init__(token, f"hephaestus-sqlite-writer {describe}", MAX_BATCH)

    # -- the writer thread ----------------------------------------------------------------

    def _close(self) -> None:
        self._conn.close()

    def _run(self, batch: list[Request]) -> None:
        """Apply ``batch`` in one transaction and set every request's outcome."""
        if self.failure is not None:
            self._fail(batch, self.failure)
            return
        conn = self._conn
        results: list[outcome.Outcome[None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for request in batch:
                results.append(self._apply(conn, request))
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the rollback of a failed commit may fail too; SQLite recovers on open
            noun = "write" if len(batch) == 1 else "writes"
            error, damaged = fault(exc, f"a transaction of {len(batch)} {noun} to {self._describe}")
            if damaged:
                self.failure = error
            self._fail(batch, error)
            if not isinstance(exc, Exception):
                raise
            return
        self.commits += 1
        self.requests += len(batch)
        for request, result in zip(batch, results, strict=True):
            request.outcome = result

    def _fail(self, batch: list[Request], error: OSError) -> None:
        for request in batch:
            copy = OSError(error.errno, error.strerror)
            copy.__cause__ = error.__cause__ or error
            request.outcome = outcome.Error(copy)

    def _apply(self, conn: sqlite3.Connection, request: Request) -> outcome.Outcome[None]:
        """Run one request's statement; a revision conflict is its outcome, not an exception."""
        iid = request.instance_id
        if request.kind == "delete":
            conn.execute(_DELETE, (iid,))
            return outcome.Value(None)
        if request.kind == "quarantine":
            blob, reason, at = request.payload  # type: ignore[misc]
            conn.execute(_QUARANTINE, (reason, at, iid, blob))
            conn.execute(_UNQUARANTINED, (iid, blob))
            return outcome.Value(None)
        row: Row = request.payload  # type: ignore[assignment]
        expected = request.expected
        if expected is None:
            conn.execute(_UPSERT, row)
            return outcome.Value(None)
        if expected == 0:
            changed = conn.execute(_INSERT_NEW, row).rowcount
        else:
            _, workflow, version, status, revision, updated_at, deadline, blob = row
            changed = conn.execute(
                _UPDATE_SAME_KIND,
                (status, revision, updated_at, deadline, blob, iid, expected, workflow, version),
            ).rowcount
            if changed == 0:  # a conflict, or (rarely) a new workflow or version for this id
                changed = conn.execute(_UPDATE_AT, (*row[1:], iid, expected)).rowcount
        if changed == 1:
            return outcome.Value(None)
        found = conn.execute("SELECT revision FROM instances WHERE id = ?", (iid,)).fetchone()
        current = 0 if found is None else int(found[0])
        return outcome.Error(
            RevisionConflict(
                f"instance {iid!r} is at revision {current}, not the expected {expected}"
            )
        )
