"""PostgresStorage: every snapshot in one PostgreSQL database, shared by any number of engines.

Sync psycopg 3 inside ``trio.to_thread.run_sync`` with the storage's own
``CapacityLimiter`` (psycopg's async API needs asyncio's loop and does not run
under Trio). Reads take a connection of a ``psycopg_pool.ConnectionPool``;
writes go to ``WRITERS`` writer threads, each with a connection of its own
and each id always to the same one (``_postgres_writer``: group commit, each
row fenced by its revision). The
schema lives in ``_postgres_schema`` and is created or migrated on open.

psycopg is imported when a PostgresStorage is made, not when hephaestus is:
it is the optional extra ``hephaestus-trio[postgres]``.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, final

import trio

from .._core._codec import decode_instance
from .._core._errors import CorruptSnapshot
from .._core._model import Instance, Status
from . import _postgres_admission as _admission
from . import _postgres_shared as _shared
from ._errors import NotAStore
from ._postgres_listen import SYNC_CHANNEL, Listener
from ._postgres_schema import SchemaError, check_readable, migrate
from ._postgres_shared import PutOwned
from ._postgres_writer import Delete, Put, Quarantine, Request, Writer, ended_by_server, fault
from ._protocol import QuarantineHandler, StorageBase, report_quarantine, status_filter
from ._rows import instance_row
from ._shared import (
    Appended,
    ClaimBatch,
    ClaimOne,
    Consumed,
    Heartbeat,
    InboxRequest,
    InboxRow,
    Lease,
    LeaseLost,
    Notification,
    Refused,
)

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

_CONNECT_TIMEOUT_S: Final = 10
WRITERS: Final = 1
"""Writer threads (each with its connection), each group-committing its own batches.

An instance id always goes to the same writer, so the writes of one instance
keep their order and two writers never lock the same rows. One: with two,
batches were smaller and throughput no better here (the commit's WAL flush
bounds it, and one writer already overlaps it with filling the next batch)."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


EXTRA_HINT: Final = "pip install 'hephaestus-trio[postgres]'"


def _modules() -> tuple[Any, Any]:
    """Import psycopg and psycopg_pool, or say which extra brings them.

    Raises:
        ImportError: either is missing; the message names the extra.
    """
    try:
        return importlib.import_module("psycopg"), importlib.import_module("psycopg_pool")
    except ImportError as exc:
        raise ImportError(
            f"PostgresStorage needs psycopg 3 and psycopg_pool ({exc.name} is not installed): "
            f"{EXTRA_HINT}"
        ) from exc


