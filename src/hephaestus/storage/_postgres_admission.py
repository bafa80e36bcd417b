"""PostgresStorage's ``max_active`` slots and queues, in SQL (``SharedStorage.put_limited``).

A row holds a slot while ``slot IS TRUE`` and its status is not terminal;
the count of those per workflow name never exceeds the ``max_active`` the
writer passes. Every change of slots runs in one transaction that first
locks the workflow's row of ``hx_admission`` (``SELECT ... FOR UPDATE``), so
two engines admitting instances of one workflow at once are serialised and
each counts what the other committed (READ COMMITTED reads a new snapshot per
statement). The queue is the PENDING rows without a slot, ordered by
``queued`` then id (a partial index): ``nextval('hx_queue_order')``, taken
under the workflow's lock by the write that made the row PENDING, so the
order those writes committed in, the same for every engine. Slots are handed
on in the same transaction that frees them (:func:`fill`), so a PENDING row
given a slot is claimable at once (``claim``: status ``'pending'`` and
``slot``) whatever happens to the engine that freed it.

These writes are not group-committed (they take the admission row's lock,
which a batch of other rows must not wait on); only writes that may change a
slot come here, the rest of a limited instance's writes stay on the writer.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Final

from .._core._errors import RevisionConflict
from .._core._model import Instance, Status
from ._postgres_shared import (
    _RUNS,
    _STARTABLE,
    NOT_HELD,
    NOW,
    PENDING,
    consume,
    encode_payload,
    owned_row_args,
)
from ._rows import Row
from ._shared import (
    AdmissionFull,
    Consumed,
    Finished,
    Lease,
    LeaseLost,
    Unrunnable,
    admission_full,
)

_HOLDS: Final = "slot IS TRUE AND status IN ('pending', 'running', 'waiting')"
_QUEUED: Final = "status = 'pending' AND slot IS NOT TRUE"

_FILL: Final = (
    "WITH picked AS (SELECT id FROM hx_instances WHERE workflow = %(wf)s AND "
    f"{_QUEUED} ORDER BY queued, id LIMIT greatest(0, %(n)s - "
    f"(SELECT count(*) FROM hx_instances WHERE workflow = %(wf)s AND {_HOLDS})) "
    "FOR UPDATE) UPDATE hx_instances u SET slot = true FROM picked WHERE u.id = picked.id "
    "RETURNING u.id"
)
_INSERT: Final = (
    "INSERT INTO hx_instances (id, workflow, version, status, revision, updated_at, "
    "next_deadline, snapshot, owner_id, owner_epoch, slot, queued) VALUES "
    "(%(iid)s, %(workflow)s, %(version)s, %(status)s, %(revision)s, %(updated_at)s, "
    "%(deadline)s, %(snapshot)s, %(owner)s, %(owner_epoch)s, %(slot)s, "
    "CASE WHEN %(joins)s THEN nextval('hx_queue_order') END)"
)
_UPDATE: Final = (
    "UPDATE hx_instances SET workflow = %(workflow)s, version = %(version)s, "
    "status = %(status)s, revision = %(revision)s, updated_at = %(updated_at)s, "
    "next_deadline = %(deadline)s, snapshot = %(snapshot)s, owner_id = %(owner)s, "
    "owner_epoch = %(owner_epoch)s, slot = %(slot)s, "
    "queued = CASE WHEN %(joins)s THEN nextval('hx_queue_order') ELSE queued END "
    "WHERE id = %(iid)s"
)
_UNRUNNABLE: Final = (
    "SELECT i.id, i.workflow, i.version FROM hx_instances i WHERE "
    f"(i.status = 'running' OR {_STARTABLE} OR i.next_deadline <= {NOW} OR {PENDING}) "
    f"AND {NOT_HELD} AND NOT {_RUNS} ORDER BY i.id LIMIT %(limit)s"
)


def run_args(runs: Collection[tuple[str, int]]) -> dict[str, object]:
    """The query parameters of the claim's ``runs`` filter."""
    pairs = sorted(set(runs))
    return {"run_names": [p[0] for p in pairs], "run_versions": [p[1] for p in pairs]}


def unrunnable(conn: Any, args: dict[str, object]) -> tuple[Unrunnable, ...]:
    """Instances with work and no live owner outside the claim's ``runs`` (see ``claim``)."""
    rows = conn.execute(_UNRUNNABLE, args).fetchall()
    return tuple(
        Unrunnable(instance_id=str(iid), workflow=str(wf), version=int(str(v)))
        for iid, wf, v in rows
    )


def _lock(conn: Any, workflow: str, max_active: int) -> None:
    """Take the admission lock of ``workflow`` for the rest of the transaction; record the limit."""
    conn.execute(
        "INSERT INTO hx_admission (workflow, max_active) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (workflow, max_active),
    )
    recorded = conn.execute(
        "SELECT max_active FROM hx_admission WHERE workflow = %s FOR UPDATE", (workflow,)
    ).fetchone()
    if recorded[0] != max_active:  # a limit changed (or never recorded): one more statement
        conn.execute(
            "UPDATE hx_admission SET max_active = %s WHERE workflow = %s", (max_active, workflow)
        )


