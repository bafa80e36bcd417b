"""The SharedStorage half of PostgresStorage, in SQL: leases, claims, fenced writes, the inbox.

Blocking functions that take a psycopg connection (PostgresStorage runs them
in its worker threads), and the fenced write as a writer :class:`Op` so that
it is group-committed with every other write of its engine.

Time is the database's: ``NOW`` is ``clock_timestamp()`` as epoch seconds
(plus ``skew``, 0 except in tests that move the store's clock). An engine is
live while its row's ``expires_at > NOW``; every claim tests its candidates
with a correlated ``NOT EXISTS`` on that (``NOT_HELD``), never a join:
``FOR UPDATE ... SKIP LOCKED`` under READ COMMITTED re-checks a locked row
that changed, but keeps a joined engine row as it first read it, so a join
steals instances from owners that renewed meanwhile (RELIABILITY.md).

Notifications use ``pg_notify`` inside the transaction of the change (they
are delivered on commit): one channel per engine (``channel_of``), for
``Wake`` and ``Replied``, and ``hx_all`` for ``Finished`` and ``Runnable``.
Payloads are JSON arrays (``["wake", engine, instance]``...), built in SQL
where the recipients come from rows, decoded by ``decode_payload``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, final

import outcome

from .._core._codec import decode_instance
from .._core._errors import CorruptSnapshot, RevisionConflict
from .._core._model import Instance, Status
from ._rows import Row
from ._shared import (
    Answer,
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
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
)

if TYPE_CHECKING:
    import psycopg


BROADCAST: Final = "hx_all"
"""The channel every listener listens on (``Finished``, ``Runnable``)."""

NOW: Final = "(extract(epoch FROM clock_timestamp())::float8 + %(skew)s::float8)"
LIVE: Final = (
    "EXISTS (SELECT 1 FROM hx_engines e WHERE e.engine_id = i.owner_id "
    f"AND e.epoch = i.owner_epoch AND e.expires_at > {NOW})"
)
NOT_HELD: Final = f"(i.owner_id IS NULL OR NOT {LIVE})"
PENDING: Final = "EXISTS (SELECT 1 FROM hx_inbox b WHERE b.instance_id = i.id AND NOT b.consumed)"
HAS_WORK: Final = (
    "(i.status = 'running' OR (i.status = 'pending' AND i.slot IS TRUE) "
    f"OR i.next_deadline IS NOT NULL OR {PENDING})"
)
"""What makes a released instance worth a ``Runnable`` broadcast (as the memory store does)."""
_CHANNEL_SQL: Final = "'hx_' || left(md5({}), 24)"


def channel_of(engine_id: str) -> str:
    """The NOTIFY channel of ``engine_id`` (an identifier PostgreSQL accepts, whatever the id)."""
    return "hx_" + hashlib.md5(engine_id.encode("utf-8")).hexdigest()[:24]


def decode_payload(payload: str) -> Notification | None:
    """The notification a payload of ours carries, or None for anything else."""
    try:
        item = json.loads(payload)
        kind = item[0]
        if kind == "wake":
            return Wake(engine_id=item[1], instance_id=item[2])
        if kind == "replied":
            return Replied(engine_id=item[1], instance_id=item[2], request_id=item[3])
        if kind == "finished":
            return Finished(instance_id=item[1])
        if kind == "runnable":
            return Runnable()
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    return None


def encode_payload(note: Notification) -> tuple[str, str]:
    """``(channel, payload)`` for ``note``."""
    if isinstance(note, Wake):
        return channel_of(note.engine_id), json.dumps(["wake", note.engine_id, note.instance_id])
    if isinstance(note, Replied):
        return channel_of(note.engine_id), json.dumps(
            ["replied", note.engine_id, note.instance_id, note.request_id]
        )
    if isinstance(note, Finished):
        return BROADCAST, json.dumps(["finished", note.instance_id])
    return BROADCAST, json.dumps(["runnable"])


def _lease_of(owner_id: object, owner_epoch: object) -> Lease | None:
    if owner_id is None or owner_epoch is None:
        return None
    return Lease(engine_id=str(owner_id), epoch=int(str(owner_epoch)))


def _lease_lost(lease: Lease) -> LeaseLost:
    return LeaseLost(
        f"the lease of engine {lease.engine_id!r} (epoch {lease.epoch}) is not live: "
        "heartbeat to get a new epoch before claiming"
    )


# --- engines -------------------------------------------------------------------------------------


def register(conn: Any, engine_id: str, ttl: float, skew: float) -> Lease:
    """A new epoch for ``engine_id``, live from the database's now."""
    row = conn.execute(
        "INSERT INTO hx_engines (engine_id, epoch, heartbeat_at, expires_at) "
        f"VALUES (%(id)s, 1, {NOW}, {NOW} + %(ttl)s) ON CONFLICT (engine_id) DO UPDATE SET "
        "epoch = hx_engines.epoch + 1, heartbeat_at = excluded.heartbeat_at, "
        "expires_at = excluded.expires_at RETURNING epoch",
        {"id": engine_id, "ttl": ttl, "skew": skew},
    ).fetchone()
    return Lease(engine_id=engine_id, epoch=int(row[0]))


