"""MemorySharedStorage: a SharedStorage in this process, so several engines share one trio run.

It keeps what a SQL store keeps in tables (engines, instances with their
owner, the inbox) in dicts, and reads its "database clock" from the ``clock``
it is given: pass the engines' ``hx.testing.VirtualClock()`` and, under
trio's ``MockClock(autojump_threshold=0)``, leases expire and timers fall due
in virtual time. Every method checkpoints once and then does its whole job
without yielding, so each call is one atomic transaction, as in PostgreSQL.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import itertools
import math
import time
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, Protocol, final

import trio

from .._core._admission import holds_slot
from .._core._codec import decode_instance, encode_instance
from .._core._errors import RevisionConflict
from .._core._model import Instance, Status
from ._protocol import StorageBase, status_filter
from ._shared import (
    AdmissionFull,
    Appended,
    ClaimBatch,
    Claimed,
    ClaimOne,
    Consumed,
    Finished,
    Heartbeat,
    InboxRequest,
    InboxRow,
    Lease,
    LeaseLost,
    Notification,
    Refused,
    Replied,
    Runnable,
    Unrunnable,
    Wake,
    admission_full,
    next_deadline,
)


class _Clock(Protocol):
    def now(self) -> float: ...


class _WallClock:
    def now(self) -> float:
        return time.time()


_BUFFER: Final = 10_000
"""Notifications a subscriber may fall behind by before newer ones are dropped for it."""


class _Row:
    """One instance row: the encoded snapshot and the columns a SQL store indexes."""

    __slots__ = (
        "blob",
        "next_deadline",
        "owner",
        "queue",
        "revision",
        "slot",
        "status",
        "version",
        "workflow",
    )

    def __init__(
        self,
        instance: Instance,
        owner: Lease | None,
        slot: bool = False,
        queue: tuple[int, float, str] | None = None,
    ) -> None:
        self.blob = encode_instance(instance)
        self.workflow = instance.workflow
        self.version = instance.version
        self.status = instance.status
        self.revision = instance.revision
        self.next_deadline = next_deadline(instance)
        self.owner = owner
        self.slot = slot
        """The admission slot flag (``put_limited``); it counts while the row is not terminal."""
        self.queue = queue if queue is not None else (1, instance.created_at, instance.id)
        """The row's place in its workflow's admission queue while it is PENDING: the order
        ``put_limited`` stored it PENDING in, first (rows stored PENDING otherwise go last)."""

    @property
    def holds_slot(self) -> bool:
        return self.slot and not self.status.is_terminal

    @property
    def queued(self) -> bool:
        return self.status is Status.PENDING and not self.slot


@final
class MemorySharedStorage(StorageBase):
    """A :class:`SharedStorage` and :class:`Storage` kept in memory, for tests.

    Args:
        clock: the store's clock (``now() -> float``, epoch seconds): lease
            expiry and due timers are judged by it. Give it the engines' clock.
        lease_ttl: seconds a lease stays live after its last heartbeat.

    Like :class:`MemoryStorage`, the data outlives ``aclose()``, so reopening
    the object, or handing it to another ``open_engine``, is a process restart.
    """

    def __init__(self, *, clock: _Clock | None = None, lease_ttl: float = 10.0) -> None:
        if not lease_ttl > 0:
            raise ValueError(f"lease_ttl must be a number of seconds > 0, got {lease_ttl!r}")
        self._clock: _Clock = clock if clock is not None else _WallClock()
        self._ttl = float(lease_ttl)
        self._rows: dict[str, _Row] = {}
        self._sorted: list[str] | None = None
        self._engines: dict[str, tuple[int, float]] = {}
        """engine id -> (epoch, heartbeat_at)."""
        self._inbox: dict[str, dict[str, InboxRow]] = {}
        """instance id -> request id -> row (insertion order is seq order)."""
        self._seq = itertools.count(1)
        self._queued = itertools.count(1)
        """The admission queue's order: one more for every instance stored PENDING."""
        self._limits: dict[str, int] = {}
        """workflow name -> the max_active of the last change of its slots."""
        self.fenced_writes = 0
        """How many fenced writes were refused with LeaseLost (a test control)."""
        self._subscribers: dict[int, tuple[str, trio.MemorySendChannel[Notification]]] = {}
        self._next_subscriber = itertools.count()

    @property
    def lease_ttl(self) -> float:
        """Seconds a lease stays live after its last heartbeat."""
        return self._ttl

    def now(self) -> float:
        """The store's clock."""
        return self._clock.now()

    # --- Storage ------------------------------------------------------------------------------

    async def get(self, instance_id: str) -> Instance | None:
        """Return the stored instance, or None."""
        await self._enter()
        row = self._rows.get(instance_id)
        return None if row is None else decode_instance(row.blob)

    async def put(self, instance: Instance, *, expected_revision: int | None = None) -> None:
        """Store ``instance`` unfenced by ownership; the owner column stays as it is.

        Raises:
            RevisionConflict: when ``expected_revision`` differs from the stored one.
        """
        await self._enter()
        row = self._rows.get(instance.id)
        if expected_revision is not None:
            self._check_revision(instance.id, row, expected_revision)
        self._write(instance, None if row is None else row.owner)

    async def delete(self, instance_id: str) -> None:
        """Remove the instance and its inbox rows; a missing id is not an error."""
        await self._enter()
        self._inbox.pop(instance_id, None)
        if self._rows.pop(instance_id, None) is not None:
            self._sorted = None

    async def query(
        self,
        *,
        workflow: str | None = None,
        status: Status | Collection[Status] | None = None,
    ) -> list[Instance]:
        """Return the stored instances matching ``workflow`` and ``status``, ordered by id."""
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

        Raises:
            ValueError: for a ``status`` that is not a Status, or a negative ``limit``.
        """
        await self._enter()
        wanted = status_filter(status)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        ids = self._ids()
        start = 0 if after is None else bisect.bisect_right(ids, after)
        page: list[Instance] = []
        for iid in itertools.islice(ids, start, None):
            if limit is not None and len(page) >= limit:
                break
            row = self._rows[iid]
            if (workflow is None or row.workflow == workflow) and (
                wanted is None or row.status in wanted
            ):
                page.append(decode_instance(row.blob))
        return page

    # --- engines ------------------------------------------------------------------------------

    async def register(self, engine_id: str) -> Lease:
        """Start a new epoch for ``engine_id`` (see :meth:`SharedStorage.register`)."""
        await self._enter()
        return self._new_epoch(engine_id)

    async def heartbeat(self, lease: Lease) -> Heartbeat:
        """Renew ``lease``, or start a new epoch when it is no longer live."""
        await self._enter()
        now = self.now()
        if self._is_live(lease, now):
            self._engines[lease.engine_id] = (lease.epoch, now)
            return Heartbeat(lease=lease, expired=False, expires_at=now + self._ttl)
        fresh = self._new_epoch(lease.engine_id)
        return Heartbeat(lease=fresh, expired=True, expires_at=now + self._ttl)

    async def release_engine(self, lease: Lease) -> None:
        """Expire ``lease``'s engine row and unown its instances."""
        await self._enter()
        current = self._engines.get(lease.engine_id)
        if current is not None and current[0] == lease.epoch:
            self._engines[lease.engine_id] = (lease.epoch, -math.inf)
        released = [iid for iid, row in self._rows.items() if row.owner == lease]
        self._release(released)

    # --- claims -------------------------------------------------------------------------------

    async def claim(
        self,
        lease: Lease,
        *,
        limit: int,
        runs: Collection[tuple[str, int]] | None = None,
    ) -> ClaimBatch:
        """Claim at most ``limit`` unheld instances with work (see :meth:`SharedStorage.claim`).

        With ``runs``, only instances of those ``(workflow, version)`` pairs;
        the others with work are reported in ``unrunnable``.

        Raises:
            LeaseLost: when ``lease`` is not live.
            ValueError: for ``limit < 1``.
        """
        await self._enter()
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        now = self.now()
        self._check_live(lease, now)
        wanted = None if runs is None else frozenset(runs)
        claimed: list[Claimed] = []
        unrunnable: list[Unrunnable] = []
        next_due: float | None = None
        for iid in self._ids():
            row = self._rows[iid]
            if self._held(row, now):
                continue
            runnable = wanted is None or (row.workflow, row.version) in wanted
            due = row.next_deadline is not None and row.next_deadline <= now
            if self._startable(row) or due or self._has_pending(iid):
                if not runnable:
                    if len(unrunnable) < limit:
                        unrunnable.append(
                            Unrunnable(instance_id=iid, workflow=row.workflow, version=row.version)
                        )
                elif len(claimed) < limit:
                    claimed.append(self._take(iid, row, lease))
            elif row.next_deadline is not None and runnable:
                next_due = (
                    row.next_deadline if next_due is None else min(next_due, row.next_deadline)
                )
        return ClaimBatch(claimed=tuple(claimed), next_due=next_due, unrunnable=tuple(unrunnable))

    async def claim_instance(self, lease: Lease, instance_id: str) -> ClaimOne:
        """Claim ``instance_id`` unless another live lease holds it.

        Raises:
            LeaseLost: when ``lease`` is not live.
        """
        await self._enter()
        now = self.now()
        self._check_live(lease, now)
        row = self._rows.get(instance_id)
        if row is None:
            return ClaimOne()
        if row.owner is not None and row.owner != lease and self._is_live(row.owner, now):
            return ClaimOne(owner=row.owner)
        return ClaimOne(claimed=self._take(instance_id, row, lease))

    async def owner_of(self, instance_id: str) -> Lease | None:
        """Return the live lease holding ``instance_id``, or None."""
        await self._enter()
        row = self._rows.get(instance_id)
        if row is None or row.owner is None or not self._is_live(row.owner, self.now()):
            return None
        return row.owner

    # --- fenced writes ------------------------------------------------------------------------

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

        Raises:
            LeaseLost: when the row is not owned by ``lease``.
            RevisionConflict: when it is, at another revision (or exists for 0).
        """
        await self._enter()
        self._fence(lease, instance, self._rows.get(instance.id), expected_revision)
        self._write(instance, None if release else lease)
        self._consume(instance.id, consumed)
        if instance.status.is_terminal:
            self._send(Finished(instance_id=instance.id))
        if release and self._has_work(instance.id, self._rows[instance.id]):
            self._send(Runnable())

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
        """The fenced write of a ``max_active`` workflow's instance, with its slot (one step).

        Raises:
            LeaseLost, RevisionConflict: as :meth:`put_owned`.
            AdmissionFull: the instance would take a slot and none is free.
            ValueError: for ``max_active < 1``.
        """
        await self._enter()
        if max_active < 1:
            raise ValueError(f"max_active must be >= 1, got {max_active}")
        row = self._rows.get(instance.id)
        self._fence(lease, instance, row, expected_revision)
        slot = self._slot_for(instance, row, max_active)
        self._write(instance, None if release else lease)
        written = self._rows[instance.id]
        written.slot = slot
        if instance.status is Status.PENDING and (row is None or row.status is not Status.PENDING):
            written.queue = (0, float(next(self._queued)), "")  # joins the queue's end
        self._consume(instance.id, consumed)
        if instance.status.is_terminal:
            self._send(Finished(instance_id=instance.id))
        if release and self._has_work(instance.id, self._rows[instance.id]):
            self._send(Runnable())
        self._fill(instance.workflow, max_active)
        self._limits[instance.workflow] = max_active

    async def admit_pending(self, workflow: str, *, max_active: int) -> int:
        """Give free slots of ``workflow`` to its queue, first in first; return how many.

        Raises:
            ValueError: for ``max_active < 1``.
        """
        await self._enter()
        if max_active < 1:
            raise ValueError(f"max_active must be >= 1, got {max_active}")
        self._limits[workflow] = max_active
        return self._fill(workflow, max_active)

    async def admission_limit(self, workflow: str) -> int | None:
        """The ``max_active`` the last change of ``workflow``'s slots counted against, or None."""
        await self._enter()
        return self._limits.get(workflow)

    def slots(self, workflow: str) -> list[str]:
        """The ids of ``workflow``'s rows that hold an admission slot, by id (for tests)."""
        return sorted(
            iid for iid, row in self._rows.items() if row.workflow == workflow and row.holds_slot
        )

    async def release_instances(self, lease: Lease, instance_ids: Sequence[str]) -> None:
        """Unown each of ``instance_ids`` that ``lease`` owns."""
        await self._enter()
        mine = [i for i in instance_ids if (row := self._rows.get(i)) and row.owner == lease]
        self._release(mine)

    async def answer_requests(
        self, lease: Lease, instance_id: str, consumed: Sequence[Consumed]
    ) -> None:
        """Mark inbox rows consumed with their answers, without a snapshot.

        Raises:
            LeaseLost: when ``lease`` does not own ``instance_id``.
        """
        await self._enter()
        row = self._rows.get(instance_id)
        if row is None:
            raise LeaseLost(f"instance {instance_id!r} is no longer stored")
        self._check_owner(instance_id, row, lease)
        self._consume(instance_id, consumed)

    # --- the inbox ----------------------------------------------------------------------------

    async def append_request(self, request: InboxRequest) -> Appended:
        """Append ``request`` once per ``(instance_id, request_id)`` and wake the owner."""
        await self._enter()
        iid = request.instance_id
        row = self._rows.get(iid)
        if row is None:
            refused = Refused(error="InstanceNotFound", message=f"no instance {iid!r}")
            return Appended(row=InboxRow(request=request, seq=0, consumed=True, answer=refused))
        now = self.now()
        owner = row.owner if row.owner is not None and self._is_live(row.owner, now) else None
        rows = self._inbox.setdefault(iid, {})
        existing = rows.get(request.request_id)
        if existing is not None:
            return Appended(row=existing, duplicate=True, owner=owner)
        stored = InboxRow(request=request, seq=next(self._seq))
        rows[request.request_id] = stored
        if owner is not None:
            self._send(Wake(engine_id=owner.engine_id, instance_id=iid))
        return Appended(row=stored, owner=owner)

    async def pending_requests(self, instance_id: str) -> list[InboxRow]:
        """Return the unconsumed inbox rows of ``instance_id``, by ``seq``."""
        await self._enter()
        return [r for r in self._inbox.get(instance_id, {}).values() if not r.consumed]

    async def get_request(self, instance_id: str, request_id: str) -> InboxRow | None:
        """Return the inbox row ``(instance_id, request_id)``, or None."""
        await self._enter()
        return self._inbox.get(instance_id, {}).get(request_id)

    async def pending_instances(self, lease: Lease) -> list[str]:
        """Return the ids of instances ``lease`` owns that have unconsumed inbox rows, by id."""
        await self._enter()
        return sorted(
            iid
            for iid in self._inbox
            if (row := self._rows.get(iid)) is not None
            and row.owner == lease
            and self._has_pending(iid)
        )

    # --- notifications ------------------------------------------------------------------------

    async def notify(self, note: Notification) -> None:
        """Send ``note`` to its engine, or to every subscriber."""
        await self._enter()
        self._send(note)

    def listen(
        self, engine_id: str
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[Notification]]:
        """Subscribe ``engine_id`` to its notifications and the broadcast ones."""
        return self._listen(engine_id)

    @asynccontextmanager
    async def _listen(self, engine_id: str) -> AsyncIterator[trio.abc.ReceiveChannel[Notification]]:
        send, receive = trio.open_memory_channel[Notification](_BUFFER)
        key = next(self._next_subscriber)
        self._subscribers[key] = (engine_id, send)
        try:
            async with receive:
                yield receive
        finally:
            del self._subscribers[key]
            send.close()

    # --- test controls ------------------------------------------------------------------------

    def owner(self, instance_id: str) -> Lease | None:
        """The owner column of ``instance_id`` as stored (live or not), for tests."""
        row = self._rows.get(instance_id)
        return None if row is None else row.owner

    def engines(self) -> dict[str, tuple[int, float]]:
        """A copy of the engine rows: id -> (epoch, heartbeat_at), for tests."""
        return dict(self._engines)

    def connect(self) -> MemorySharedConnection:
        """A new connection to this store, which a test can pause or kill (one per engine)."""
        return MemorySharedConnection(self)

    # --- internals ----------------------------------------------------------------------------

    async def _enter(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()

    def _ids(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self._rows)
        return self._sorted

    def _write(self, instance: Instance, owner: Lease | None) -> None:
        previous = self._rows.get(instance.id)
        if previous is None:
            self._sorted = None
        # The slot flag and the queue place are columns of their own: put_limited sets them.
        self._rows[instance.id] = (
            _Row(instance, owner)
            if previous is None
            else _Row(instance, owner, previous.slot, previous.queue)
        )

    def _fence(
        self, lease: Lease, instance: Instance, row: _Row | None, expected_revision: int
    ) -> None:
        """Raise what a fenced write of ``instance`` over ``row`` raises, if anything."""
        if row is None:
            if expected_revision != 0:
                self.fenced_writes += 1
                raise LeaseLost(
                    f"instance {instance.id!r} is no longer stored: this engine "
                    f"({lease.engine_id}, epoch {lease.epoch}) does not own it"
                )
        elif expected_revision == 0:
            raise RevisionConflict(
                f"instance {instance.id!r} is at revision {row.revision}, not the expected 0"
            )
        else:
            self._check_owner(instance.id, row, lease)
            self._check_revision(instance.id, row, expected_revision)

    def _slot_for(self, instance: Instance, row: _Row | None, max_active: int) -> bool:
        """Whether ``instance``, written over ``row``, holds a slot (see ``put_limited``).

        Raises:
            AdmissionFull: it would take one and none is free.
        """
        if instance.status.is_terminal:
            return False
        if not holds_slot(instance):
            return row is not None and row.holds_slot  # PENDING: keeps what it has
        if row is not None and (row.holds_slot or row.status in (Status.RUNNING, Status.WAITING)):
            return True  # admitted already (or stored before the workflow had a limit)
        name = instance.workflow
        held = 0
        queued_ahead = False
        for iid, other in self._rows.items():
            if other.workflow != name or iid == instance.id:
                continue
            held += other.holds_slot
            if other.queued and (row is None or not row.queued or other.queue < row.queue):
                queued_ahead = True
        if held >= max_active or queued_ahead:
            raise AdmissionFull(
                admission_full(name, max_active, instance.id, queued=held < max_active)
            )
        return True

    def _fill(self, workflow: str, max_active: int) -> int:
        """Give free slots of ``workflow`` to its PENDING rows in queue order; Runnable if any."""
        rows = [row for row in self._rows.values() if row.workflow == workflow]
        free = max_active - sum(row.holds_slot for row in rows)
        if free <= 0:
            return 0
        queued = sorted((row for row in rows if row.queued), key=lambda row: row.queue)
        promoted = queued[:free]
        for row in promoted:
            row.slot = True
        if promoted:
            self._send(Runnable())
        return len(promoted)

    @staticmethod
    def _startable(row: _Row) -> bool:
        """RUNNING (steps to run), or PENDING with a slot (to be started)."""
        return row.status is Status.RUNNING or (row.status is Status.PENDING and row.slot)

    def _new_epoch(self, engine_id: str) -> Lease:
        previous = self._engines.get(engine_id)
        epoch = 1 if previous is None else previous[0] + 1
        self._engines[engine_id] = (epoch, self.now())
        return Lease(engine_id=engine_id, epoch=epoch)

    def _is_live(self, lease: Lease, now: float) -> bool:
        current = self._engines.get(lease.engine_id)
        return current is not None and current[0] == lease.epoch and current[1] + self._ttl > now

    def _held(self, row: _Row, now: float) -> bool:
        return row.owner is not None and self._is_live(row.owner, now)

    def _check_live(self, lease: Lease, now: float) -> None:
        if not self._is_live(lease, now):
            raise LeaseLost(
                f"the lease of engine {lease.engine_id!r} (epoch {lease.epoch}) is not live: "
                "heartbeat to get a new epoch before claiming"
            )

    def _check_owner(self, instance_id: str, row: _Row, lease: Lease) -> None:
        if row.owner != lease:
            self.fenced_writes += 1
            held = "nobody" if row.owner is None else f"{row.owner.engine_id}/{row.owner.epoch}"
            raise LeaseLost(
                f"instance {instance_id!r} is owned by {held}, not by "
                f"{lease.engine_id}/{lease.epoch}: its lease was lost"
            )

    @staticmethod
    def _check_revision(instance_id: str, row: _Row | None, expected: int) -> None:
        current = 0 if row is None else row.revision
        if current != expected:
            raise RevisionConflict(
                f"instance {instance_id!r} is at revision {current}, not the expected {expected}"
            )

    def _take(self, instance_id: str, row: _Row, lease: Lease) -> Claimed:
        previous = row.owner
        row.owner = lease
        return Claimed(instance=decode_instance(row.blob), previous_owner=previous)

    def _has_pending(self, instance_id: str) -> bool:
        return any(not r.consumed for r in self._inbox.get(instance_id, {}).values())

    def _has_work(self, instance_id: str, row: _Row) -> bool:
        return self._startable(row) or self._has_pending(instance_id)

    def _release(self, instance_ids: Sequence[str]) -> None:
        now = self.now()
        work = False
        for iid in instance_ids:
            row = self._rows[iid]
            row.owner = None
            due = row.next_deadline is not None and row.next_deadline <= now
            work = work or due or self._has_work(iid, row)
        if work:  # work for later is found by the claimers' next look (next_due)
            self._send(Runnable())

    def _consume(self, instance_id: str, consumed: Sequence[Consumed]) -> None:
        rows = self._inbox.get(instance_id, {})
        for item in consumed:
            stored = rows.get(item.request_id)
            if stored is None or stored.consumed:
                continue
            rows[item.request_id] = InboxRow(
                request=stored.request, seq=stored.seq, consumed=True, answer=item.answer
            )
            self._send(
                Replied(
                    engine_id=stored.request.sender,
                    instance_id=instance_id,
                    request_id=item.request_id,
                )
            )

    def _send(self, note: Notification) -> None:
        target = getattr(note, "engine_id", None)
        for engine_id, channel in list(self._subscribers.values()):
            if target is None or target == engine_id:
                # Best effort: a subscriber that falls behind polls instead.
                with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                    channel.send_nowait(note)


class ConnectionKilled(ConnectionError):
    """The connection (its engine process, in a test) was killed: nothing goes through."""


@final
class MemorySharedConnection:
    """One engine process's connection to a :class:`MemorySharedStorage`, for tests.

    It forwards every call to the store, so engines given different
    connections share the same data, and lets a test do to one engine what
    happens to a process: :meth:`pause` (SIGSTOP: its calls wait, its
    heartbeat stops, until :meth:`resume`), :meth:`kill` (SIGKILL: every
    call from now on raises :class:`ConnectionKilled`), or
    :meth:`kill_after` a call of a given method has been committed (a
    process that dies between the commit and its reply); :meth:`fail_next`
    makes one call fail as a flaky database would, :meth:`lose_reply` one
    call commit and then fail (a connection lost before the reply came).
    """

    def __init__(self, store: MemorySharedStorage) -> None:
        self.store = store
        self._resumed: trio.Event | None = None
        self._killed = False
        self._kill_after: str | None = None
        self._fail_next: str | None = None
        self._lose_reply: str | None = None
        self.calls: collections.Counter[str] = collections.Counter()
        """How often each method went through, by name (a test control)."""
        self.deaf = False
        """True: subscriptions made from now on receive no notifications (lost wake-ups)."""

    @property
    def lease_ttl(self) -> float:
        """The store's lease TTL."""
        return self.store.lease_ttl

    @property
    def is_open(self) -> bool:
        """Whether the store is open (the connection does not open or close it)."""
        return self.store.is_open

    async def aopen(self) -> None:
        """Open the store."""
        await self.store.aopen()

    async def aclose(self) -> None:
        """Leave the store open: other connections use it (close the store itself)."""
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> MemorySharedConnection:
        await self.aopen()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def pause(self) -> None:
        """Hold every call until :meth:`resume`: a paused process makes no progress."""
        if self._resumed is None:
            self._resumed = trio.Event()

    def resume(self) -> None:
        """Let held and new calls through again."""
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None

    @property
    def killed(self) -> bool:
        """Whether the connection was killed (:meth:`kill`, or a :meth:`kill_after` that struck)."""
        return self._killed

    def kill(self) -> None:
        """Refuse every call from now on, as if the process were gone."""
        self._killed = True
        self.resume()

    def fail_next(self, method: str) -> None:
        """Make the next call of ``method`` raise ``OSError`` without reaching the store."""
        self._fail_next = method

    def lose_reply(self, method: str) -> None:
        """Let the next call of ``method`` commit, then raise ``OSError``: its reply was lost."""
        self._lose_reply = method

    def kill_after(self, method: str | None) -> None:
        """Let the next call of ``method`` commit, then kill the connection before it returns.

        ``None`` takes back an earlier ``kill_after`` that has not struck yet.
        """
        self._kill_after = method

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        while self._resumed is not None:
            await self._resumed.wait()
        if self._killed:
            raise ConnectionKilled(f"the connection was killed (calling {name})")
        if self._fail_next == name:
            self._fail_next = None
            raise OSError(f"injected fault: {name} did not reach the store")
        result = await getattr(self.store, name)(*args, **kwargs)
        self.calls[name] += 1
        if self._lose_reply == name:
            self._lose_reply = None
            raise OSError(f"injected fault: {name} committed, and its reply was lost")
        if self._kill_after == name:
            self._kill_after = None
            self.kill()
            raise ConnectionKilled(f"the connection was killed after {name} committed")
        return result

    async def get(self, instance_id: str) -> Instance | None:
        """See :meth:`MemorySharedStorage.get`."""
        got: Instance | None = await self._call("get", instance_id)
        return got

    async def put(self, instance: Instance, *, expected_revision: int | None = None) -> None:
        """See :meth:`MemorySharedStorage.put`."""
        await self._call("put", instance, expected_revision=expected_revision)

    async def delete(self, instance_id: str) -> None:
        """See :meth:`MemorySharedStorage.delete`."""
        await self._call("delete", instance_id)

    async def query(
        self,
        *,
        workflow: str | None = None,
        status: Status | Collection[Status] | None = None,
    ) -> list[Instance]:
        """See :meth:`MemorySharedStorage.query`."""
        found: list[Instance] = await self._call("query", workflow=workflow, status=status)
        return found

    async def query_page(
        self,
        *,
        workflow: str | None = None,
        status: Status | Collection[Status] | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[Instance]:
        """See :meth:`MemorySharedStorage.query_page`."""
        found: list[Instance] = await self._call(
            "query_page", workflow=workflow, status=status, after=after, limit=limit
        )
        return found

    async def register(self, engine_id: str) -> Lease:
        """See :meth:`MemorySharedStorage.register`."""
        lease: Lease = await self._call("register", engine_id)
        return lease

    async def heartbeat(self, lease: Lease) -> Heartbeat:
        """See :meth:`MemorySharedStorage.heartbeat`."""
        beat: Heartbeat = await self._call("heartbeat", lease)
        return beat

    async def release_engine(self, lease: Lease) -> None:
        """See :meth:`MemorySharedStorage.release_engine`."""
        await self._call("release_engine", lease)

    async def claim(
        self,
        lease: Lease,
        *,
        limit: int,
        runs: Collection[tuple[str, int]] | None = None,
    ) -> ClaimBatch:
        """See :meth:`MemorySharedStorage.claim`."""
        batch: ClaimBatch = await self._call("claim", lease, limit=limit, runs=runs)
        return batch

    async def claim_instance(self, lease: Lease, instance_id: str) -> ClaimOne:
        """See :meth:`MemorySharedStorage.claim_instance`."""
        one: ClaimOne = await self._call("claim_instance", lease, instance_id)
        return one

    async def owner_of(self, instance_id: str) -> Lease | None:
        """See :meth:`MemorySharedStorage.owner_of`."""
        owner: Lease | None = await self._call("owner_of", instance_id)
        return owner

    async def put_owned(
        self,
        lease: Lease,
        instance: Instance,
        *,
        expected_revision: int,
        release: bool = False,
        consumed: Sequence[Consumed] = (),
    ) -> None:
        """See :meth:`MemorySharedStorage.put_owned`."""
        await self._call(
            "put_owned",
            lease,
            instance,
            expected_revision=expected_revision,
            release=release,
            consumed=consumed,
        )

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
        """See :meth:`MemorySharedStorage.put_limited`."""
        await self._call(
            "put_limited",
            lease,
            instance,
            expected_revision=expected_revision,
            max_active=max_active,
            release=release,
            consumed=consumed,
        )

    async def admit_pending(self, workflow: str, *, max_active: int) -> int:
        """See :meth:`MemorySharedStorage.admit_pending`."""
        promoted: int = await self._call("admit_pending", workflow, max_active=max_active)
        return promoted

    async def admission_limit(self, workflow: str) -> int | None:
        """See :meth:`MemorySharedStorage.admission_limit`."""
        limit: int | None = await self._call("admission_limit", workflow)
        return limit

    async def release_instances(self, lease: Lease, instance_ids: Sequence[str]) -> None:
        """See :meth:`MemorySharedStorage.release_instances`."""
        await self._call("release_instances", lease, instance_ids)

    async def answer_requests(
        self, lease: Lease, instance_id: str, consumed: Sequence[Consumed]
    ) -> None:
        """See :meth:`MemorySharedStorage.answer_requests`."""
        await self._call("answer_requests", lease, instance_id, consumed)

    async def append_request(self, request: InboxRequest) -> Appended:
        """See :meth:`MemorySharedStorage.append_request`."""
        appended: Appended = await self._call("append_request", request)
        return appended

    async def pending_requests(self, instance_id: str) -> list[InboxRow]:
        """See :meth:`MemorySharedStorage.pending_requests`."""
        rows: list[InboxRow] = await self._call("pending_requests", instance_id)
        return rows

    async def get_request(self, instance_id: str, request_id: str) -> InboxRow | None:
        """See :meth:`MemorySharedStorage.get_request`."""
        row: InboxRow | None = await self._call("get_request", instance_id, request_id)
        return row

    async def pending_instances(self, lease: Lease) -> list[str]:
        """See :meth:`MemorySharedStorage.pending_instances`."""
        ids: list[str] = await self._call("pending_instances", lease)
        return ids

    async def notify(self, note: Notification) -> None:
        """See :meth:`MemorySharedStorage.notify`."""
        await self._call("notify", note)

    def listen(
        self, engine_id: str
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[Notification]]:
        """See :meth:`MemorySharedStorage.listen`; nothing arrives while the connection is deaf."""
        if self.deaf:
            return self._silence()
        return self.store.listen(engine_id)

    @asynccontextmanager
    async def _silence(self) -> AsyncIterator[trio.abc.ReceiveChannel[Notification]]:
        send, receive = trio.open_memory_channel[Notification](0)
        async with send, receive:
            yield receive
