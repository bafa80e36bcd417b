"""The SharedStorage protocol: what a store needs so that several engines can share it.

A store that several engine processes share implements :class:`Storage`
(snapshots, compare-and-set by revision) *and* :class:`SharedStorage`
(below): engine leases, ownership of instances, fenced writes, a shared inbox
of requests and notifications. The runtime (``_runtime/_shared.py``) uses
these methods only; nothing in it knows whether the store is PostgreSQL or
the in-memory one of the tests (``_shared_memory.py``).

The model, in the terms a SQL implementation uses (one row per thing):

* ``engines(engine_id, epoch, heartbeat_at)``. An engine is *live* while
  ``heartbeat_at + lease_ttl > now``, where ``now`` is always **the store's
  clock** (PostgreSQL's ``now()``, never the caller's). A :class:`Lease` is an
  engine id plus an epoch; it is *live* when the engine row has that epoch and
  is live.
* ``instances(id, ..., revision, snapshot, owner_id, owner_epoch,
  next_deadline)``. ``owner`` is the lease that may write the instance, or
  null. An instance's owner *holds* it only while that lease is live: a
  claim may take an instance whose owner is null **or not live**, tested as a
  correlated ``NOT EXISTS (SELECT 1 FROM engines e WHERE e.engine_id =
  i.owner_id AND e.epoch = i.owner_epoch AND e.heartbeat_at + ttl > now())``,
  never as a ``LEFT JOIN`` (under ``FOR UPDATE SKIP LOCKED`` READ COMMITTED
  re-checks the locked instance row but keeps the stale joined engine row,
  and steals from live owners). ``next_deadline`` is the earliest
  ``Timer.deadline`` of the snapshot, or null without timers; it is derived
  by the store from the instance on every write.
* ``inbox(instance_id, request_id, seq, sender, request, reply,
  consumed)``: requests (``resume``, ``cancel``, ...) sent to an instance
  by an engine that does not own it. Unique per ``(instance_id,
  request_id)``: a caller that retries gets the row it appended before, so a
  request is applied at most once. Rows are marked consumed, with the reply,
  in the transaction that stores the snapshot which absorbed them; they are
  not deleted then (a retry must still find the reply). ``delete`` of an
  instance removes its rows.

Claims never change an instance's ``revision`` or its snapshot: they set the
owner only. Every write the runtime makes is *fenced*: it succeeds only if the
stored revision is the expected one **and** the row is still owned by the
writer's lease (same engine id and epoch). So an engine that was paused past
its lease, whose instances were claimed by others, cannot overwrite anything
when it wakes: its writes raise :class:`LeaseLost`.

Notifications (:class:`Notification`) are wake-ups, not data: they may be
lost (a listener reconnecting, a process dying between commit and notify) or
arrive late, and the runtime never relies on them alone; every fact they
announce can be read back from the store (``get``, ``get_request``,
``owner_of``). Stores should send them in the transaction of the change they
announce (PostgreSQL's ``NOTIFY`` inside the transaction is delivered on
commit), so that a reader who is woken finds the change already visible.

One optional method, used when a store has it: ``pending_instances(lease)
-> list[str]``, the ids of instances owned by ``lease`` that have unconsumed
inbox rows (``SELECT DISTINCT i.instance_id FROM inbox i JOIN instances s ON
s.id = i.instance_id WHERE NOT i.consumed AND s.owner_id = $1 AND
s.owner_epoch = $2``). The owner polls it every TTL/4, so a request whose
:class:`Wake` was lost is still served within that time; without it, such a
request waits until its instance is released or its owner's lease ends.

Everything here is async and, like :class:`Storage`, works only between
``aopen()`` and ``aclose()``; cancelling a call may or may not leave its
change committed (as with ``put``), which is why every change is either
idempotent to repeat or fenced.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Final, Protocol, TypeAlias, runtime_checkable

import msgspec
import trio

from .._core._engine import (
    Cancel,
    CancelTimer,
    ChildFinished,
    ChildStartFailed,
    Deliver,
    Retry,
    ScheduleResume,
)
from .._core._errors import EventRejected, HephaestusError
from .._core._model import Instance

# --- leases -----------------------------------------------------------------------------------


class LeaseLost(HephaestusError):
    """A fenced write found the instance owned by another lease (or by nobody).

    The engine that got it no longer holds the instance: another engine
    claimed it after this engine's lease expired (it was paused, partitioned
    or too slow to heartbeat), or it was released. The write stored nothing.
    The runtime drops the instance from that engine (no retry, no restart);
    whichever engine holds it now carries on from what is stored.
    """


class AdmissionFull(EventRejected):
    """A write that would admit an instance found its workflow's ``max_active`` full.

    Raised by :meth:`SharedStorage.put_limited` for a snapshot that takes a
    slot (RUNNING or WAITING) when the row holds none and every slot is taken,
    or PENDING instances queue for one. Nothing was stored. A ``retry`` of a
    FAILED instance gets it (an ``EventRejected``: try again once an instance
    of the workflow finished); the runtime's admission of a PENDING instance
    takes it as "stay queued".
    """


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """An engine's right to own instances: its id and the epoch it registered under.

    A new epoch starts every time the engine (re)registers, or finds on a
    heartbeat that its row had expired; instances owned under an older epoch
    are no longer its own, whatever ``engine_id`` says.
    """

    engine_id: str
    epoch: int


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`SharedStorage.heartbeat` found.

    ``lease`` is the lease in force after the call: the one passed in when it
    was still live (``expired`` False), else a new epoch of the same engine
    (``expired`` True). With ``expired`` the caller must first drop every
    instance it holds in memory (others may have claimed them), then own
    nothing until it claims again under the new lease. ``expires_at`` is
    when the returned lease expires unless renewed, by the store's clock.
    """

    lease: Lease
    expired: bool
    expires_at: float