def heartbeat(conn: Any, lease: Lease, ttl: float, skew: float) -> Heartbeat:
    """Renew ``lease`` if it is live, else register a new epoch (``expired``)."""
    with conn.transaction():
        row = conn.execute(
            f"UPDATE hx_engines SET heartbeat_at = {NOW}, expires_at = {NOW} + %(ttl)s "
            f"WHERE engine_id = %(id)s AND epoch = %(epoch)s AND expires_at > {NOW} "
            "RETURNING expires_at",
            {"id": lease.engine_id, "epoch": lease.epoch, "ttl": ttl, "skew": skew},
        ).fetchone()
        if row is not None:
            return Heartbeat(lease=lease, expired=False, expires_at=float(row[0]))
        fresh = register(conn, lease.engine_id, ttl, skew)
        found = conn.execute(
            "SELECT expires_at FROM hx_engines WHERE engine_id = %s", (lease.engine_id,)
        ).fetchone()
        return Heartbeat(lease=fresh, expired=True, expires_at=float(found[0]))


def release_engine(conn: Any, lease: Lease, skew: float) -> None:
    """Expire ``lease``'s row and unown its instances; ``Runnable`` if any has work."""
    with conn.transaction():
        conn.execute(
            "UPDATE hx_engines SET heartbeat_at = '-infinity', expires_at = '-infinity' "
            "WHERE engine_id = %s AND epoch = %s",
            (lease.engine_id, lease.epoch),
        )
        _release(conn, "i.owner_id = %(id)s AND i.owner_epoch = %(epoch)s", lease, {}, skew)


def release_instances(conn: Any, lease: Lease, instance_ids: Sequence[str], skew: float) -> None:
    """Unown those of ``instance_ids`` that ``lease`` owns; ``Runnable`` if any has work."""
    with conn.transaction():
        _release(
            conn,
            "i.id = ANY(%(ids)s) AND i.owner_id = %(id)s AND i.owner_epoch = %(epoch)s",
            lease,
            {"ids": list(instance_ids)},
            skew,
        )


def _release(conn: Any, where: str, lease: Lease, extra: dict[str, object], skew: float) -> None:
    conn.execute(
        "WITH released AS (UPDATE hx_instances i SET owner_id = NULL, owner_epoch = NULL "
        f"WHERE {where} RETURNING i.id, i.status, i.next_deadline, "
        "(i.status = 'pending' AND i.slot IS TRUE) AS slot) "
        f"SELECT pg_notify('{BROADCAST}', '[\"runnable\"]') WHERE EXISTS (SELECT 1 FROM "
        "released i WHERE i.status = 'running' OR i.next_deadline IS NOT NULL OR i.slot OR EXISTS "
        "(SELECT 1 FROM hx_inbox b WHERE b.instance_id = i.id AND NOT b.consumed))",
        {"id": lease.engine_id, "epoch": lease.epoch, "skew": skew, **extra},
    )


