"""The write token becomes a lease: the engine's Storage view of a shared store.

On a shared store the engine keeps its usual write path (runners and callers
call ``storage.put(instance, expected_revision=...)`` under the write token)
but hands it a :class:`LeasedStorage` instead of the store itself. Its
``put`` is the fenced write, ``put_owned`` with the engine's current lease:
it stores nothing and raises :class:`LeaseLost` when another engine holds
the instance now. A terminal snapshot is written with ``release``, so
finished instances have no owner.

It also folds inbox rows into the write that applies them: the task that
serves a request from the shared inbox marks it with :func:`absorbing`, and
the put made for it in that task (``Runner.persist_request`` announces the
transition's reply with :func:`replying`) marks the row consumed, with its
answer, in the same transaction.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import logging
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any, final

import trio

from .._core._model import Instance, Status
from .._core._notes import Reply
from ..storage._shared import Accepted, Consumed, Lease, LeaseLost, SharedStorage

if TYPE_CHECKING:
    from ._shared import SharedRuntime

_log = logging.getLogger("hephaestus.engine")


@final
class Absorb:
    """An inbox row being applied by this task: set ``done`` once a write consumed it."""

    __slots__ = ("done", "instance_id", "request_id")

    def __init__(self, instance_id: str, request_id: str) -> None:
        self.instance_id = instance_id
        self.request_id = request_id
        self.done = False


_absorbing: contextvars.ContextVar[Absorb | None] = contextvars.ContextVar(
    "hephaestus_absorbing", default=None
)
_no_reply = object()
_reply: contextvars.ContextVar[object] = contextvars.ContextVar(
    "hephaestus_reply", default=_no_reply
)


@contextlib.contextmanager
def absorbing(instance_id: str, request_id: str) -> Iterator[Absorb]:
    """Mark the inbox row ``request_id`` as what this task's next write of the instance applies."""
    absorb = Absorb(instance_id, request_id)
    token = _absorbing.set(absorb)
    try:
        yield absorb
    finally:
        _absorbing.reset(token)


@contextlib.contextmanager
def replying(reply: Reply) -> Iterator[None]:
    """Announce the reply of the transition this task is about to store (a no-op unshared)."""
    if _absorbing.get() is None:
        yield
        return
    token = _reply.set(reply)
    try:
        yield
    finally:
        _reply.reset(token)


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
    """

    __slots__ = ("lease", "shared")

    def __init__(self, shared: SharedStorage, lease: Lease) -> None:
        self.shared = shared
        self.lease = lease

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
        this task is applying (:func:`absorbing`) is consumed by it.

        Raises:
            LeaseLost: another engine holds the instance now (nothing stored).
            RevisionConflict: the stored revision is not ``expected_revision``.
        """
        consumed: list[Consumed] = []
        absorb = _absorbing.get()
        reply = _reply.get()
        if absorb is not None and absorb.instance_id == instance.id and reply is not _no_reply:
            consumed.append(
                Consumed(request_id=absorb.request_id, answer=Accepted(value=answer_value(reply)))
            )
        await self.shared.put_owned(
            self.lease,
            instance,
            expected_revision=0 if expected_revision is None else expected_revision,
            release=instance.status.is_terminal,
            consumed=consumed,
        )
        if absorb is not None and consumed:
            absorb.done = True

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
    """Renew the engine's lease every TTL/4 until cancelled.

    A renewal that finds the lease expired (the engine was paused or cut off
    longer than the TTL, and others may have claimed its instances) drops
    every instance this engine holds *before* writing under the new epoch
    the store handed out. A renewal that fails (the store is unreachable) is
    logged and tried again next time; if that lasts a TTL, the lease
    expires and the next renewal that gets through starts a new epoch.
    """
    store = runtime.store
    while True:
        await trio.sleep(runtime.poll)
        try:
            beat = await store.heartbeat(runtime.lease)
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
            continue
        if beat.expired:
            old = runtime.lease
            _log.warning(
                "engine %s found its lease (epoch %d) expired; dropping its instances and "
                "going on as epoch %d",
                old.engine_id,
                old.epoch,
                beat.lease.epoch,
            )
            runtime.drop_all(
                LeaseLost(f"the lease of engine {old.engine_id} (epoch {old.epoch}) expired")
            )
            runtime.leased.lease = beat.lease
            runtime.emit("engine.lease", metadata={"expired_epoch": old.epoch})
            runtime.claimer_wake.set()