class Claimed(msgspec.Struct, frozen=True, kw_only=True):
    """An instance that a claim took, with the lease that owned it before.

    ``instance`` is the stored snapshot, unchanged (its ``revision`` is the
    stored revision: the ``expected_revision`` of the next fenced write).
    ``previous_owner`` is the lease that owned it before the claim (a
    takeover when it is another engine's, or an older epoch of this one), or
    None when it had no owner.
    """

    instance: Instance
    previous_owner: Lease | None = None


class Unrunnable(msgspec.Struct, frozen=True, kw_only=True):
    """An instance with work and no live owner that a claim left because the caller cannot run it.

    Its ``(workflow, version)`` is not among the claim's ``runs``.
    """

    instance_id: str
    workflow: str
    version: int


class ClaimBatch(msgspec.Struct, frozen=True, kw_only=True):
    """The result of :meth:`SharedStorage.claim`.

    ``claimed`` holds the instances claimed, by ascending id. ``next_due`` is
    the earliest ``next_deadline`` (store clock) among instances that are not
    held by a live lease and were not claimed because they are not due yet,
    or None when there is none: the claimer may sleep until then.
    ``unrunnable`` (only with ``runs``): up to ``limit`` instances, by id, that
    would qualify but whose workflow version the caller does not run.
    """

    claimed: tuple[Claimed, ...] = ()
    next_due: float | None = None
    unrunnable: tuple[Unrunnable, ...] = ()


class ClaimOne(msgspec.Struct, frozen=True, kw_only=True):
    """The result of :meth:`SharedStorage.claim_instance`.

    Exactly one of three cases:

    * ``claimed`` set: the caller's lease owns the instance now (or already
      did); ``owner`` is None.
    * ``owner`` set: another live lease holds it; ``claimed`` is None.
    * both None: no instance has that id.
    """

    claimed: Claimed | None = None
    owner: Lease | None = None


# --- the shared inbox -------------------------------------------------------------------------

Request: TypeAlias = (
    Deliver | Cancel | Retry | ScheduleResume | CancelTimer | ChildFinished | ChildStartFailed
)
"""What another engine asks an instance's owner to apply: the core's own inputs.

``resume``, ``cancel``, ``retry``, ``schedule_resume``, ``cancel_timer``, and a
child's end (or failed start) told to its parent (``hx.SubWorkflow``). They
are stored (msgpack, tagged by class name), so their tags never change.
"""