def _check_live(conn: Any, lease: Lease, skew: float) -> None:
    row = conn.execute(
        f"SELECT 1 FROM hx_engines WHERE engine_id = %(id)s AND epoch = %(epoch)s "
        f"AND expires_at > {NOW}",
        {"id": lease.engine_id, "epoch": lease.epoch, "skew": skew},
    ).fetchone()
    if row is None:
        raise _lease_lost(lease)


# --- claims --------------------------------------------------------------------------------------

_STARTABLE: Final = "(i.status = 'pending' AND i.slot IS TRUE)"
"""A PENDING row given an admission slot (``_postgres_admission``): to be started."""
_RUNS: Final = (
    "(i.workflow, i.version) IN (SELECT r.w, r.v FROM "
    "unnest(%(run_names)s::text[], %(run_versions)s::int[]) AS r(w, v))"
)
"""Only the ``(workflow, version)`` pairs the claiming engine runs (``claim(runs=...)``)."""


def _claim_sql(filtered: bool) -> str:
    runs = f"AND {_RUNS} " if filtered else ""
    return (
        "WITH candidates AS (SELECT i.id, i.owner_id, i.owner_epoch FROM hx_instances i "
        f"WHERE (i.status = 'running' OR {_STARTABLE} OR i.next_deadline <= {NOW} "
        f"OR {PENDING}) {runs}"
        f"AND {NOT_HELD} ORDER BY i.id LIMIT %(limit)s FOR UPDATE OF i SKIP LOCKED) "
        "UPDATE hx_instances u SET owner_id = %(id)s, owner_epoch = %(epoch)s "
        "FROM candidates c WHERE u.id = c.id RETURNING u.id, u.snapshot, c.owner_id, "
        "c.owner_epoch"
    )


def _next_due_sql(filtered: bool) -> str:
    runs = f"AND {_RUNS} " if filtered else ""
    return (
        f"SELECT min(i.next_deadline) FROM hx_instances i WHERE i.next_deadline > {NOW} "
        f"AND i.status <> 'running' AND NOT {_STARTABLE} {runs}AND {NOT_HELD} "
        f"AND NOT {PENDING}"
    )


_CLAIM: Final = _claim_sql(False)
_CLAIM_RUNS: Final = _claim_sql(True)
_NEXT_DUE: Final = _next_due_sql(False)
_NEXT_DUE_RUNS: Final = _next_due_sql(True)


def claim(
    conn: Any,
    lease: Lease,
    limit: int,
    skew: float,
    runs: dict[str, object] | None = None,
    unrunnable: Callable[[Any, dict[str, object]], tuple[Unrunnable, ...]] | None = None,
) -> tuple[ClaimBatch, Bad]:
    """Claim at most ``limit`` unheld instances with work, by id (see SharedStorage.claim).

    A claimed row whose snapshot does not decode is moved to ``hx_quarantine``
    in the same transaction and returned in the second item (id, reason)
    instead: one bad row must not stop every engine's claims.
    """
    args = {"id": lease.engine_id, "epoch": lease.epoch, "limit": limit, "skew": skew}
    args.update(runs or {})
    claimed: list[Claimed] = []
    bad: Bad = []
    skipped: tuple[Unrunnable, ...] = ()
    with conn.transaction():
        _check_live(conn, lease, skew)
        rows = conn.execute(_CLAIM if runs is None else _CLAIM_RUNS, args).fetchall()
        due = conn.execute(_NEXT_DUE if runs is None else _NEXT_DUE_RUNS, args).fetchone()
        if runs is not None and unrunnable is not None:
            skipped = unrunnable(conn, args)
        for iid, blob, owner_id, owner_epoch in rows:
            decoded = _decode(str(iid), bytes(blob))
            if isinstance(decoded, str):
                _quarantine(conn, str(iid), bytes(blob), decoded)
                bad.append((str(iid), decoded))
                continue
            claimed.append(
                Claimed(instance=decoded, previous_owner=_lease_of(owner_id, owner_epoch))
            )
    claimed.sort(key=lambda c: c.instance.id)
    next_due = None if due is None or due[0] is None else float(due[0])
    return ClaimBatch(claimed=tuple(claimed), next_due=next_due, unrunnable=skipped), bad


