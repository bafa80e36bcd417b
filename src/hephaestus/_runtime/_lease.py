"""The write token becomes a lease: the engine's Storage view of a shared store.

On a shared store the engine keeps its usual write path (runners and callers
call ``storage.put(instance, expected_revision=...)`` under the write token)
but hands it a :class:`LeasedStorage` instead of the store itself. Its
``put`` is the fenced write, ``put_owned`` with the engine's current lease:
it stores nothing and raises :class:`LeaseLost` when another engine holds
the instance now. A terminal snapshot is written with ``release``, so
finished instances have no owner.

It also folds inbox rows into the write that applies them: the task that
serves a request from the shared inbox registers the request's input object
with :func:`absorbing`, and the runner announces, with :func:`applying`, the
input and reply of each caller's transition it stores (in the caller's task
under the token, or in its own task when the request came by mail). The put
of that transition marks the row consumed, with its answer, in the same
transaction, so an owner that dies after the write cannot leave the row to be
applied again. Only requests that change nothing (refused, or a dedupe key
seen before) are answered by a write of their own; applying those again is
harmless.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import logging
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any, Final, final

import trio

from .._core._admission import holds_slot
from .._core._errors import RevisionConflict
from .._core._model import Instance, Status
from .._core._notes import Reply
from ..storage._shared import Accepted, Consumed, Lease, LeaseLost, SharedStorage

if TYPE_CHECKING:
    from ._shared import SharedRuntime

_log = logging.getLogger("hephaestus.engine")


@final
class Absorb:
    """An inbox row being applied: ``done`` once a write consumed it."""

    __slots__ = ("done", "instance_id", "request_id")

    def __init__(self, instance_id: str, request_id: str) -> None:
        self.instance_id = instance_id
        self.request_id = request_id
        self.done = False


_absorbs: dict[int, Absorb] = {}
"""``id()`` of a request input being served from the inbox -> its row (the server holds it)."""
_applying: contextvars.ContextVar[tuple[object, Reply] | None] = contextvars.ContextVar(
    "hephaestus_applying", default=None
)
_NOTHING: Final = contextlib.nullcontext()


@contextlib.contextmanager
def absorbing(instance_id: str, request_id: str, request: object) -> Iterator[Absorb]:
    """Mark ``request`` (a core input) as coming from the inbox row ``request_id``.

    Whichever task then stores the transition that applies this very input
    object, the caller's or the runner's, consumes the row in that write.
    """
    absorb = Absorb(instance_id, request_id)
    key = id(request)
    _absorbs[key] = absorb
    try:
        yield absorb
    finally:
        if _absorbs.get(key) is absorb:
            del _absorbs[key]


def applying(event: object, reply: Reply) -> contextlib.AbstractContextManager[object]:
    """Announce that this task is about to store the transition of ``event``, answering ``reply``.

    Costs a dict lookup when ``event`` comes from no inbox row (always, unshared).
    """
    if id(event) not in _absorbs:
        return _NOTHING
    return _announced(event, reply)


@contextlib.contextmanager
def _announced(event: object, reply: Reply) -> Iterator[None]:
    token = _applying.set((event, reply))
    try:
        yield
    finally:
        _applying.reset(token)


def answer_value(reply: object) -> str | bool | None:
    """What the engine method returns for a core reply: a Delivery is None (``resume``)."""
    if isinstance(reply, enum.Enum) or reply is None:
        return None
    if isinstance(reply, str | bool):
        return reply
    raise TypeError(f"no answer for reply {reply!r}")  # pragma: no cover - a core change


@final
class LeasedStorage:
    """A :class:`Storage` over a shared store whose writes are fenced by the engine's lease.

    ``lease`` is replaced when the heartbeat starts a new epoch; writes made
    after that with instances of the old epoch raise ``LeaseLost``.

    Instances of a workflow in ``limits`` (``max_active`` by name) are written
    with ``put_limited`` whenever the write may change their admission slot:
    a PENDING snapshot (stored released: a queued instance has no owner, so
    whichever engine claims it once it is given a slot starts it), a terminal
    one (frees the slot, which the store hands on in the same transaction),
    and a RUNNING or WAITING one not yet known to hold a slot (takes one, or
    ``AdmissionFull``). Writes of instances known to hold one stay plain
    fenced writes.
    """

    __slots__ = ("lease", "limits", "renewed_at", "shared", "slotted")

    def __init__(
        self, shared: SharedStorage, lease: Lease, limits: dict[str, int] | None = None
    ) -> None:
        self.shared = shared
        self.lease = lease
        self.limits: dict[str, int] = {} if limits is None else limits
        """``max_active`` by workflow name (this engine's highest versions)."""
        self.slotted: set[str] = set()
        """Ids this engine wrote admitted (RUNNING or WAITING) through ``put_limited``."""
        self.renewed_at = trio.current_time()
        """Trio time just after the store last renewed (or handed out) ``lease``."""

    def lapsed(self, ttl: float) -> bool:
        """True when ``lease`` has certainly expired: no renewal came back for a whole TTL.

        The store renewed it at the latest when its answer came back, so a TTL
        after that it is over (an engine paused or cut off that long).
        """
        return trio.current_time() - self.renewed_at >= ttl

    @property
    def is_open(self) -> bool:
        """The store is open for as long as the engine runs on it."""
        return True

    async def aopen(self) -> None:
        """Nothing to do: ``open_engine`` opens the shared store itself."""

    async def aclose(self) -> None:
        """Nothing to do: ``open_engine`` closes the shared store itself."""

    async def __aenter__(self) -> LeasedStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def get(self, instance_id: str) -> Instance | None:
        """Read the stored snapshot, whoever owns it."""
        got: Instance | None = await self._store.get(instance_id)
        return got

    async def put(self, instance: Instance, *, expected_revision: int | None = None) -> None:
        """The fenced write: store ``instance`` only if this engine's lease still owns it.

        A terminal instance is released by the same write. An inbox row that
        this task is applying (:func:`absorbing`) is consumed by it. A
        terminal snapshot written over a stored terminal one (a schedule's
        progress record, a finished instance) is a plain compare-and-set: it
        claims the row first, and an engine writing it at the same moment
        makes it a RevisionConflict.

        Raises:
            LeaseLost: another engine holds the instance now (nothing stored).
            RevisionConflict: the stored revision is not ``expected_revision``
                (or another engine is writing the same finished record).
            AdmissionFull: the write would admit an instance of a workflow
                whose ``max_active`` is full (nothing stored).
        """
        consumed: list[Consumed] = []
        absorb: Absorb | None = None
        announced = _applying.get()
        if announced is not None:
            event, reply = announced
            absorb = _absorbs.get(id(event))
            if absorb is not None and absorb.instance_id == instance.id and not absorb.done:
                answer = Accepted(value=answer_value(reply))
                consumed.append(Consumed(request_id=absorb.request_id, answer=answer))
        expected = 0 if expected_revision is None else expected_revision
        release = instance.status.is_terminal
        try:
            await self._put(instance, expected, release, consumed)
        except LeaseLost:
            if not release or expected == 0:
                raise
            stored: Instance | None = await self._store.get(instance.id)
            if stored is None or not stored.status.is_terminal:
                raise  # a live instance someone else runs, or gone: not ours to write
            one = await self.shared.claim_instance(self.lease, instance.id)
            if one.claimed is None:
                raise RevisionConflict(
                    f"instance {instance.id!r} is being written by another engine"
                ) from None
            await self._put(instance, expected, release, consumed)
        if absorb is not None and consumed:
            absorb.done = True

    async def _put(
        self, instance: Instance, expected: int, release: bool, consumed: list[Consumed]
    ) -> None:
        """The fenced write, through ``put_limited`` when it may change an admission slot."""
        limit = self.limits.get(instance.workflow)
        iid = instance.id
        if limit is None or (holds_slot(instance) and iid in self.slotted):
            await self.shared.put_owned(
                self.lease, instance, expected_revision=expected, release=release, consumed=consumed
            )
            return
        pending = instance.status is Status.PENDING
        try:
            await self.shared.put_limited(
                self.lease,
                instance,
                expected_revision=expected,
                max_active=limit,
                release=release or pending,
                consumed=consumed,
            )
        except BaseException:
            self.slotted.discard(iid)
            raise
        if holds_slot(instance):
            self.slotted.add(iid)
        else:
            self.slotted.discard(iid)

    async def delete(self, instance_id: str) -> None:
        """Remove the instance (only finished ones are deleted: they have no owner)."""
        await self._store.delete(instance_id)

    async def query(
        self,
        *,
        workflow: str | None = None,
        status: Status | Collection[Status] | None = None,
    ) -> list[Instance]:
        """Read the stored instances, whoever owns them."""
        found: list[Instance] = await self._store.query(workflow=workflow, status=status)
        return found

    def __getattr__(self, name: str) -> Any:
        # Optional extras of the store (query_page, on_quarantine) are the store's own.
        if name == "query_page" and hasattr(self.shared, "query_page"):
            return self.shared.query_page
        raise AttributeError(name)

    @property
    def _store(self) -> Any:
        return self.shared


async def heartbeat_loop(runtime: SharedRuntime) -> None:
    """Renew the engine's lease every TTL/4 until cancelled (see :func:`renew`).

    A renewal that fails (the store is unreachable) is logged and tried again
    next time; if that lasts a TTL, the lease expires and the next renewal
    that gets through starts a new epoch.
    """
    while True:
        await trio.sleep(runtime.poll)
        try:
            await renew(runtime, runtime.lease)
        except Exception as exc:
            _log.warning(
                "engine %s could not renew its lease (%s: %s)",
                runtime.engine_id,
                type(exc).__name__,
                exc,
            )
            runtime.emit(
                "storage.error",
                metadata={"operation": "heartbeat", "error": type(exc).__name__},
            )


async def renew(runtime: SharedRuntime, seen: Lease) -> None:
    """Renew the lease ``seen``; if it had expired, drop everything, then take the new epoch.

    A lease that expired (the engine was paused or cut off longer than the
    TTL, and others may have claimed its instances) makes this engine drop
    every instance it holds *before* anything is written or claimed under the
    new epoch the store handed out. Renewals are serialised; one asked for a
    lease that was replaced meanwhile does nothing.

    Raises:
        Exception: the store's error when the renewal did not get through.
    """
    async with runtime.renewing:
        if runtime.lease != seen:
            return
        beat = await runtime.store.heartbeat(seen)
        if not beat.expired:
            runtime.leased.renewed_at = trio.current_time()
            return
        _log.warning(
            "engine %s found its lease (epoch %d) expired; dropping its instances and "
            "going on as epoch %d",
            seen.engine_id,
            seen.epoch,
            beat.lease.epoch,
        )
        runtime.drop_all(
            LeaseLost(f"the lease of engine {seen.engine_id} (epoch {seen.epoch}) expired")
        )
        runtime.leased.lease = beat.lease
        runtime.leased.renewed_at = trio.current_time()
        runtime.emit("engine.lease", metadata={"expired_epoch": seen.epoch})
        runtime.claimer_wake.set()