def admission_limit(conn: Any, workflow: str) -> int | None:
    """``SharedStorage.admission_limit``: the limit recorded by the last change of slots."""
    row = conn.execute(
        "SELECT max_active FROM hx_admission WHERE workflow = %s", (workflow,)
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def fill(conn: Any, workflow: str, max_active: int) -> int:
    """Give free slots of ``workflow`` to its queue, first in first; ``Runnable`` if any.

    The caller holds the workflow's admission lock.
    """
    promoted = conn.execute(_FILL, {"wf": workflow, "n": max_active}).fetchall()
    if promoted:
        conn.execute("SELECT pg_notify('hx_all', '[\"runnable\"]')")
    return len(promoted)


def admit_pending(conn: Any, workflow: str, max_active: int) -> int:
    """``SharedStorage.admit_pending`` in one transaction."""
    with conn.transaction():
        _lock(conn, workflow, max_active)
        return fill(conn, workflow, max_active)


def put_limited(
    conn: Any,
    lease: Lease,
    instance: Instance,
    row: Row,
    *,
    expected: int,
    max_active: int,
    release: bool,
    consumed: Sequence[Consumed],
) -> None:
    """``SharedStorage.put_limited`` in one transaction (see the module doc).

    Raises:
        LeaseLost, RevisionConflict, AdmissionFull: nothing stored.
    """
    iid, workflow, *_ = row
    with conn.transaction():
        _lock(conn, workflow, max_active)
        stored = conn.execute(
            "SELECT revision, owner_id, owner_epoch, status, slot, queued "
            "FROM hx_instances WHERE id = %s FOR UPDATE",
            (iid,),
        ).fetchone()
        _fence(iid, lease, stored, expected)
        slot = _slot_for(conn, instance, stored, max_active)
        args = owned_row_args(row, lease, release=release)
        args["slot"] = slot
        # a row made PENDING (new, or finished before) joins the end of the queue
        args["joins"] = instance.status is Status.PENDING and (
            stored is None or str(stored[3]) != Status.PENDING.value
        )
        conn.execute(_INSERT if stored is None else _UPDATE, args)
        if consumed:
            consume(conn, iid, consumed)
        if instance.status.is_terminal:
            conn.execute("SELECT pg_notify(%s, %s)", encode_payload(Finished(instance_id=iid)))
        work = instance.status is Status.RUNNING or (instance.status is Status.PENDING and slot)
        if release and not work:
            work = conn.execute(f"SELECT {PENDING} FROM hx_instances i WHERE i.id = %s", (iid,))
            work = bool(work.fetchone()[0])
        if release and work:
            conn.execute("SELECT pg_notify('hx_all', '[\"runnable\"]')")
        fill(conn, workflow, max_active)


def _fence(iid: str, lease: Lease, stored: Any, expected: int) -> None:
    """Raise what the fenced write of ``iid`` over ``stored`` raises, if anything."""
    if stored is None:
        if expected != 0:
            raise LeaseLost(
                f"instance {iid!r} is no longer stored: this engine "
                f"({lease.engine_id}, epoch {lease.epoch}) does not own it"
            )
        return
    revision, owner_id, owner_epoch = int(stored[0]), stored[1], stored[2]
    if expected == 0:
        raise RevisionConflict(f"instance {iid!r} is at revision {revision}, not the expected 0")
    if owner_id != lease.engine_id or owner_epoch is None or int(owner_epoch) != lease.epoch:
        held = "nobody" if owner_id is None else f"{owner_id}/{owner_epoch}"
        raise LeaseLost(
            f"instance {iid!r} is owned by {held}, not by "
            f"{lease.engine_id}/{lease.epoch}: its lease was lost"
        )
    if revision != expected:
        raise RevisionConflict(
            f"instance {iid!r} is at revision {revision}, not the expected {expected}"
        )


def _slot_for(conn: Any, instance: Instance, stored: Any, max_active: int) -> bool:
    """Whether ``instance``, written over ``stored``, holds a slot (as the memory store decides).

    Raises:
        AdmissionFull: it would take one and none is free.
    """
    if instance.status.is_terminal:
        return False
    old_status = None if stored is None else Status(str(stored[3]))
    old_slot = old_status is not None and stored[4] is True and not old_status.is_terminal
    if instance.status is Status.PENDING:
        return old_slot
    if old_slot or old_status in (Status.RUNNING, Status.WAITING):
        return True  # admitted already (or stored before the workflow had a limit)
    name = instance.workflow
    held = conn.execute(
        f"SELECT count(*) FROM hx_instances WHERE workflow = %s AND {_HOLDS} AND id <> %s",
        (name, instance.id),
    ).fetchone()[0]
    if old_status is Status.PENDING:  # queued itself: only those before it count
        ahead = conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM hx_instances WHERE workflow = %s AND {_QUEUED} "
            "AND id <> %s AND (queued, id) < (%s, %s))",
            (name, instance.id, stored[5], instance.id),
        ).fetchone()[0]
    else:
        ahead = conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM hx_instances WHERE workflow = %s AND {_QUEUED})",
            (name,),
        ).fetchone()[0]
    if int(held) >= max_active or ahead:
        raise AdmissionFull(
            admission_full(name, max_active, instance.id, queued=int(held) < max_active)
        )
    return True