class Accepted(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The owner applied the request. ``value`` is what the engine method returns.

    None for ``resume``, ``cancel``, ``retry``; the timer id for
    ``schedule_resume``; whether a timer was pending for ``cancel_timer``.
    """

    value: str | bool | None = None


class Refused(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The owner refused the request; nothing changed.

    ``error`` is the name of the ``hx`` exception the caller raises
    (``"EventRejected"``, ``"UndeclaredEvent"``, ``"DefinitionChanged"``,
    ``"InstanceNotFound"``, ``"InvalidResult"``), ``message`` its message.
    """

    error: str
    message: str


Answer: TypeAlias = Accepted | Refused
"""The owner's reply to a request, stored in its inbox row."""


class InboxRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A request to append to the shared inbox.

    ``request_id`` is unique per instance: ``"dedupe:" + dedupe_key`` for a
    ``resume`` with a dedupe key (so a caller that retries on another engine,
    after the first one died between commit and reply, appends nothing new),
    else an id the caller generates once per call and reuses when it repeats
    that call. ``sender`` is the caller's engine id: replies are notified to
    it. ``at`` is the caller's clock when the request was made.
    """

    instance_id: str
    request_id: str
    sender: str
    request: Request
    at: float = 0.0


class InboxRow(msgspec.Struct, frozen=True, kw_only=True):
    """A stored inbox row: the request, its place in the queue and, once applied, the answer.

    ``seq`` grows with every append to the store (any instance), so rows are
    applied in the order they were appended. ``answer`` is set when
    ``consumed`` is.
    """

    request: InboxRequest
    seq: int
    consumed: bool = False
    answer: Answer | None = None


class Appended(msgspec.Struct, frozen=True, kw_only=True):
    """The result of :meth:`SharedStorage.append_request`.

    ``row`` is the new row, or the row already stored under the same
    ``(instance_id, request_id)`` (``duplicate`` True; it may already carry
    its answer). ``owner`` is the live lease holding the instance at the time
    of the append (it was sent a :class:`Wake`), or None when nobody holds it:
    then the caller claims the instance and applies the request itself.
    """

    row: InboxRow
    duplicate: bool = False
    owner: Lease | None = None


class Consumed(msgspec.Struct, frozen=True, kw_only=True):
    """An inbox row to mark consumed with ``answer`` (see ``put_owned``, ``answer_requests``)."""

    request_id: str
    answer: Answer


# --- notifications ----------------------------------------------------------------------------


class Wake(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """``instance_id`` has pending inbox rows; sent to its owner ``engine_id``."""

    engine_id: str
    instance_id: str


class Replied(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The request ``request_id`` to ``instance_id`` has its answer; sent to its sender."""

    engine_id: str
    instance_id: str
    request_id: str


class Finished(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """``instance_id`` was stored in a terminal status; sent to every engine."""

    instance_id: str


class Runnable(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Unowned work exists (an engine released or died): claimers should look; to every engine."""


Notification: TypeAlias = Wake | Replied | Finished | Runnable
"""A wake-up. Those with an ``engine_id`` go to that engine only, the others to all."""

_notification_encoder: Final = msgspec.msgpack.Encoder()
_notification_decoder: Final = msgspec.msgpack.Decoder(Notification)
_request_encoder: Final = msgspec.msgpack.Encoder()
_request_decoder: Final = msgspec.msgpack.Decoder(InboxRequest)
_answer_decoder: Final = msgspec.msgpack.Decoder(Answer)


def encode_notification(note: Notification) -> bytes:
    """Return ``note`` as bytes (what a store puts on the wire, e.g. a NOTIFY payload)."""
    return _notification_encoder.encode(note)


def decode_notification(data: bytes) -> Notification:
    """Return the notification encoded in ``data``.

    Raises:
        msgspec.DecodeError, msgspec.ValidationError: for bytes that are no notification.
    """
    return _notification_decoder.decode(data)


def encode_request(request: InboxRequest) -> bytes:
    """Return ``request`` as the bytes a store keeps in its inbox row."""
    return _request_encoder.encode(request)


def decode_request(data: bytes) -> InboxRequest:
    """Return the request encoded in ``data`` (see :func:`encode_request`)."""
    return _request_decoder.decode(data)


def encode_answer(answer: Answer) -> bytes:
    """Return ``answer`` as the bytes a store keeps in a consumed inbox row."""
    return _request_encoder.encode(answer)


def decode_answer(data: bytes) -> Answer:
    """Return the answer encoded in ``data`` (see :func:`encode_answer`)."""
    return _answer_decoder.decode(data)


def admission_full(workflow: str, max_active: int, instance_id: str, *, queued: bool) -> str:
    """The message of :class:`AdmissionFull` (``queued``: slots are free but others wait)."""
    why = (
        "instances started before it wait for a slot"
        if queued
        else f"all {max_active} of its slots are taken"
    )
    return (
        f"workflow {workflow!r} has max_active={max_active} and {why}: instance "
        f"{instance_id!r} can be admitted once one of its instances finished"
    )


def next_deadline(instance: Instance) -> float | None:
    """Return the value of the ``next_deadline`` column for ``instance``: its earliest timer.

    Terminal instances have no timers, so this is None for them.
    """
    return min((t.deadline for t in instance.timers), default=None)


# --- the protocol -----------------------------------------------------------------------------


@runtime_checkable
class SharedStorage(Protocol):
    """Leases, ownership, fenced writes, a shared inbox and notifications (see the module doc).

    A shared store implements :class:`Storage` as well. Its plain ``put`` is
    compare-and-set on the revision only and leaves the owner as it is (tools
    such as the CLI use it); the runtime, on a shared store, writes only with
    :meth:`put_owned`. ``get`` and ``query`` read the stored snapshot
    whoever owns it.
    """

    @property
    def lease_ttl(self) -> float:
        """Seconds a lease stays live after its last heartbeat (store clock)."""
        ...

    async def register(self, engine_id: str) -> Lease:
        """Start a new epoch for ``engine_id`` and return its lease, live from now.

        The epoch is 1 for an id never seen, else one more than the last epoch
        stored for it (so an engine restarted under the same id never shares a
        lease with its previous run). ``heartbeat_at`` is set to the store's
        now. Instances owned under older epochs keep their owner column, which
        no longer names a live lease: they are claimable.
        """
        ...

    async def heartbeat(self, lease: Lease) -> Heartbeat:
        """Renew ``lease``, or start a new epoch when it is no longer live.

        If the engine row has ``lease.epoch`` and is live, set ``heartbeat_at``
        to the store's now and return ``expired=False`` with the same lease.
        Otherwise (it expired, or the row is gone or at another epoch) do what
        :meth:`register` does and return the new lease with ``expired=True``.
        Renewing an expired lease in place is never allowed: others may have
        claimed its instances in the meantime.
        """
        ...

    async def release_engine(self, lease: Lease) -> None:
        """End ``lease``: expire its engine row and set the owner of its instances to null.

        The row stays (with a heartbeat far in the past), so the next
        :meth:`register` of the same id still gets a higher epoch.

        Sends :class:`Runnable` when any released instance has work now, so
        other engines take over at once rather than after a TTL. Releasing a
        lease that is no longer live, or twice, is harmless.
        """
        ...

    async def claim(
        self,
        lease: Lease,
        *,
        limit: int,
        runs: Collection[tuple[str, int]] | None = None,
    ) -> ClaimBatch:
        """Claim at most ``limit`` instances that have work to do and no live owner.

        An instance qualifies when its owner is null or not a live lease (the
        correlated ``NOT EXISTS`` rule above) **and** it has work: its status
        is RUNNING (steps to run), or it is PENDING and holds an admission
        slot (``put_limited``: to be started), or ``next_deadline <= now``
        (store clock), or it has unconsumed inbox rows. With ``runs`` (the
        ``(workflow, version)`` pairs the caller registers) only instances of
        those qualify, tested in the query (``AND (i.workflow, i.version) IN
        (...)``), so an engine never claims what it cannot run; the others
        are reported in ``unrunnable``, unclaimed. ``next_due`` then considers
        only those pairs too. Each claimed instance gets
        ``owner = lease``; nothing else changes. Rows another transaction is
        claiming are skipped (``FOR UPDATE SKIP LOCKED``), never waited for.
        Returns the claimed instances (by id) and ``next_due``.

        In SQL (one transaction; ``$ttl`` the TTL, deadlines in epoch seconds)::

            WITH picked AS (
              SELECT i.id, i.owner_id AS old_id, i.owner_epoch AS old_epoch
              FROM instances i
              WHERE NOT EXISTS (SELECT 1 FROM engines e
                                WHERE e.engine_id = i.owner_id AND e.epoch = i.owner_epoch
                                  AND e.heartbeat_at > now() - $ttl)
                AND (i.status = 'running'
                     OR i.next_deadline <= extract(epoch FROM now())
                     OR EXISTS (SELECT 1 FROM inbox b
                                WHERE b.instance_id = i.id AND NOT b.consumed))
              ORDER BY i.id LIMIT $limit
              FOR UPDATE OF i SKIP LOCKED)
            UPDATE instances s SET owner_id = $engine, owner_epoch = $epoch
            FROM picked WHERE s.id = picked.id
            RETURNING s.snapshot, s.revision, picked.old_id, picked.old_epoch

        Raises:
            LeaseLost: when ``lease`` is not live (the caller heartbeats
                before claiming again).
            ValueError: for ``limit < 1``.
        """
        ...

    async def claim_instance(self, lease: Lease, instance_id: str) -> ClaimOne:
        """Claim ``instance_id`` whatever its status, unless another live lease holds it.

        Owned by ``lease`` already, or owner null or not live: set the owner to
        ``lease`` and return it as ``claimed``. Held by another live lease:
        return that ``owner``. No such instance: return ``ClaimOne()``.

        Raises:
            LeaseLost: when ``lease`` is not live.
        """
        ...

    async def put_owned(
        self,
        lease: Lease,
        instance: Instance,
        *,
        expected_revision: int,
        release: bool = False,
        consumed: Sequence[Consumed] = (),
    ) -> None:
        """Store ``instance`` if ``lease`` still owns it at ``expected_revision``: the fenced write.

        ``expected_revision`` 0 creates the instance (there must be no row);
        it is created owned by ``lease``. Otherwise the row must be owned by
        ``lease`` (engine id and epoch) and at ``expected_revision``. The lease
        need not be live: a write by a lease that expired but whose instance
        nobody claimed harms no one. In the same transaction: ``next_deadline``
        is recomputed (:func:`next_deadline`); with ``release`` the owner is set
        to null (passivation, a terminal instance); each ``consumed`` row of
        this instance is marked consumed with its answer and a
        :class:`Replied` is sent to its sender; a terminal ``instance`` sends
        :class:`Finished`; a released instance that still has work (status
        RUNNING or unconsumed inbox rows) sends :class:`Runnable`.

        Raises:
            LeaseLost: when the row exists and is not owned by ``lease``
                (checked first), or does not exist and ``expected_revision``
                is not 0. Nothing is stored.
            RevisionConflict: when the row is owned by ``lease`` but at another
                revision, or exists although ``expected_revision`` is 0.
                Nothing is stored.
        """
        ...

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
        """:meth:`put_owned` for a workflow with ``max_active``: the write and its slot, atomically.

        Admission slots live in the store, so that at most ``max_active``
        instances of one workflow name (all versions) are admitted and not
        terminal, over every engine, at every moment. A row *holds a slot*
        while its ``slot`` flag is set and its status is not terminal; only
        this method sets the flag. In one transaction, serialised per workflow
        name (PostgreSQL: ``SELECT ... FOR UPDATE`` of the name's
        ``hx_admission`` row), after the fence of :meth:`put_owned`:

        * RUNNING or WAITING ``instance`` (it is admitted): a row holding a
          slot keeps it; a row already RUNNING or WAITING without one (stored
          before the workflow had a limit) takes one, even over the limit;
          otherwise (a new row, a PENDING one, a terminal one being retried)
          it takes a slot only if fewer than ``max_active`` are held and no
          PENDING row without a slot queues before it (any, for a row that is
          not PENDING), else :class:`AdmissionFull` and nothing is stored;
        * PENDING ``instance``: stored with the slot its row holds (none for a
          new row). It queues in the order of the writes that made rows
          PENDING (a new row, or a finished one started again): the store's
          creation order, the same for every engine whatever their clocks
          (a PENDING rewrite keeps its place);
        * terminal ``instance``: its slot is freed.

        Then, still in the transaction, the freed or free slots are handed on
        as :meth:`admit_pending` does. A PENDING row given a slot becomes
        claimable (``claim``), so whichever engine claims it starts it; the
        engine that freed the slot may die right after the commit. ``max_active``
        is the caller's limit (its highest registered version's).

        Raises:
            LeaseLost, RevisionConflict: as :meth:`put_owned`; nothing is stored.
            AdmissionFull: the instance would take a slot and none is free.
        """
        ...

    async def admit_pending(self, workflow: str, *, max_active: int) -> int:
        """Give free slots of ``workflow`` to its PENDING rows, first in first; return how many.

        While fewer than ``max_active`` rows of ``workflow`` hold a slot, the
        PENDING row without one that is first in the queue gets one. A
        :class:`Runnable` is sent when any did. Claimers call this now and then,
        so that slots freed by a write that did not hand them on (a plain
        ``put`` from a tool, a limit raised) reach the queue.
        """
        ...

    async def admission_limit(self, workflow: str) -> int | None:
        """The ``max_active`` that ``workflow``'s slots were last counted against, or None.

        Every :meth:`put_limited` and :meth:`admit_pending` records its
        ``max_active`` for the workflow name, in its transaction. A tool that
        changes instances without the workflow's definition (``hephaestus
        retry``) writes through :meth:`put_limited` with it, so the limit holds
        for it too. None: no instance of that name was ever written limited.
        """
        ...

    async def release_instances(self, lease: Lease, instance_ids: Sequence[str]) -> None:
        """Set the owner of each of ``instance_ids`` that ``lease`` owns to null.

        Ids owned by someone else, or by nobody, or unknown, are skipped. Sends
        :class:`Runnable` when a released instance has work now (RUNNING, a
        deadline passed, unconsumed inbox rows); not for a deadline to come,
        which claimers learn from ``next_due`` (a broadcast per passivated
        instance would make every engine claim each time).
        """
        ...

    async def answer_requests(
        self, lease: Lease, instance_id: str, consumed: Sequence[Consumed]
    ) -> None:
        """Mark inbox rows of ``instance_id`` consumed with their answers, without a snapshot.

        For requests that changed nothing (refused, or a dedupe key seen
        before). Sends :class:`Replied` to each sender. Rows already consumed
        keep their first answer.

        Raises:
            LeaseLost: when ``lease`` does not own ``instance_id``; nothing is marked.
        """
        ...

    async def append_request(self, request: InboxRequest) -> Appended:
        """Append ``request`` to the inbox of its instance, once per ``request_id``.

        If a row with the same ``(instance_id, request_id)`` exists, append
        nothing and return it with ``duplicate=True``. Otherwise append it
        (unconsumed, the next ``seq``). Either way report the live lease
        holding the instance, and for a new row send that owner a
        :class:`Wake`. An instance that does not exist gets no row: the result
        has ``row`` built from the request with ``seq`` 0, ``consumed`` and a
        ``Refused("InstanceNotFound", ...)`` answer, and is not stored.
        """
        ...

    async def pending_requests(self, instance_id: str) -> list[InboxRow]:
        """Return the unconsumed inbox rows of ``instance_id``, by ``seq``."""
        ...

    async def get_request(self, instance_id: str, request_id: str) -> InboxRow | None:
        """Return the inbox row ``(instance_id, request_id)``, consumed or not, or None."""
        ...

    async def owner_of(self, instance_id: str) -> Lease | None:
        """Return the live lease holding ``instance_id``, or None (unowned, owner dead, unknown)."""
        ...

    async def notify(self, note: Notification) -> None:
        """Send ``note`` now (outside any write): to its ``engine_id``, or to every engine."""
        ...

    def listen(
        self, engine_id: str
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[Notification]]:
        """Subscribe ``engine_id`` to its notifications and the broadcast ones.

        The channel yields, in order sent, every notification sent after the
        subscription was made to ``engine_id`` or to all; leaving the context
        unsubscribes. Delivery is best effort: a subscriber that falls behind
        or reconnects may miss notifications (the runtime polls as well).
        """
        ...