def claim_instance(conn: Any, lease: Lease, instance_id: str, skew: float) -> tuple[ClaimOne, Bad]:
    """Claim ``instance_id`` unless another live lease holds it (see claim_instance).

    A snapshot that does not decode is quarantined (as ``claim`` does) and
    the instance treated as absent.
    """
    args = {"id": lease.engine_id, "epoch": lease.epoch, "iid": instance_id, "skew": skew}
    with conn.transaction():
        _check_live(conn, lease, skew)
        row = conn.execute(
            "SELECT i.snapshot, i.owner_id, i.owner_epoch FROM hx_instances i "
            "WHERE i.id = %(iid)s FOR UPDATE",
            args,
        ).fetchone()
        if row is None:
            return ClaimOne(), []
        blob, owner_id, owner_epoch = row
        decoded = _decode(instance_id, bytes(blob))
        if isinstance(decoded, str):
            _quarantine(conn, instance_id, bytes(blob), decoded)
            return ClaimOne(), [(instance_id, decoded)]
        previous = _lease_of(owner_id, owner_epoch)
        if previous is not None and previous != lease:
            live = conn.execute(
                f"SELECT 1 FROM hx_engines WHERE engine_id = %(oid)s AND epoch = %(oepoch)s "
                f"AND expires_at > {NOW}",
                {"oid": previous.engine_id, "oepoch": previous.epoch, "skew": skew},
            ).fetchone()
            if live is not None:
                return ClaimOne(owner=previous), []
        conn.execute(
            "UPDATE hx_instances SET owner_id = %(id)s, owner_epoch = %(epoch)s WHERE id = %(iid)s",
            args,
        )
    return ClaimOne(claimed=Claimed(instance=decoded, previous_owner=previous)), []


def owner_of(conn: Any, instance_id: str, skew: float) -> Lease | None:
    """The live lease holding ``instance_id``, or None."""
    row = conn.execute(
        f"SELECT i.owner_id, i.owner_epoch FROM hx_instances i WHERE i.id = %(iid)s AND {LIVE}",
        {"iid": instance_id, "skew": skew},
    ).fetchone()
    return None if row is None else _lease_of(row[0], row[1])


Bad = list[tuple[str, str]]
"""(instance id, why its snapshot could not be read) of rows a call quarantined."""


def _decode(instance_id: str, blob: bytes) -> Instance | str:
    """The instance in ``blob``, or why it is not one."""
    try:
        instance = decode_instance(blob)
    except CorruptSnapshot as exc:
        return str(exc)
    if instance.id != instance_id:
        return f"the row of {instance_id!r} holds the snapshot of {instance.id!r}"
    return instance


def _quarantine(conn: Any, instance_id: str, blob: bytes, reason: str) -> None:
    conn.execute(
        "WITH moved AS (DELETE FROM hx_instances WHERE id = %s RETURNING id, snapshot) "
        "INSERT INTO hx_quarantine (id, snapshot, reason, at) "
        "SELECT id, snapshot, %s, extract(epoch FROM now()) FROM moved",
        (instance_id, reason),
    )


# --- the fenced write ----------------------------------------------------------------------------