def redact(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***`` (for messages and ``repr``)."""
    dsn = re.sub(r"(://[^:/@?#]*:)[^@/?#]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn, flags=re.I)


def is_postgres_dsn(text: str) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` URL (what ``--store`` recognises)."""
    return text.startswith(("postgresql://", "postgres://"))


@final
class PostgresStorage(StorageBase):
    """Every snapshot in one PostgreSQL database; any number of engine processes share it.

    Args:
        dsn: a libpq connection string (``postgresql://user@host/db`` or
            ``host=... dbname=...``). The database must exist; the storage
            creates its tables (``hx_*``) on first open and migrates them.
        pool_size: connections for reads and lease calls (and the worker
            threads that use them, bounded by the storage's own
            ``CapacityLimiter``); the writers and the LISTEN thread use
            connections of their own (``WRITERS`` + 1 more).
        lease_ttl: seconds an engine's lease on its instances lasts without
            a heartbeat, for the shared runtime (see DESIGN.md "Scale-out").
        read_only: create nothing, refuse writes (``RuntimeError``); opening
            a database without a store raises ``NotAStore``. What ``hephaestus
            list`` and ``show`` use.
        on_quarantine: called as ``on_quarantine(where, reason)`` for every
            snapshot that fails to decode; such a row is moved to
            ``hx_quarantine`` and treated as absent.

    Writes (``put``, ``delete``, ``put_owned``) are queued to the writer
    thread of their instance id, which sends everything queued as one
    pipelined transaction: concurrent puts share one commit. Each put returns
    only after its transaction has committed. The store implements
    ``SharedStorage`` as well: any number of engine processes may use one
    database at once.

    Raises:
        ImportError: psycopg or psycopg_pool is not installed (names the extra).
        ValueError: for an empty ``dsn``, ``pool_size < 1`` or ``lease_ttl <= 0``.
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 8,
        lease_ttl: float = 10.0,
        read_only: bool = False,
        on_quarantine: QuarantineHandler | None = None,
    ) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise ValueError("PostgresStorage needs a connection string (dsn), not " + repr(dsn))
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        if (
            isinstance(lease_ttl, bool)
            or not isinstance(lease_ttl, int | float)
            or not lease_ttl > 0
            or lease_ttl == float("inf")
        ):
            raise ValueError(f"lease_ttl must be a number of seconds > 0, got {lease_ttl!r}")
        self._psycopg, self._psycopg_pool = _modules()
        self.dsn = dsn
        self.pool_size = pool_size
        self.lease_ttl = float(lease_ttl)
        self.read_only = read_only
        self.on_quarantine = on_quarantine
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._writers: list[Writer] = []
        self._limiter: trio.CapacityLimiter | None = None
        self._pending = 0
        self._idle: trio.Event | None = None
        self._commits_before = 0
        self._listener: Listener | None = None
        self._renewed_at = time.monotonic()
        """When (``time.monotonic``) a lease was last registered or renewed."""
        self.clock_skew = 0.0
        """Seconds added to the database clock in every lease and due-timer test (tests only)."""

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"PostgresStorage({redact(self.dsn)!r}{mode})"

    @property
    def commits(self) -> int:
        """Transactions the writers committed since this object was created (tests, bench)."""
        return self._commits_before + sum(w.commits for w in self._writers)

    # -- open / close -----------------------------------------------------------------

    async def _open(self) -> None:
        """Connect, create or migrate the schema (read-only: check it), start the writer.

        Raises:
            OSError: the server cannot be reached or refused the connection
                (the message is PostgreSQL's, the password redacted).
            NotAStore: the schema is newer than this release, or (read-only)
                the database holds no store.
        """
        self._limiter = trio.CapacityLimiter(self.pool_size)
        self._idle = trio.Event()
        self._idle.set()
        self._pending = 0
        await self._run(self._prepare)
        pool = self._psycopg_pool.ConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": _CONNECT_TIMEOUT_S},
            configure=self._configure,
            # No check= : _connection() looks at each connection it takes (no round trip,
            # and no backoff sleep when it finds one the server ended).
            name=f"hephaestus {redact(self.dsn)}",
        )
        await self._run(pool.open, wait=False)
        self._pool = pool
        if not self.read_only:
            token = trio.lowlevel.current_trio_token()
            self._writers = [Writer(self.connect, token, f"{self!r} #{n}") for n in range(WRITERS)]

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        """A new autocommit connection to the store's database (blocking; own it, close it).

        Raises:
            OSError: the server cannot be reached or refused the connection.
        """
        try:
            conn: psycopg.Connection[tuple[Any, ...]] = self._psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S
            )
        except self._psycopg.Error as exc:
            raise OSError(
                f"cannot connect to PostgreSQL at {redact(self.dsn)!r}: "
                f"{str(exc).strip() or type(exc).__name__}"
            ) from None
        try:
            self._configure(conn)
        except self._psycopg.Error as exc:
            conn.close()
            raise fault(exc, f"configuring a connection of {self!r}") from exc
        return conn

    def _configure(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        """Settings of every connection of the store (blocking).

        ``idle_in_transaction_session_timeout`` is one lease TTL: our
        transactions last milliseconds, so one open longer belongs to a
        process that was paused (SIGSTOP, a VM freeze) in the middle of it.
        PostgreSQL then ends that session, so its row locks do not keep other
        engines from taking over its instances; its commit fails, and the
        fence would have refused its writes anyway.
        """
        timeout_ms = max(1_000, int(self.lease_ttl * 1_000))
        conn.execute(f"SET idle_in_transaction_session_timeout = {timeout_ms}".encode())

    def _prepare(self) -> None:
        """In a worker thread: connect once, then migrate the schema or (read-only) check it."""
        conn = self.connect()
        try:
            if self.read_only:
                check_readable(conn, f"the database at {redact(self.dsn)!r}")
            else:
                migrate(conn, f"the database at {redact(self.dsn)!r}")
        except SchemaError as exc:
            raise NotAStore(str(exc)) from None
        except self._psycopg.Error as exc:
            raise fault(exc, f"opening {self!r}") from exc
        finally:
            conn.close()

    async def _close(self) -> None:
        """Let queued writes commit, stop the writer, close the pool.

        Shielded from cancellation: the writes already queued are committed.
        """
        with trio.CancelScope(shield=True):
            if self._idle is not None:
                await self._idle.wait()
            writers, self._writers = self._writers, []
            for writer in writers:
                self._commits_before += writer.commits
                await self._run(writer.stop)
            listener, self._listener = self._listener, None
            if listener is not None:
                await self._run(listener.stop)
            pool, self._pool = self._pool, None
            if pool is not None:
                await self._run(pool.close)

    # -- the Storage protocol -----------------------------------------------------------

    async def get(self, instance_id: str) -> Instance | None:
        """Return the stored instance, or None.

        A snapshot that fails to decode is quarantined and None is returned.

        Raises:
            OSError: the database cannot be read (connection lost...).
        """
        await trio.lowlevel.checkpoint()
        self._check_open()
        if not _storable(instance_id):
            return None  # no stored id holds NUL or a lone surrogate
        rows = await self._read(
            "SELECT id, snapshot FROM hx_instances WHERE id = %s", (instance_id,)
        )
        found = await self._decode(rows)
        return found[0] if found else None

    async def put(self, instance: Instance, *, expected_revision: int | None = None) -> None:
        """Store ``instance``, replacing any earlier snapshot of its id.

        Returns once the transaction that carries it has committed; the commit
        is shared with the puts queued beside it. Not cancellable once queued
        (a cancellation takes effect when its transaction has committed or
        failed); a cancellation before that raises at once and stores nothing.

        Raises:
            RevisionConflict: when ``expected_revision`` is given and differs
                from the stored revision (0 when nothing is stored); only this
                put fails, the others in its transaction commit.
            OSError: the transaction failed: nothing of it was stored (or, for
                a connection lost during COMMIT, it is unknown whether it was).
            RuntimeError: when the store is read-only or not open.
            ValueError: for an empty instance id, or text PostgreSQL cannot
                store (NUL characters, lone surrogates).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_writable()
        if not instance.id:
            raise ValueError("an instance id must not be empty")
        row = instance_row(instance, store="PostgreSQL", forbid_nul=True)
        await self._submit(Request(Put(row, expected_revision)))

    async def delete(self, instance_id: str) -> None:
        """Remove the instance's snapshot; a missing id is not an error.

        Acknowledged after its transaction commits; cancellation as for ``put``.

        Raises:
            OSError: when the transaction failed.
            RuntimeError: when the store is read-only or not open.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_writable()
        if not _storable(instance_id):
            return
        await self._submit(Request(Delete(instance_id)))

    async def query(
        self,
        *,
        workflow: str | None = None,
        status: Status | Collection[Status] | None = None,
    ) -> list[Instance]:
        """Return the stored instances matching ``workflow`` and ``status``, ordered by id.

        Raises:
            ValueError: for a ``status`` that is not a Status.
            OSError: the database cannot be read.
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
        only the rows of the page are read and decoded. Ids compare by code
        point (``COLLATE "C"``), as Python's ``sorted`` orders them.

        Raises:
            ValueError: for a ``status`` that is not a Status, or a negative ``limit``.
            OSError: the database cannot be read.
        """
        await trio.lowlevel.checkpoint()
        self._check_open()
        wanted = status_filter(status)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        if (wanted is not None and not wanted) or limit == 0:
            return []
        if workflow is not None and not _storable(workflow):
            return []
        where: list[str] = []
        args: list[object] = []
        if workflow is not None:
            where.append("workflow = %s")
            args.append(workflow)
        if wanted is not None:
            where.append("status = ANY(%s)")
            args.append(sorted(s.value for s in wanted))
        if after is not None:
            where.append("id > %s")
            args.append(_comparable(after))
        sql = "SELECT id, snapshot FROM hx_instances"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        return await self._decode(await self._read(sql, tuple(args)))

    # -- SharedStorage: engines and leases ----------------------------------------------

    async def register(self, engine_id: str) -> Lease:
        """Start a new epoch for ``engine_id``; its lease is live for ``lease_ttl`` from now.

        Raises:
            OSError: the database cannot be reached.
            RuntimeError: the store is not open, or read-only.
        """
        self._check_writable()
        _check_text("engine id", engine_id)
        lease = await self._call(_shared.register, engine_id, self.lease_ttl, self.clock_skew)
        self._renewed_at = time.monotonic()
        return lease

    async def heartbeat(self, lease: Lease) -> Heartbeat:
        """Renew ``lease`` by the database clock, or start a new epoch if it expired.

        A renewal that comes more than half a TTL after the last one (this
        process was paused, or cut off), or finds the lease expired, checks
        every pooled connection and replaces those the server ended
        meanwhile, before the new epoch serves anything (the writers look at
        their own connection before each batch).

        Raises:
            OSError: the database cannot be reached.
        """
        self._check_writable()
        late = time.monotonic() - self._renewed_at > self.lease_ttl / 2
        if late:
            await self._check_pool()
        beat = await self._call(_shared.heartbeat, lease, self.lease_ttl, self.clock_skew)
        self._renewed_at = time.monotonic()
        if beat.expired and not late:
            await self._check_pool()
        return beat

    async def _check_pool(self) -> None:
        """Replace the pooled connections the server has ended (a round trip each)."""
        pool = self._pool
        if pool is not None:
            await self._run(pool.check)

    async def release_engine(self, lease: Lease) -> None:
        """Expire ``lease`` and unown its instances (``Runnable`` if any has work).

        Raises:
            OSError: the database cannot be reached.
        """
        self._check_writable()
        await self._call(_shared.release_engine, lease, self.clock_skew)

    # -- SharedStorage: claims and ownership ----------------------------------------------

    async def claim(
        self,
        lease: Lease,
        *,
        limit: int,
        runs: Collection[tuple[str, int]] | None = None,
    ) -> ClaimBatch:
        """Claim at most ``limit`` instances with work and no live owner, by id.

        One transaction: the lease is checked, then candidates are locked with
        ``FOR UPDATE ... SKIP LOCKED`` (another claimer's rows are skipped,
        never waited for) and tested with a correlated ``NOT EXISTS`` of a
        live owner. A claimed snapshot that fails to decode is quarantined
        (``on_quarantine``) and left out, as ``get`` does. With ``runs``, only
        rows of those ``(workflow, version)`` pairs are candidates; the others
        with work are listed in ``unrunnable``.

        Raises:
            LeaseLost: ``lease`` is not live.
            ValueError: ``limit < 1``.
            OSError: the database cannot be reached.
        """
        self._check_writable()
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        if runs is None:
            batch, bad = await self._call(_shared.claim, lease, limit, self.clock_skew)
        else:
            batch, bad = await self._call(
                _shared.claim,
                lease,
                limit,
                self.clock_skew,
                _admission.run_args(runs),
                _admission.unrunnable,
            )
        self._report_bad(bad)
        return batch

    async def claim_instance(self, lease: Lease, instance_id: str) -> ClaimOne:
        """Claim ``instance_id`` unless another live lease holds it (see SharedStorage).

        Raises:
            LeaseLost: ``lease`` is not live.
            OSError: the database cannot be reached.
        """
        self._check_writable()
        if not _storable(instance_id):
            return ClaimOne()
        one, bad = await self._call(_shared.claim_instance, lease, instance_id, self.clock_skew)
        self._report_bad(bad)
        return one

    async def owner_of(self, instance_id: str) -> Lease | None:
        """The live lease holding ``instance_id``, or None.

        Raises:
            OSError: the database cannot be reached.
        """
        self._check_open()
        if not _storable(instance_id):
            return None
        return await self._call(_shared.owner_of, instance_id, self.clock_skew)

    async def release_instances(self, lease: Lease, instance_ids: Sequence[str]) -> None:
        """Unown each of ``instance_ids`` that ``lease`` owns (``Runnable`` if any has work).

        Raises:
            OSError: the database cannot be reached.
        """
        self._check_writable()
        ids = [i for i in instance_ids if _storable(i)]
        if ids:
            await self._call(_shared.release_instances, lease, ids, self.clock_skew)

    # -- SharedStorage: the fenced write and the inbox ------------------------------------

    async def put_owned(
        self,
        lease: Lease,
        instance: Instance,
        *,
        expected_revision: int,
        release: bool = False,
        consumed: Sequence[Consumed] = (),
    ) -> None:
        """Store ``instance`` if ``lease`` owns it at ``expected_revision`` (the fenced write).

        Group-committed with this store's other writes. In its transaction:
        the inbox rows in ``consumed`` are marked with their answers and their
        senders notified (``Replied``), a terminal instance is broadcast
        (``Finished``), a released one with work left sends ``Runnable``.
        Cancellation as for ``put``.

        Raises:
            LeaseLost: the row is owned by another lease or by nobody, or is
                gone (``expected_revision`` > 0). Nothing is stored.
            RevisionConflict: owned by ``lease`` at another revision, or it
                exists although ``expected_revision`` is 0. Nothing is stored.
            OSError: the transaction failed.
            ValueError: text PostgreSQL cannot store (see ``put``).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_writable()
        if not instance.id:
            raise ValueError("an instance id must not be empty")
        op = PutOwned(
            lease,
            instance_row(instance, store="PostgreSQL", forbid_nul=True),
            expected=expected_revision,
            release=release,
            consumed=consumed,
            terminal=instance.status.is_terminal,
        )
        await self._submit(Request(op))

    async def put_limited(
        self,
        lease: Lease,
        instance: Instance,
        *,
        expected_revision: int,
        max_active: int,
        release: bool = False,
        consumed: Sequence[Consumed] = (),
    ) -> None:
        """The fenced write of a ``max_active`` workflow's instance and its slot: one transaction.

        Not group-committed: it runs on a pooled connection, under the lock of
        the workflow's ``hx_admission`` row (see ``SharedStorage.put_limited``
        and ``_postgres_admission``). A cancelled caller may or may not have
        its write committed, as for ``put``.

        Raises:
            LeaseLost, RevisionConflict: as :meth:`put_owned`; nothing is stored.
            AdmissionFull: the instance would take a slot and none is free.
            OSError: the transaction failed.
            ValueError: text PostgreSQL cannot store, or ``max_active < 1``.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_writable()
        if not instance.id:
            raise ValueError("an instance id must not be empty")
        if isinstance(max_active, bool) or not isinstance(max_active, int) or max_active < 1:
            raise ValueError(f"max_active must be >= 1, got {max_active!r}")
        row = instance_row(instance, store="PostgreSQL", forbid_nul=True)
        await self._run(
            self._call_sync,
            _admission.put_limited,
            (lease, instance, row),
            {
                "expected": expected_revision,
                "max_active": max_active,
                "release": release,
                "consumed": tuple(consumed),
            },
        )

    async def admit_pending(self, workflow: str, *, max_active: int) -> int:
        """Give free slots of ``workflow`` to its queue, first in first; return how many.

        Raises:
            OSError: the transaction failed.
            ValueError: ``max_active < 1``.
        """
        self._check_writable()
        if isinstance(max_active, bool) or not isinstance(max_active, int) or max_active < 1:
            raise ValueError(f"max_active must be >= 1, got {max_active!r}")
        if not _storable(workflow):
            return 0
        return await self._call(_admission.admit_pending, workflow, max_active)

    async def admission_limit(self, workflow: str) -> int | None:
        """The ``max_active`` the last change of ``workflow``'s slots counted against, or None.

        Raises:
            OSError: the database cannot be reached.
        """
        self._check_open()
        if not _storable(workflow):
            return None
        limit: int | None = await self._call(_admission.admission_limit, workflow)
        return limit

    async def answer_requests(
        self, lease: Lease, instance_id: str, consumed: Sequence[Consumed]
    ) -> None:
        """Mark inbox rows of ``instance_id`` consumed with their answers (the first one stays).

        Raises:
            LeaseLost: ``lease`` does not own ``instance_id``; nothing is marked.
            OSError: the database cannot be reached.
        """
        self._check_writable()
        if not _storable(instance_id):
            raise LeaseLost(f"instance {instance_id!r} is no longer stored")
        await self._call(_shared.answer_requests, lease, instance_id, tuple(consumed))

    async def append_request(self, request: InboxRequest) -> Appended:
        """Append ``request`` to its instance's inbox once per request id; wake the owner.

        Raises:
            OSError: the database cannot be reached.
            ValueError: an instance or request id PostgreSQL cannot store.
        """
        self._check_writable()
        for what, text in (
            ("request id", request.request_id),
            ("sender", request.sender),
        ):
            _check_text(what, text)
        if not _storable(request.instance_id):
            iid = request.instance_id
            refused = Refused(error="InstanceNotFound", message=f"no instance {iid!r}")
            return Appended(row=InboxRow(request=request, seq=0, consumed=True, answer=refused))
        return await self._call(_shared.append_request, request, self.clock_skew)

    async def pending_requests(self, instance_id: str) -> list[InboxRow]:
        """The unconsumed inbox rows of ``instance_id``, by ``seq``.

        Raises:
            OSError: the database cannot be reached.
        """
        self._check_open()
        if not _storable(instance_id):
            return []
        return await self._call(_shared.pending_requests, instance_id)

    async def pending_instances(self, lease: Lease) -> list[str]:
        """Ids of the instances ``lease`` owns that have unconsumed inbox rows (the owner's poll).

        Answered from the partial index of pending rows.

        Raises:
            OSError: the database cannot be reached.
        """
        self._check_open()
        return await self._call(_shared.pending_instances, lease)

    async def get_request(self, instance_id: str, request_id: str) -> InboxRow | None:
        """The inbox row ``(instance_id, request_id)``, consumed or not, or None.

        Raises:
            OSError: the database cannot be reached.
        """
        self._check_open()
        if not (_storable(instance_id) and _storable(request_id)):
            return None
        return await self._call(_shared.get_request, instance_id, request_id)

    # -- SharedStorage: notifications -----------------------------------------------------

    async def notify(self, note: Notification) -> None:
        """Send ``note`` now (``pg_notify``), to its engine or to every listener.

        Raises:
            OSError: the database cannot be reached.
        """
        self._check_open()
        await self._call(_shared.notify, note)

    def listen(
        self, engine_id: str
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[Notification]]:
        """Subscribe ``engine_id`` to its notifications and the broadcasts.

        One LISTEN connection per store serves every subscription of this
        process. Entering returns once the database listens for it.
        """
        self._check_open()
        listener = self._listener
        if listener is None:
            listener = self._listener = Listener(
                self.connect, self._notify_sync, trio.lowlevel.current_trio_token(), repr(self)
            )
        return listener.subscribe(engine_id)

    async def flush_notifications(self) -> bool:
        """Wait until notifications committed before this call reached the subscribers.

        For tests: a round trip through the database on the listener's
        connection. False when nothing listens (or it timed out).
        """
        listener = self._listener
        return False if listener is None else await listener.flush()

    def _notify_sync(self, marker: str) -> None:
        with self._connection() as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (SYNC_CHANNEL, marker))

    # -- helpers ------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn(conn, *args)`` on a pooled connection in a worker thread.

        Raises:
            OSError: for an error of PostgreSQL or of the connection (what
                ``fn`` raises otherwise passes through: LeaseLost...).
        """
        await trio.lowlevel.checkpoint()
        return await self._run(self._call_sync, fn, args)

    def _call_sync(
        self,
        fn: Callable[..., _T],
        args: tuple[object, ...],
        kwargs: dict[str, object] | None = None,
    ) -> _T:
        try:
            with self._connection() as conn:
                return fn(conn, *args, **(kwargs or {}))
        except (self._psycopg.Error, self._psycopg_pool.PoolTimeout) as exc:
            raise fault(exc, f"{getattr(fn, '__name__', 'a call')} on {self!r}") from exc

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """A pooled connection, given back to the pool afterwards (blocking).

        A pooled connection the server ended while it sat in the pool (a
        restart, or an idle timeout while this process was paused) is
        dropped and the next one taken, before anything is sent on it.

        Raises:
            RuntimeError: the store is not open.
            psycopg_pool.PoolTimeout: no live connection within the timeout.
        """
        pool = self._pool
        if pool is None:
            raise RuntimeError(f"{self!r} is not open")
        deadline = time.monotonic() + _CONNECT_TIMEOUT_S * 3
        while True:
            conn = pool.getconn(timeout=max(0.0, deadline - time.monotonic()))
            if not ended_by_server(conn):
                break
            conn.close()
            pool.putconn(conn)  # closed: the pool discards it and opens another
        try:
            with conn:
                yield conn
        finally:
            pool.putconn(conn)

    async def _submit(self, request: Request) -> Any:
        """Queue ``request`` to its id's writer and wait, uncancellably, for its outcome."""
        writers = self._writers
        assert writers
        writer = writers[hash(request.op.instance_id) % len(writers)]
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
            return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        finally:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    async def _read(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        return await self._run(self._read_sync, sql, args)

    def _read_sync(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        """In a worker thread: run a SELECT on a pooled connection.

        Raises:
            OSError: the pool has no connection for us in time, or the query failed.
        """
        # A pooled connection cut without a word fails once and leaves the pool; a
        # read is safe to repeat, so try the next one (all may be stale).
        for attempt in range(self.pool_size + 1):
            conn: psycopg.Connection[tuple[Any, ...]] | None = None
            try:
                with self._connection() as conn:
                    rows: list[tuple[Any, ...]] = conn.execute(sql.encode(), args).fetchall()
            except self._psycopg.OperationalError as exc:
                if attempt < self.pool_size and conn is not None and conn.closed:
                    continue
                raise fault(exc, f"reading {self!r}") from exc
            except (self._psycopg.Error, self._psycopg_pool.PoolTimeout) as exc:
                raise fault(exc, f"reading {self!r}") from exc
            return rows
        raise AssertionError("unreachable")  # pragma: no cover

    async def _decode(self, rows: list[tuple[Any, ...]]) -> list[Instance]:
        """Decode rows; quarantine those that fail, and leave them out."""
        if len(rows) > 64:
            decoded = await self._run(_decode_rows, rows)
        else:
            decoded = _decode_rows(rows)
        result: list[Instance] = []
        for (iid, blob), item in zip(rows, decoded, strict=True):
            if isinstance(item, Instance):
                result.append(item)
                continue
            await self._quarantine(iid, bytes(blob), item)
        return result

    async def _quarantine(self, iid: str, blob: bytes, reason: str) -> None:
        where = f"{redact(self.dsn)}#{iid}"
        if self.read_only:
            report_quarantine(self.on_quarantine, where, f"{reason} (read-only: left in place)")
            return
        try:
            self._check_writable()
            await self._submit(Request(Quarantine(iid, blob, reason, time.time())))
        except (OSError, RuntimeError) as exc:
            reason = f"{reason}; could not move it to the quarantine table: {exc}"
        else:
            reason = f"{reason}; moved to the hx_quarantine table"
        report_quarantine(self.on_quarantine, where, reason)

    def _report_bad(self, bad: Sequence[tuple[str, str]]) -> None:
        for iid, reason in bad:
            report_quarantine(
                self.on_quarantine,
                f"{redact(self.dsn)}#{iid}",
                f"{reason}; moved to the hx_quarantine table",
            )

    def _check_writable(self) -> None:
        """Raise unless writes are allowed now.

        Raises:
            RuntimeError: the store is not open, or is read-only.
        """
        self._check_open()
        if self.read_only:
            raise RuntimeError(f"{self!r} is read-only: it refuses writes")

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run blocking ``fn`` in a worker thread (not cancellable)."""
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)


def _storable(text: str) -> bool:
    """True when PostgreSQL can hold ``text`` (no NUL, valid UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(what: str, text: str) -> None:
    """Raise ValueError unless PostgreSQL can store ``text``."""
    if not isinstance(text, str) or not text or not _storable(text):
        raise ValueError(
            f"the {what} {text!r} cannot be stored in PostgreSQL: use a non-empty string "
            "without NUL characters or lone surrogates"
        )


def _comparable(after: str) -> str:
    """``after`` as PostgreSQL can compare it, with the same answer for every storable id.

    No stored id holds NUL, so "id > 'a\\x00b'" is "id > 'a'"; a lone
    surrogate (not storable) becomes U+FFFD, which sorts within a hair of it.
    """
    cut = after.split("\x00", 1)[0]
    return cut.encode("utf-8", "replace").decode("utf-8")


def _decode_rows(rows: list[tuple[Any, ...]]) -> list[Instance | str]:
    """Decode each row's snapshot; for a bad one, the reason instead."""
    out: list[Instance | str] = []
    for iid, blob in rows:
        try:
            instance = decode_instance(bytes(blob))
        except CorruptSnapshot as exc:
            out.append(str(exc))
            continue
        if instance.id != iid:
            out.append(f"the row of {iid!r} holds the snapshot of {instance.id!r}")
            continue
        out.append(instance)
    return out
