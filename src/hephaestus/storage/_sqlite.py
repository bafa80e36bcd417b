"""SQLiteStorage: every snapshot in one SQLite database (stdlib ``sqlite3``, WAL, group commit).

Where things live, for ``path`` = ``state.sqlite``:

- ``state.sqlite``: the database (schema in ``_sqlite_schema``);
- ``state.sqlite-wal``, ``state.sqlite-shm``: SQLite's write-ahead log and its
  index, while a connection is open;
- ``state.sqlite.lock``: the exclusive lock of the engine process that has the
  store open (``_lock``: ``flock``, holder pid inside). Readers take no lock.

Writes go to one writer thread (``_sqlite_writer``: group commit, each row
fenced by its revision); reads run in Trio worker threads on read-only
connections of their own, which WAL lets read while the writer commits.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection
from typing import Final, ParamSpec, TypeVar, final

import trio

from .._core._codec import decode_instance
from .._core._errors import CorruptSnapshot
from .._core._model import Instance, Status
from . import _diskio
from ._errors import NotAStore
from ._lock import StoreLock
from ._protocol import QuarantineHandler, StorageBase, report_quarantine, status_filter
from ._rows import instance_row
from ._sqlite_schema import (
    HEADER,
    SchemaError,
    check_migratable,
    check_readable,
    migrate,
    user_version,
)
from ._sqlite_writer import Request, Writer, fault

_READ_THREADS: Final = 4
_BUSY_TIMEOUT_MS: Final = 10_000

_P = ParamSpec("_P")
_T = TypeVar("_T")


@final
class SQLiteStorage(StorageBase):
    """Every snapshot in one SQLite database file, written with group commit.

    Args:
        path: the database file; created (with its parent directories) on open
            unless ``read_only``. Relative paths are resolved once, here.
        durable: ``PRAGMA synchronous=FULL``: every commit fsyncs the WAL, so an
            acknowledged ``put`` survives a power loss. With ``durable=False``
            (``synchronous=NORMAL``) commits are not fsynced, only checkpoints
            are: a process crash still loses nothing and the database is never
            torn, but a power loss or kernel crash may roll back the latest
            acknowledged writes.
        read_only: take no lock, open the database ``mode=ro`` and refuse writes
            (``RuntimeError``); for looking at a store an engine has open,
            which works at any time (WAL: readers never block the writer).
        on_quarantine: called as ``on_quarantine(where, reason)`` for every
            snapshot that fails to decode (``where`` is ``path#id``); such a row
            is moved to the ``quarantine`` table (read-only: only reported) and
            treated as absent. If the handler raises, the error is logged.

    Writes (``put``, ``delete``) are queued to one writer thread, which commits
    everything queued in one transaction (``commits`` counts them): concurrent
    puts share one fsync. Each put returns only after its transaction has
    committed; a put whose batch failed raises ``OSError``. After an error that
    says the database may be damaged (``SQLITE_IOERR``, ``SQLITE_CORRUPT``, a
    failed fsync) the store refuses every write until it is reopened; a full
    disk (``SQLITE_FULL``) fails only the batch it hit.

    Opening takes the store's exclusive lock (``StorageLocked`` naming the
    holder if another process or storage object has it), then creates or
    migrates the schema.

    Raises:
        ValueError: for an empty ``path`` (here, in the constructor).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durable: bool = True,
        read_only: bool = False,
        on_quarantine: QuarantineHandler | None = None,
    ) -> None:
        if not os.fspath(path):
            raise ValueError("SQLiteStorage needs the path of its database file, not ''")
        self.path = os.path.abspath(os.fspath(path))
        self.durable = durable
        self.read_only = read_only
        self.on_quarantine = on_quarantine
        self._writer: Writer | None = None
        self._store_lock: StoreLock | None = None
        self._limiter: trio.CapacityLimiter | None = None
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._pooling = False
        self._pending = 0
        self._idle: trio.Event | None = None
        self._commits_before = 0

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"SQLiteStorage({self.path!r}, durable={self.durable}{mode})"

    @property
    def commits(self) -> int:
        """Transactions the writer committed since this object was created (tests, bench)."""
        writer = self._writer
        return self._commits_before + (0 if writer is None else writer.commits)

    # -- open / close -----------------------------------------------------------------

    async def _open(self) -> None:
        """Lock, create or migrate the database, start the writer (read-only: check it).

        Raises:
            StorageLocked: another process or storage object holds the store.
            FileNotFoundError: ``read_only`` and there is no file at ``path``.
            NotAStore: the file is not an SQLite database, or not a hephaestus
                store this release can use (a newer schema, foreign tables).
            OSError: the file cannot be created, locked or opened.
        """
        self._limiter = trio.CapacityLimiter(_READ_THREADS)
        self._idle = trio.Event()
        self._idle.set()
        self._pending = 0
        self._pooling = True
        if self.read_only:
            conn = await self._run(self._open_reader)
            self._give_back(conn)
            return
        token = trio.lowlevel.current_trio_token()
        self._store_lock = await self._run(self._prepare_and_lock)
        try:
            conn = await self._run(self._open_writer)
        except BaseException:
            await self._release_lock()
            raise
        self._writer = Writer(conn, token, repr(self))

    def _prepare_and_lock(self) -> StoreLock:
        """In a worker thread: create the parent directory (durably) and take the lock.

        Raises:
            StorageLocked: the lock is held elsewhere.
            OSError: the directory cannot be created or the lock file opened.
        """
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)
            if self.durable:
                _diskio.fsync_dir(os.path.dirname(parent))
        return StoreLock.acquire_file(self.path + ".lock", self.path)

    def _open_writer(self) -> sqlite3.Connection:
        """In a worker thread: create or open the database, set WAL and migrate it."""
        parent = os.path.dirname(self.path)
        created = not os.path.exists(self.path)
        if not created:
            _check_header(self.path)
        conn = self._connect(self.path, uri=False)
        try:
            check_migratable(conn, self.path, user_version(conn))  # before changing anything
            _use_wal(conn, self.path)
            conn.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
            migrate(conn, self.path)
            if created and self.durable:
                _diskio.fsync_dir(parent)  # the new file's directory entry
        except SchemaError as exc:
            conn.close()
            raise NotAStore(str(exc)) from None
        except sqlite3.DatabaseError as exc:
            conn.close()
            if getattr(exc, "sqlite_errorcode", None) == 26:
                raise NotAStore(f"{self.path!r} is not an SQLite database ({exc})") from None
            raise fault(exc, f"opening {self!r}")[0] from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_reader(self) -> sqlite3.Connection:
        """In a worker thread: open a read-only connection and check the schema."""
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"no store at {self.path!r}: the file does not exist")
        _check_header(self.path)
        uri = "file:" + urllib.parse.quote(self.path) + "?mode=ro"
        conn = self._connect(uri, uri=True)
        try:
            check_readable(conn, self.path)
        except SchemaError as exc:
            conn.close()
            raise NotAStore(str(exc)) from None
        except sqlite3.Error as exc:
            conn.close()
            raise fault(exc, f"opening {self!r}")[0] from exc
        return conn

    @staticmethod
    def _connect(target: str, *, uri: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            target,
            uri=uri,
            isolation_level=None,
            check_same_thread=False,
            timeout=_BUSY_TIMEOUT_MS / 1000,
        )
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        return conn

    async def _close(self) -> None:
        """Let queued writes commit, stop the writer, close connections, release the lock.

        Shielded from cancellation: the writes already queued are committed.
        """
        with trio.CancelScope(shield=True):
            if self._idle is not None:
                await self._idle.wait()
            with self._readers_lock:
                self._pooling = False
                readers, self._readers = self._readers, []
            for conn in readers:
                conn.close()
            writer, self._writer = self._writer, None
            if writer is not None:  # the last connection: SQLite checkpoints and drops the WAL
                self._commits_before += writer.commits
                await self._run(writer.stop)
            await self._release_lock()

    async def _release_lock(self) -> None:
        lock, self._store_lock = self._store_lock, None
        if lock is not None:
            await self._run(lock.release)

    # -- the Storage protocol -----------------------------------------------------------

    async def get(self, instance_id: str) -> Instance | None:
        """Return the stored instance, or None.

        A snapshot that fails to decode is quarantined (read-only: reported)
        and None is returned.

        Raises:
            OSError: when SQLite cannot read the database.
        """
        await trio.lowlevel.checkpoint()
        self._check_open()
        rows = await self._read("SELECT id, snapshot FROM instances WHERE id = ?", (instance_id,))
        found = await self._decode(rows)
        return found[0] if found else None

    async def put(self, instance: Instance, *, expected_revision: int | None = None) -> None:
        """Store ``instance``, replacing any earlier snapshot of its id.

        Returns once the transaction that carries it has committed (and, when
        ``durable``, the WAL is fsynced): the commit is shared with the puts
        queued beside it. Not cancellable once queued: a cancellation takes
        effect when its transaction has committed or failed (one commit at
        most), so a cancelled caller never takes a committed write for a
        failed one. A cancellation that arrives before the put is queued
        raises at once and stores nothing.

        Raises:
            RevisionConflict: when ``expected_revision`` is given and differs
                from the stored revision (0 when nothing is stored); only this
                put fails, the others in its transaction commit.
            OSError: when the transaction failed (disk full, I/O error...):
                nothing of it was stored. After an error that may have damaged
                the database every later write raises too, until reopened.
            RuntimeError: when the store is read-only or not open.
            ValueError: for an empty instance id, or text SQLite cannot store.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_writable()
        if not instance.id:
            raise ValueError("an instance id must not be empty")
        row = instance_row(instance, store="SQLite")
        await self._submit(Request("put", instance.id, row, expected_revision))

    async def delete(self, instance_id: str) -> None:
        """Remove the instance's snapshot; a missing id is not an error.

        Acknowledged after its transaction commits; cancellation as for ``put``.

        Raises:
            OSError: when the transaction failed.
            RuntimeError: when the store is read-only or not open.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_writable()
        await self._submit(Request("delete", instance_id, None, None))

    async def query(
        self,
        *,
        workflow: str | None = None,
        status: Status | Collection[Status] | None = None,
    ) -> list[Instance]:
        """Return the stored instances matching ``workflow`` and ``status``, ordered by id.

        Raises:
            ValueError: for a ``status`` that is not a Status.
            OSError: when SQLite cannot read the database.
        """
        return await self.query_page(workflow=workflow, status=status)

    async def query_page(
        self,
        *,
        workflow: str | None = None,
        status: Status | Collection[Status] | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[Instance]:
        """Return at most ``limit`` matching instances with ids greater than ``after``, by id.

        Answered in SQL from the ``(status, id)`` / ``(workflow, id)`` indexes:
        only the rows of the page are read and decoded.

        Raises:
            ValueError: for a ``status`` that is not a Status, or a negative ``limit``.
            OSError: when SQLite cannot read the database.
        """
        await trio.lowlevel.checkpoint()
        self._check_open()
        wanted = status_filter(status)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        if (wanted is not None and not wanted) or limit == 0:
            return []
        where: list[str] = []
        args: list[object] = []
        if workflow is not None:
            where.append("workflow = ?")
            args.append(workflow)
        if wanted is not None:
            where.append(f"status IN ({', '.join('?' * len(wanted))})")
            args.extend(sorted(s.value for s in wanted))
        if after is not None:
            where.append("id > ?")
            args.append(after)
        sql = "SELECT id, snapshot FROM instances"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return await self._decode(await self._read(sql, tuple(args)))

    # -- helpers ------------------------------------------------------------------------

    async def _submit(self, request: Request) -> None:
        """Queue ``request`` to the writer and wait, uncancellably, for its outcome."""
        writer = self._writer
        assert writer is not None
        assert self._idle is not None
        if trio.lowlevel.current_trio_token() is not writer.token:
            raise RuntimeError(
                f"{self!r} was opened in another trio.run: open and use it in the same one"
            )
        request.task = trio.lowlevel.current_task()
        if self._pending == 0:
            self._idle = trio.Event()
        self._pending += 1
        try:
            writer.submit(request)
            # Rescheduled by the writer's batch callback with the outcome, which
            # this returns or raises. Abort.FAILED: not cancellable once queued.
            await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        finally:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    async def _read(self, sql: str, args: tuple[object, ...]) -> list[tuple[str, bytes]]:
        return await self._run(self._read_sync, sql, args)

    def _read_sync(self, sql: str, args: tuple[object, ...]) -> list[tuple[str, bytes]]:
        """In a worker thread: run a SELECT on a pooled read-only connection."""
        with self._readers_lock:
            conn = self._readers.pop() if self._readers else None
        if conn is None:
            conn = self._open_reader()
        try:
            rows: list[tuple[str, bytes]] = conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            conn.close()
            error, damaged = fault(exc, f"reading {self!r}")
            if damaged and self._writer is not None:
                self._writer.failure = self._writer.failure or error
            raise error from exc
        self._give_back(conn)
        return rows

    def _give_back(self, conn: sqlite3.Connection) -> None:
        """Keep a read connection for the next read (close it if the store is closing)."""
        with self._readers_lock:
            if self._pooling:
                self._readers.append(conn)
                return
        conn.close()

    async def _decode(self, rows: list[tuple[str, bytes]]) -> list[Instance]:
        """Decode rows; quarantine (read-only: report) those that fail, and leave them out."""
        if len(rows) > 64:
            decoded = await self._run(_decode_rows, rows)
        else:
            decoded = _decode_rows(rows)
        result: list[Instance] = []
        for (iid, blob), item in zip(rows, decoded, strict=True):
            if isinstance(item, Instance):
                result.append(item)
                continue
            await self._quarantine(iid, blob, item)
        return result

    async def _quarantine(self, iid: str, blob: bytes, reason: str) -> None:
        where = f"{self.path}#{iid}"
        if self.read_only:
            report_quarantine(self.on_quarantine, where, f"{reason} (read-only: left in place)")
            return
        try:
            self._check_writable()
            await self._submit(Request("quarantine", iid, (blob, reason, time.time()), None))
        except (OSError, RuntimeError) as exc:
            reason = f"{reason}; could not move it to the quarantine table: {exc}"
        else:
            reason = f"{reason}; moved to the quarantine table"
        report_quarantine(self.on_quarantine, where, reason)

    def _check_writable(self) -> None:
        """Raise unless writes are allowed now.

        Raises:
            RuntimeError: the store is not open, or is read-only.
            OSError: an earlier error said the database may be damaged (reopen it).
        """
        self._check_open()
        if self.read_only:
            raise RuntimeError(f"{self!r} is read-only: it refuses writes")
        writer = self._writer
        failure = None if writer is None else writer.failure
        if failure is not None:
            raise OSError(
                failure.errno,
                f"{self!r} accepts no more writes: {failure.strerror}. Reopen the store "
                "(SQLite then recovers the database from its WAL)",
            ) from failure

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run blocking ``fn`` in a worker thread (not cancellable)."""
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)


def _use_wal(conn: sqlite3.Connection, path: str) -> None:
    """Switch the database to WAL mode (persistent in the file).

    Raises:
        OSError: SQLite refused (a file system without shared memory, say).
    """
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise OSError(f"SQLite refused WAL mode for {path!r} (journal_mode is {mode!r})")


def _check_header(path: str) -> None:
    """Raise NotAStore unless ``path`` is empty or starts with SQLite's header."""
    with open(path, "rb") as file:
        head = file.read(len(HEADER))
    if head and head != HEADER:
        raise NotAStore(f"{path!r} is not an SQLite database (its first bytes are {head[:16]!r})")


def _decode_rows(rows: list[tuple[str, bytes]]) -> list[Instance | str]:
    """Decode each row's snapshot; for a bad one, the reason instead."""
    out: list[Instance | str] = []
    for iid, blob in rows:
        try:
            instance = decode_instance(blob)
        except CorruptSnapshot as exc:
            out.append(str(exc))
            continue
        if instance.id != iid:
            out.append(f"the row of {iid!r} holds the snapshot of {instance.id!r}")
            continue
        out.append(instance)
    return out