_PUT_OWNED_NEW: Final = (
    "INSERT INTO hx_instances (id, workflow, version, status, revision, updated_at, "
    "next_deadline, snapshot, owner_id, owner_epoch) VALUES (%(iid)s, %(workflow)s, "
    "%(version)s, %(status)s, %(revision)s, %(updated_at)s, %(deadline)s, %(snapshot)s, "
    "%(owner)s, %(owner_epoch)s) ON CONFLICT (id) DO NOTHING RETURNING revision, status"
)
_PUT_OWNED: Final = (
    "UPDATE hx_instances SET workflow = %(workflow)s, version = %(version)s, "
    "status = %(status)s, revision = %(revision)s, updated_at = %(updated_at)s, "
    "next_deadline = %(deadline)s, snapshot = %(snapshot)s, owner_id = %(owner)s, "
    "owner_epoch = %(owner_epoch)s WHERE id = %(iid)s AND revision = %(expected)s "
    "AND owner_id = %(id)s AND owner_epoch = %(epoch)s RETURNING revision, status"
)
_CONSUME: Final = (
    "WITH answered AS (UPDATE hx_inbox b SET consumed = true, answer = v.answer "
    "FROM unnest(%(rids)s::text[], %(answers)s::bytea[]) AS v(rid, answer) "
    "WHERE b.instance_id = %(iid)s AND b.request_id = v.rid AND NOT b.consumed "
    "RETURNING b.sender, b.request_id) "
    f"SELECT pg_notify({_CHANNEL_SQL.format('a.sender')}, "
    "json_build_array('replied', a.sender, %(iid)s::text, a.request_id)::text) FROM answered a"
)
_CONSUME_WRITTEN: Final = (
    "answered AS (UPDATE hx_inbox b SET consumed = true, answer = v.answer "
    "FROM w, unnest(%(rids)s::text[], %(answers)s::bytea[]) AS v(rid, answer) "
    "WHERE b.instance_id = %(iid)s AND b.request_id = v.rid AND NOT b.consumed "
    f"RETURNING pg_notify({_CHANNEL_SQL.format('b.sender')}, "
    "json_build_array('replied', b.sender, %(iid)s::text, b.request_id)::text))"
)
"""Mark the inbox rows consumed with their answers, and notify their senders, if ``w`` wrote."""


@functools.cache
def put_owned_sql(*, new: bool, consumed: bool, terminal: bool, release: bool) -> str:
    """The one statement of a fenced write: the row, its inbox rows, its notifications.

    It returns one row ``(revision, ...)`` when the fence let the write
    through, none when it did not; everything else it does depends on that
    row (``w``), so a refused write changes and sends nothing. Its parts run
    on one snapshot: the ``Runnable`` test of a released instance leaves out
    the inbox rows this very statement consumes.
    """
    parts = [f"WITH w AS ({_PUT_OWNED_NEW if new else _PUT_OWNED})"]
    if consumed:
        parts.append(f", {_CONSUME_WRITTEN}")
    columns = ["w.revision"]
    if consumed:
        columns.append("(SELECT count(*) FROM answered)")
    if terminal:
        columns.append(
            f"pg_notify('{BROADCAST}', json_build_array('finished', %(iid)s::text)::text)"
        )
    if release:
        unconsumed = " AND b.request_id <> ALL(%(rids)s::text[])" if consumed else ""
        columns.append(
            f"CASE WHEN w.status = 'running' OR EXISTS (SELECT 1 FROM hx_inbox b "
            f"WHERE b.instance_id = %(iid)s AND NOT b.consumed{unconsumed}) "
            f"THEN pg_notify('{BROADCAST}', '[\"runnable\"]') END"
        )
    parts.append(f" SELECT {', '.join(columns)} FROM w")
    return "".join(parts)


def owned_row_args(row: Row, lease: Lease, *, release: bool) -> dict[str, object]:
    """The SQL parameters of a row that ``lease`` writes (no owner with ``release``)."""
    iid, workflow, version, status, revision, updated_at, deadline, snapshot = row
    return {
        "iid": iid,
        "workflow": workflow,
        "version": version,
        "status": status,
        "revision": revision,
        "updated_at": updated_at,
        "deadline": deadline,
        "snapshot": snapshot,
        "owner": None if release else lease.engine_id,
        "owner_epoch": None if release else lease.epoch,
    }


@final
class PutOwned:
    """``put_owned`` as a writer op: the fenced write and what rides in its transaction."""

    __slots__ = ("args", "consumed", "expected", "instance_id", "lease", "release", "terminal")

    def __init__(
        self,
        lease: Lease,
        row: Row,
        *,
        expected: int,
        release: bool,
        consumed: Sequence[Consumed],
        terminal: bool,
    ) -> None:
        self.instance_id = row[0]
        self.lease = lease
        self.expected = expected
        self.release = release
        self.consumed = tuple(consumed)
        self.terminal = terminal
        self.args = owned_row_args(row, lease, release=release)
        self.args.update(id=lease.engine_id, epoch=lease.epoch, expected=expected)
        if self.consumed:
            self.args.update(consumed_args(self.consumed))

    def send(self, conn: psycopg.Connection[tuple[Any, ...]]) -> psycopg.Cursor[Any]:
        sql = put_owned_sql(
            new=self.expected == 0,
            consumed=bool(self.consumed),
            terminal=self.terminal,
            release=self.release,
        )
        return conn.execute(sql, self.args)

    def finish(
        self, conn: psycopg.Connection[tuple[Any, ...]], cur: psycopg.Cursor[Any]
    ) -> outcome.Outcome[Any]:
        if cur.fetchone() is None:
            return outcome.Error(self._refusal(conn))
        return outcome.Value(None)

    def _refusal(self, conn: psycopg.Connection[tuple[Any, ...]]) -> Exception:
        row = conn.execute(
            "SELECT revision, owner_id, owner_epoch FROM hx_instances WHERE id = %s",
            (self.instance_id,),
        ).fetchone()
        lease = self.lease
        if row is None:
            return LeaseLost(
                f"instance {self.instance_id!r} is no longer stored: this engine "
                f"({lease.engine_id}, epoch {lease.epoch}) does not own it"
            )
        revision, owner_id, owner_epoch = int(row[0]), row[1], row[2]
        if self.expected == 0:
            return RevisionConflict(
                f"instance {self.instance_id!r} is at revision {revision}, not the expected 0"
            )
        owner = _lease_of(owner_id, owner_epoch)
        if owner != lease:
            held = "nobody" if owner is None else f"{owner.engine_id}/{owner.epoch}"
            return LeaseLost(
                f"instance {self.instance_id!r} is owned by {held}, not by "
                f"{lease.engine_id}/{lease.epoch}: its lease was lost"
            )
        if revision == self.expected:
            # Revisions only grow and claims keep them, so the fence refused the owner: the
            # instance was let go or taken, and claimed back by this lease since.
            return LeaseLost(
                f"instance {self.instance_id!r} was not owned by {lease.engine_id}/"
                f"{lease.epoch} when this write was made (it was claimed back since)"
            )
        return RevisionConflict(
            f"instance {self.instance_id!r} is at revision {revision}, "
            f"not the expected {self.expected}"
        )


def consumed_args(consumed: Sequence[Consumed]) -> dict[str, object]:
    """The SQL parameters of inbox rows consumed with their answers (``rids``, ``answers``)."""
    return {
        "rids": [c.request_id for c in consumed],
        "answers": [encode_answer(c.answer) for c in consumed],
    }


def consume(conn: Any, instance_id: str, consumed: Sequence[Consumed]) -> None:
    """Mark ``consumed`` inbox rows of ``instance_id`` (first answer kept); notify the senders."""
    conn.execute(_CONSUME, {"iid": instance_id, **consumed_args(consumed)})


def answer_requests(
    conn: Any, lease: Lease, instance_id: str, consumed: Sequence[Consumed]
) -> None:
    """Mark inbox rows consumed (first answer kept) if ``lease`` owns the instance.

    Raises:
        LeaseLost: it does not (or the instance is gone); nothing is marked.
    """
    with conn.transaction():
        row = conn.execute(
            "SELECT owner_id, owner_epoch FROM hx_instances WHERE id = %s FOR SHARE",
            (instance_id,),
        ).fetchone()
        if row is None:
            raise LeaseLost(f"instance {instance_id!r} is no longer stored")
        owner = _lease_of(row[0], row[1])
        if owner != lease:
            held = "nobody" if owner is None else f"{owner.engine_id}/{owner.epoch}"
            raise LeaseLost(
                f"instance {instance_id!r} is owned by {held}, not by "
                f"{lease.engine_id}/{lease.epoch}: its lease was lost"
            )
        if consumed:
            consume(conn, instance_id, consumed)


# --- the inbox -----------------------------------------------------------------------------------


def append_request(conn: Any, request: InboxRequest, skew: float) -> Appended:
    """Append ``request`` once per ``(instance_id, request_id)``; wake the live owner."""
    iid = request.instance_id
    args = {"iid": iid, "rid": request.request_id, "skew": skew}
    with conn.transaction():
        # FOR SHARE: no claim or delete of the instance slips between reading its owner
        # and committing the row (a claimer skips the locked row until then).
        found = conn.execute(
            f"SELECT i.owner_id, i.owner_epoch, {LIVE} FROM hx_instances i "
            "WHERE i.id = %(iid)s FOR SHARE",
            args,
        ).fetchone()
        if found is None:
            refused = Refused(error="InstanceNotFound", message=f"no instance {iid!r}")
            return Appended(row=InboxRow(request=request, seq=0, consumed=True, answer=refused))
        owner = _lease_of(found[0], found[1]) if found[2] else None
        new = conn.execute(
            "INSERT INTO hx_inbox (instance_id, request_id, sender, request) "
            "VALUES (%(iid)s, %(rid)s, %(sender)s, %(request)s) "
            "ON CONFLICT (instance_id, request_id) DO NOTHING RETURNING seq",
            {**args, "sender": request.sender, "request": encode_request(request)},
        ).fetchone()
        if new is None:
            existing = get_request(conn, iid, request.request_id)
            assert existing is not None  # the conflicting row, under the same share lock
            return Appended(row=existing, duplicate=True, owner=owner)
        if owner is not None:
            conn.execute(
                "SELECT pg_notify(%s, %s)",
                encode_payload(Wake(engine_id=owner.engine_id, instance_id=iid)),
            )
    return Appended(row=InboxRow(request=request, seq=int(new[0])), owner=owner)


def _inbox_row(seq: object, request: object, consumed: object, answer: object) -> InboxRow:
    decoded: Answer | None = None if answer is None else decode_answer(bytes(answer))  # type: ignore[call-overload]
    return InboxRow(
        request=decode_request(bytes(request)),  # type: ignore[call-overload]
        seq=int(str(seq)),
        consumed=bool(consumed),
        answer=decoded,
    )


def pending_requests(conn: Any, instance_id: str) -> list[InboxRow]:
    """The unconsumed inbox rows of ``instance_id``, by ``seq``."""
    rows = conn.execute(
        "SELECT seq, request, consumed, answer FROM hx_inbox "
        "WHERE instance_id = %s AND NOT consumed ORDER BY seq",
        (instance_id,),
    ).fetchall()
    return [_inbox_row(*row) for row in rows]


def pending_instances(conn: Any, lease: Lease) -> list[str]:
    """Ids of instances ``lease`` owns that have unconsumed inbox rows, by id."""
    rows = conn.execute(
        "SELECT DISTINCT b.instance_id FROM hx_inbox b JOIN hx_instances i "
        "ON i.id = b.instance_id WHERE NOT b.consumed AND i.owner_id = %s "
        "AND i.owner_epoch = %s ORDER BY b.instance_id",
        (lease.engine_id, lease.epoch),
    ).fetchall()
    return [str(row[0]) for row in rows]


def get_request(conn: Any, instance_id: str, request_id: str) -> InboxRow | None:
    """The inbox row ``(instance_id, request_id)``, or None."""
    row = conn.execute(
        "SELECT seq, request, consumed, answer FROM hx_inbox "
        "WHERE instance_id = %s AND request_id = %s",
        (instance_id, request_id),
    ).fetchone()
    return None if row is None else _inbox_row(*row)


def notify(conn: Any, note: Notification) -> None:
    """Send ``note`` now."""
    conn.execute("SELECT pg_notify(%s, %s)", encode_payload(note))


def is_terminal(status: str) -> bool:
    """True for the status column of a terminal instance."""
    return Status(status).is_terminal
