"""The runtime's shared path: how an engine works when other engines share its store.

:class:`SharedRuntime` is what ``open_engine`` adds when the storage
implements :class:`~hephaestus.storage.SharedStorage`. The engine keeps its
registry, runners, write token and timer service, but only for instances its
lease owns; this module decides which those are and routes the rest:

- the heartbeat (:mod:`._lease`) renews the lease every TTL/4; a renewal
  that finds it expired drops every resident instance (:meth:`drop_all`)
  before the new epoch is used;
- the claimer (:mod:`._claimer`) claims runnable, due and mailed instances
  that no live engine holds, in batches, and gives them runners (the same
  recovery ``open_engine`` does on one engine);
- the listener turns notifications into wake-ups: inbox rows for instances
  this engine owns are served (:meth:`serve_inbox`), replies and finished
  instances wake the callers waiting for them, released work wakes the claimer;
- a request (``resume``, ``cancel``, ``retry``, ``schedule_resume``,
  ``cancel_timer``) for an instance this engine holds is applied here as on
  one engine; for one nobody holds, this engine claims it and applies it
  itself; for one another live engine holds, it goes through the shared
  inbox, and the caller waits for the owner's stored answer;
- a passivated instance is released (it has no owner), and an instance whose
  fenced write found another owner is dropped: no retry, no restart.

Notifications are only wake-ups: every wait here also polls the store every
TTL/4, so a lost notification costs latency, never correctness.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, final

import trio

from .._core import _errors
from .._core._codec import detached_instance
from .._core._engine import Deliver, Input, Recover
from .._core._engine import Retry as RetryInput
from .._core._errors import (
    AlreadyRunning,
    EngineClosed,
    EventRejected,
    HephaestusError,
    InstanceNotFound,
    RunnerFailed,
)
from .._core._model import Instance
from .._core._workflow import Workflow
from ..storage import _shared as _store_errors
from ..storage._shared import (
    Accepted,
    Answer,
    Claimed,
    ClaimOne,
    Consumed,
    Finished,
    InboxRequest,
    InboxRow,
    Lease,
    LeaseLost,
    Notification,
    Refused,
    Replied,
    Request,
    Runnable,
    SharedStorage,
    Wake,
)
from ._claimer import claim_loop
from ._lease import LeasedStorage, absorbing, answer_value, applying, heartbeat_loop, renew
from ._mailbox import Message
from ._registry import Entry, State
from ._supervisor import drain, stuck_message

if TYPE_CHECKING:
    from ._engine import Engine

_log = logging.getLogger("hephaestus.engine")

_HELD: Final = (State.LIVE, State.PASSIVE)


def new_engine_id() -> str:
    """An engine id that says where the engine runs and never repeats: host, pid, random."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _error_class(name: str) -> Callable[[str], HephaestusError]:
    """The ``hx`` exception an answer names (EventRejected for a name this release lacks).

    The core's errors, and the shared store's (``AdmissionFull``, ``LeaseLost``).
    """
    found = getattr(_errors, name, None) or getattr(_store_errors, name, None)
    if isinstance(found, type) and issubclass(found, HephaestusError):
        return found
    return EventRejected


@final
class SharedRuntime:
    """An engine's part in a group of engines sharing one store (see the module doc)."""

    def __init__(self, engine: Engine, store: SharedStorage, leased: LeasedStorage) -> None:
        self.engine = engine
        self.store = store
        self.leased = leased
        self.poll = store.lease_ttl / 4
        """Seconds between polls of the store when no notification came (and heartbeats)."""
        self._replies: dict[str, trio.Event] = {}
        self._finished: dict[str, trio.Event] = {}
        self._waiting: dict[str, int] = {}
        """Instance id -> ``wait`` calls on it (its ``_finished`` event goes with the last)."""
        self._serving: set[str] = set()
        self._again: set[str] = set()
        self._letting_go: dict[str, bool] = {}
        """Instances being released by :meth:`let_go` -> claimed back meanwhile (keep them)."""
        self.unsure: set[str] = set()
        """Ids whose first write failed and may have landed: the claimer looks (:meth:`recheck`)."""
        self.claimer_wake = trio.Event()
        """Set when released work may be claimable; the claimer replaces it after each look."""
        self.claimer_wakes_at = math.inf
        """When (trio time) the claimer looks next unless woken."""
        self.renewing = trio.Lock()
        """Held while the lease is renewed (:func:`._lease.renew`): one renewal at a time."""

    @property
    def lease(self) -> Lease:
        """The lease this engine writes under now."""
        return self.leased.lease

    @property
    def engine_id(self) -> str:
        """This engine's id in the store."""
        return self.leased.lease.engine_id

    def start(self, nursery: trio.Nursery) -> None:
        """Start the heartbeat, the claimer and the listener in the engine's nursery."""
        nursery.start_soon(heartbeat_loop, self)
        nursery.start_soon(claim_loop, self)
        nursery.start_soon(self._listen_loop)

    def close(self) -> None:
        """Wake every caller waiting here: the engine is closing."""
        for event in [*self._replies.values(), *self._finished.values()]:
            event.set()

    async def release(self) -> None:
        """End this engine's lease so that others take its instances over at once.

        Called when ``open_engine`` exits, shielded from cancellation for at
        most a TTL. A store that cannot be reached in that time is logged: the
        lease then expires after its TTL instead.
        """
        with self._bounded_shield():
            try:
                await self.store.release_engine(self.lease)
            except Exception as exc:
                _log.warning(
                    "engine %s could not release its lease (%s: %s); it expires in %.1f s",
                    self.engine_id,
                    type(exc).__name__,
                    exc,
                    self.store.lease_ttl,
                )

    # -- telemetry -----------------------------------------------------------------------------

    def emit(
        self,
        name: str,
        instance_id: str | None = None,
        workflow: str | None = None,
        *,
        measurements: dict[str, float] | None = None,
        metadata: dict[str, object] | None = None,
    ) -> None:
        """Emit a telemetry event about this engine (and an instance), if anyone listens."""
        telemetry = self.engine.telemetry
        if telemetry.enabled:
            telemetry.emit(
                name,
                instance_id=instance_id,
                workflow=workflow,
                measurements=measurements,
                metadata={"engine": self.engine_id, "epoch": self.lease.epoch, **(metadata or {})},
            )

    # -- owning instances ----------------------------------------------------------------------

    def recheck(self, instance_id: str) -> None:
        """Have the claimer check whether the store gives ``instance_id`` to this engine.

        For an instance whose first write failed with a storage error: it may
        have committed, owned by this engine's lease, which no other engine
        claims while this one lives. The claimer's next round asks the store
        and claims back (and runs) what it finds owned here and not held.
        """
        self.unsure.add(instance_id)
        self.claimer_wake.set()

    def adopt(self, claimed: Claimed) -> Entry | None:
        """Take a claimed instance into the registry, with a runner if it has steps to run.

        Returns its entry, or None when this engine does not run it (finished,
        or a workflow this engine lacks): the caller releases it then.
        """
        instance = claimed.instance
        engine = self.engine
        registry = engine._registry
        previous = claimed.previous_owner
        if previous is not None and previous != self.lease:
            self.emit(
                "engine.takeover",
                instance.id,
                instance.workflow,
                metadata={"from_engine": previous.engine_id, "from_epoch": previous.epoch},
            )
        held = registry.get(instance.id)
        if held is not None and held.state in _HELD:
            if instance.id in self._letting_go and previous != self.lease:
                # Claimed after the release committed: it is ours again. (A claim that
                # found it still ours ran before the release, which unowns it after.)
                self._letting_go[instance.id] = True
            return held
        if instance.status.is_terminal or (held is not None and held.state is State.DELETING):
            return None
        if held is not None:
            del registry[instance.id]  # a stale record (stuck, orphaned): what is stored wins
        engine._recover_instance(instance)
        entry = registry.get(instance.id)
        if entry is None or entry.state not in _HELD:
            if entry is not None:
                del registry[instance.id]
            return None
        return entry

    def drop(self, entry: Entry, cause: LeaseLost) -> None:
        """Forget an instance whose lease this engine lost: no retry, no restart.

        Requests queued for it get ``cause`` (their callers send them again,
        to whoever holds it now). A runner still serving it stops at its next
        message; step code running inline in it finishes, but what it returns
        cannot be stored (the write is fenced).
        """
        engine = self.engine
        instance_id = entry.id
        first = entry.state is not State.DROPPED
        mine = engine._registry.get(instance_id) in (entry, None)
        if engine._registry.get(instance_id) is entry:
            del engine._registry[instance_id]
        running = entry.state is State.LIVE
        entry.mark_done(State.DROPPED)
        if mine:
            engine.timers.disarm_all(instance_id)
        drain(engine, entry, cause)
        if running and entry.mailbox is not None:
            entry.mailbox.put_back([Message(Recover(), fault=cause)])
        if first:
            # After a pause past the lease, fenced writes and drops are the design at work
            # (INFO); a drop while the lease should be live points at a race (WARNING).
            lapsed = self.leased.lapsed(self.store.lease_ttl)
            _log.log(
                logging.INFO if lapsed else logging.WARNING,
                "instance %r dropped by engine %s%s: %s",
                instance_id,
                self.engine_id,
                " (its lease had lapsed)" if lapsed else "",
                cause,
            )
            workflow = None if entry.workflow is None else entry.workflow.name
            self.emit("runner.drop", instance_id, workflow, metadata={"reason": str(cause)})

    def drop_all(self, cause: LeaseLost) -> None:
        """Forget every instance this engine holds (its lease expired)."""
        registry = self.engine._registry
        for entry in list(registry.values()):
            if entry.state in _HELD:
                self.drop(entry, cause)
            elif entry.state is not State.DELETING:
                del registry[entry.id]

    async def let_go(self, entry: Entry) -> None:
        """Release a passivated instance: it leaves the registry and the store unowns it.

        Done holding the write token, so no request of this engine is half
        applied meanwhile; if a caller holds it, that caller lets go after.
        An instance with a timer already due is kept (its timer is firing), and
        so is one this engine claimed back while the release returned
        (:meth:`adopt`): the store names this engine its owner again, so it
        must go on holding it. Cancelled (the engine closing), it keeps the
        instance: the engine's lease is released on exit anyway.
        """
        engine = self.engine
        instance_id = entry.id
        if entry.state is not State.PASSIVE or engine._registry.get(instance_id) is not entry:
            return
        deadlines = list(engine.timers.deadlines(instance_id).values())
        if any(deadline <= engine.clock.now() for deadline in deadlines):
            return
        if not entry.token.try_acquire():
            return
        self._letting_go[instance_id] = False
        try:
            await self.store.release_instances(self.lease, [instance_id])
        except Exception as exc:
            _log.warning(
                "engine %s could not release instance %r (%s: %s); it keeps it",
                self.engine_id,
                instance_id,
                type(exc).__name__,
                exc,
            )
            return
        finally:
            reclaimed = self._letting_go.pop(instance_id, False)
            entry.token.release()
        if reclaimed:
            return
        if engine._registry.get(instance_id) is entry and entry.state is State.PASSIVE:
            del engine._registry[instance_id]
            engine.timers.disarm_all(instance_id)
            entry.mark_done(State.FINISHED)
        if deadlines:
            self._expect_due(min(deadlines))

    def _expect_due(self, deadline: float) -> None:
        """Wake the claimer early if a timer of an instance let go falls due before it looks.

        The other engines learn of it at their next look (``next_due``); this
        one knows now, so the timer fires on time, claimed here or elsewhere.
        """
        wake = trio.current_time() + (deadline - self.engine.clock.now())
        if wake < self.claimer_wakes_at:
            self.claimer_wake.set()

    async def claim_finished(self, workflow: Workflow, stored: Instance) -> None:
        """Claim a finished instance that ``start`` is about to replace.

        Raises:
            AlreadyRunning: another live engine holds it (it is being started there).
        """
        one = await self.claim_instance(stored.id)
        if one.owner is not None:
            raise AlreadyRunning(
                f"instance {stored.id!r} is being started or run by engine "
                f"{one.owner.engine_id}; wait for it to finish or cancel it first"
            )

    async def claim_instance(self, instance_id: str) -> ClaimOne:
        """Claim ``instance_id`` for this engine; a lease found expired is renewed first.

        Raises:
            LeaseLost: the lease could not be renewed.
            Exception: the store's error.
        """
        seen = self.lease
        try:
            return await self.store.claim_instance(seen, instance_id)
        except LeaseLost:
            await renew(self, seen)  # paused past the TTL: drop everything, new epoch
        return await self.store.claim_instance(self.lease, instance_id)

    # -- requests ------------------------------------------------------------------------------

    async def request(self, instance_id: str, event: Input) -> Any:
        """Apply ``event`` wherever the instance is held; return its reply once it is stored.

        Raises:
            InstanceNotFound, EventRejected, ...: as on one engine, also when
                the owner is another engine (its answer is raised here).
            EngineClosed: the engine closed before the request was answered.
        """
        engine = self.engine
        while True:
            await trio.lowlevel.checkpoint()
            engine._check_open()
            entry = engine._registry.get(instance_id)
            if entry is not None and entry.state in (*_HELD, State.STUCK, State.ORPHAN):
                try:
                    reply = await engine._request_here(instance_id, event)
                except LeaseLost:
                    self._drop_if_held(instance_id)
                    continue  # someone else holds it now: route it again
                await self._let_go_if_passive(instance_id)
                return reply
            one = await self.claim_instance(instance_id)
            if one.claimed is not None:
                if self.adopt(one.claimed) is None:
                    await self._release([instance_id])
                    try:
                        return await engine._request_here(instance_id, event)  # from storage
                    except LeaseLost:
                        continue  # it was claimed and changed elsewhere meanwhile: again
                self.engine._nursery.start_soon(self.serve_inbox, instance_id)
                continue
            if one.owner is not None:
                if not isinstance(event, Request):  # pragma: no cover - a new input, a bug
                    raise TypeError(f"{type(event).__name__} cannot be sent to another engine")
                return await self.remote(instance_id, event)
            raise InstanceNotFound(f"no instance with id {instance_id!r}")

    async def retry(self, instance_id: str) -> None:
        """``retry`` on shared storage: claim the failed instance, or ask its owner.

        A write fenced because this engine lost the instance meanwhile (its
        lease expired and another engine took it) is routed again, as any
        request is: ``LeaseLost`` never reaches the caller.

        Raises:
            as :meth:`Engine.retry`.
        """
        engine = self.engine
        while True:
            await trio.lowlevel.checkpoint()
            engine._check_open()
            entry = engine._registry.get(instance_id)
            if entry is not None and entry.state in (*_HELD, State.DELETING):
                try:
                    await engine._retry_here(instance_id)  # active here: refuses, or waits
                except LeaseLost:
                    self._drop_if_held(instance_id)
                    continue  # someone else holds it now: route it again
                return
            one = await self.claim_instance(instance_id)
            if one.claimed is not None:
                try:
                    await engine._retry_here(instance_id)
                except LeaseLost:
                    self._drop_if_held(instance_id)
                    continue
                except BaseException:
                    if engine._registry.get(instance_id) is None:
                        await self._release([instance_id])
                    raise
                return
            if one.owner is not None:
                await self.remote(instance_id, RetryInput())
                return
            raise InstanceNotFound(f"no instance with id {instance_id!r}")

    async def remote(self, instance_id: str, event: Request) -> Any:
        """Send ``event`` through the shared inbox and return the stored answer.

        The row is unique per request id (``dedupe:<key>`` for a resume with a
        dedupe key), so a caller that repeats the call after this engine died
        appends nothing new. While the answer is missing, the owner is woken
        again every poll; if no live engine holds the instance any more, this
        engine claims it and applies the pending rows itself. A caller
        cancelled once the row is appended does not hear the answer, but the
        request stays in the inbox and is applied: it was persisted.

        Raises:
            the owner's answer, as the ``hx`` exception it names.
            EngineClosed: the engine closed before the answer came.
        """
        engine = self.engine
        dedupe = event.dedupe_key if isinstance(event, Deliver) else None
        request_id = f"dedupe:{dedupe}" if dedupe is not None else secrets.token_hex(8)
        replied = self._replies.setdefault(request_id, trio.Event())
        try:
            appended = await self.store.append_request(
                InboxRequest(
                    instance_id=instance_id,
                    request_id=request_id,
                    sender=self.engine_id,
                    request=event,
                    at=engine.clock.now(),
                )
            )
            row = appended.row
            owner = appended.owner
            while row.answer is None:
                if owner is None:
                    one = await self.claim_instance(instance_id)
                    if one.claimed is not None:
                        if self.adopt(one.claimed) is None:
                            await self.serve_unheld(instance_id)
                        else:
                            await self.serve_inbox(instance_id)
                    elif one.owner is None:
                        raise InstanceNotFound(f"no instance with id {instance_id!r}")
                elif owner == self.lease:
                    await self.serve_inbox(instance_id)  # serving already: it looks again
                row = await self._row(instance_id, request_id)
                if row.answer is not None:
                    break
                with trio.move_on_after(self.poll):
                    await replied.wait()
                engine._check_open()
                row = await self._row(instance_id, request_id)
                if row.answer is None:
                    owner = await self.store.owner_of(instance_id)
                    if owner is not None and owner != self.lease:  # a lost wake-up, maybe
                        wake = Wake(engine_id=owner.engine_id, instance_id=instance_id)
                        await self.store.notify(wake)
            return _unwrap(row.answer)
        finally:
            if self._replies.get(request_id) is replied:
                del self._replies[request_id]

    async def _row(self, instance_id: str, request_id: str) -> InboxRow:
        found = await self.store.get_request(instance_id, request_id)
        if found is None:
            raise InstanceNotFound(f"instance {instance_id!r} was deleted")
        return found

    async def serve_inbox(self, instance_id: str) -> None:
        """Apply the pending inbox rows of an instance this engine holds, oldest first.

        Each row's answer is stored with the write that applied it (or on its
        own when nothing changed), and its sender is notified. Stops at the
        first row it cannot apply here (the instance is no longer this
        engine's); a storage error leaves the rest pending for the next try.
        Never raises: it runs as a task of the engine's nursery.
        """
        if instance_id in self._serving:
            self._again.add(instance_id)
            return
        self._serving.add(instance_id)
        try:
            while True:
                self._again.discard(instance_id)
                rows = await self.store.pending_requests(instance_id)
                for row in rows:
                    if not await self._serve_row(row.request):
                        return
                if instance_id not in self._again:
                    break
        except Exception as exc:
            _log.warning(
                "engine %s could not serve the inbox of %r (%s: %s)",
                self.engine_id,
                instance_id,
                type(exc).__name__,
                exc,
            )
        finally:
            self._serving.discard(instance_id)
        await self._let_go_if_passive(instance_id)

    async def _serve_row(self, request: InboxRequest, *, held: bool = True) -> bool:
        """Apply one inbox request here; False if the instance is not this engine's to serve.

        ``held``: the instance must be in the registry (else it was claimed but
        is not run here, and the request is answered from what is stored).
        The ``hx`` error a request meets is its final answer, except
        ``EngineClosed``: the row stays pending for whoever holds the instance
        next (stored, it would answer every later try under a dedupe key).
        """
        engine = self.engine
        instance_id = request.instance_id
        entry = engine._registry.get(instance_id)
        if held and (entry is None or entry.state not in _HELD):
            return False
        answer: Answer
        with absorbing(instance_id, request.request_id, request.request) as absorb:
            try:
                if isinstance(request.request, RetryInput):
                    with applying(request.request, None):  # retry stores in this task
                        await engine._retry_here(instance_id)
                    answer = Accepted()
                else:
                    reply = await engine._request_here(instance_id, request.request)
                    answer = Accepted(value=answer_value(reply))
            except LeaseLost:
                self._drop_if_held(instance_id)
                return False
            except EngineClosed:
                return False  # about this engine, not the request: the next holder applies it
            except HephaestusError as exc:
                answer = Refused(error=type(exc).__name__, message=str(exc))
        if not absorb.done:
            try:
                await self.store.answer_requests(
                    self.lease,
                    instance_id,
                    [Consumed(request_id=request.request_id, answer=answer)],
                )
            except LeaseLost:
                return False
        return True

    async def serve_owned(self, instance_id: str) -> None:
        """Serve the inbox of an instance the store says this engine owns.

        One this engine does not hold in its registry (it lost track of it
        after a failed write) is claimed back and recovered first. Never
        raises: it runs as a task of the engine's nursery.
        """
        entry = self.engine._registry.get(instance_id)
        if entry is not None and entry.state in _HELD:
            await self.serve_inbox(instance_id)
            return
        try:
            one = await self.claim_instance(instance_id)
        except Exception as exc:
            _log.warning(
                "engine %s could not claim %r back (%s: %s)",
                self.engine_id,
                instance_id,
                type(exc).__name__,
                exc,
            )
            return
        if one.claimed is None:
            return
        if self.adopt(one.claimed) is None:
            await self.serve_unheld(instance_id)
        else:
            await self.serve_inbox(instance_id)

    async def serve_unheld(self, instance_id: str) -> None:
        """Answer the pending rows of a claimed instance this engine does not run; release it.

        A finished instance (or one of a workflow this engine lacks) answers
        from what is stored, as :meth:`Engine._request_here` does; ``retry`` of
        a failed one runs it here. Never raises (a storage error is logged and
        leaves the rows pending).
        """
        try:
            for row in await self.store.pending_requests(instance_id):
                if not await self._serve_row(row.request, held=False):
                    break
        except Exception as exc:
            _log.warning(
                "engine %s could not answer the inbox of %r (%s: %s)",
                self.engine_id,
                instance_id,
                type(exc).__name__,
                exc,
            )
        finally:
            if self.engine._registry.get(instance_id) is None:
                await self._release([instance_id])

    # -- wait ----------------------------------------------------------------------------------

    async def wait(self, instance_id: str) -> Instance:
        """Return the instance once it is terminal, wherever it runs.

        An instance a runner of this engine runs is waited for here: its
        terminal snapshot is the one that runner stored (no read, no
        notification). Any other is woken by the store's ``Finished``
        notification, and polls every TTL/4. The first look may use this
        engine's snapshot of an instance it holds; every look after a wake-up
        reads the store, since the notification can come before this engine's
        runner has taken in the write that sent it. The event is created before
        each look, so no wake-up is lost between the look and the wait.
        Cancelling it changes nothing.

        Raises:
            InstanceNotFound: no instance has that id.
            RunnerFailed: this engine's runner of it crashed past the restart budget.
            EngineClosed: the engine closed first.
        """
        engine = self.engine
        woken = False
        self._waiting[instance_id] = self._waiting.get(instance_id, 0) + 1
        try:
            while True:
                engine._check_open()
                finished = self._finished.setdefault(instance_id, trio.Event())
                entry = engine._registry.get(instance_id)
                if entry is not None and entry.state is State.STUCK:
                    raise RunnerFailed(stuck_message(engine, entry))
                snapshot = entry.snapshot if entry is not None and entry.state in _HELD else None
                if snapshot is not None and not woken:
                    instance = detached_instance(snapshot)
                else:
                    instance = await engine._load(instance_id)  # what is stored is the news
                if instance.status.is_terminal:
                    return instance
                woken = True
                if entry is not None and entry.state is State.LIVE:
                    done = await self._live_until_done(entry, finished)
                    if done is not None:
                        return done
                else:
                    with trio.move_on_after(self.poll):
                        await finished.wait()
                if finished.is_set() and self._finished.get(instance_id) is finished:
                    del self._finished[instance_id]
                if engine._closed:
                    raise EngineClosed(
                        f"the engine closed before instance {instance_id!r} finished"
                    )
        finally:
            left = self._waiting.pop(instance_id) - 1
            if left:
                self._waiting[instance_id] = left
            else:
                self._finished.pop(instance_id, None)

    async def _live_until_done(self, entry: Entry, finished: trio.Event) -> Instance | None:
        """Wait, at most a poll, for a LIVE entry's runner to end or a ``Finished`` notification.

        The runner stores the terminal snapshot with its fenced write, then
        marks the entry FINISHED: that snapshot is returned as it is (no
        read). The notification may come first; the runner then gets TTL/32
        more to take in its write. None otherwise (dropped, passivated, a
        runner later than that, or a poll went by): the caller reads the store.
        """
        if entry.finished is None:
            entry.finished = trio.Event()
        with trio.move_on_after(self.poll):
            await _first_of(entry.finished, finished)
        if finished.is_set():
            # Stored as finished: the runner is about to take in its write (the store may
            # tell listeners first). A runner that takes longer costs a read, not a poll.
            with trio.move_on_after(self.poll / 8):
                await entry.finished.wait()
        snapshot = entry.snapshot
        if entry.state is State.FINISHED and snapshot is not None and snapshot.status.is_terminal:
            return detached_instance(snapshot)
        return None

    # -- notifications -------------------------------------------------------------------------

    def on_notification(self, note: Notification) -> None:
        """Turn one notification into the wake-up it stands for."""
        match note:
            case Wake(instance_id=instance_id):
                entry = self.engine._registry.get(instance_id)
                if entry is not None and entry.state in _HELD:
                    self.engine._nursery.start_soon(self.serve_inbox, instance_id)
            case Replied(request_id=request_id):
                replied = self._replies.get(request_id)
                if replied is not None:
                    replied.set()
            case Finished(instance_id=instance_id):
                finished = self._finished.get(instance_id)
                if finished is not None:
                    finished.set()
            case Runnable():
                self.claimer_wake.set()

    async def _listen_loop(self) -> None:
        """Receive notifications until cancelled; resubscribe after a store error."""
        while True:
            try:
                async with self.store.listen(self.engine_id) as channel:
                    async for note in channel:
                        self.on_notification(note)
            except Exception as exc:
                _log.warning(
                    "engine %s lost its notifications (%s: %s); polling until they are back",
                    self.engine_id,
                    type(exc).__name__,
                    exc,
                )
            await trio.sleep(self.poll)

    # -- internals -----------------------------------------------------------------------------

    def _drop_if_held(self, instance_id: str) -> None:
        entry = self.engine._registry.get(instance_id)
        if entry is not None and entry.state in _HELD:
            self.drop(entry, LeaseLost(f"instance {instance_id!r} is held by another engine now"))

    async def _let_go_if_passive(self, instance_id: str) -> None:
        entry = self.engine._registry.get(instance_id)
        if entry is not None and entry.state is State.PASSIVE:
            await self.let_go(entry)

    def _bounded_shield(self) -> trio.CancelScope:
        """A scope shielded from cancellation for at most a TTL (a store that hangs ends it)."""
        return trio.CancelScope(shield=True, deadline=trio.current_time() + self.store.lease_ttl)

    async def _release(self, instance_ids: list[str]) -> None:
        with self._bounded_shield():
            try:
                await self.store.release_instances(self.lease, instance_ids)
            except Exception as exc:
                _log.warning(
                    "engine %s could not release %s (%s: %s); they wait for its lease to end",
                    self.engine_id,
                    instance_ids,
                    type(exc).__name__,
                    exc,
                )


async def _first_of(first: trio.Event, second: trio.Event) -> None:
    """Return once either event is set."""
    if first.is_set() or second.is_set():
        await trio.lowlevel.checkpoint()
        return
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            await second.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        await first.wait()
        nursery.cancel_scope.cancel()


def _unwrap(answer: Answer | None) -> Any:
    """Return an accepted answer's value, or raise the refusal as its ``hx`` exception."""
    match answer:
        case Accepted(value=value):
            return value
        case Refused(error=error, message=message):
            raise _error_class(error)(message)
    raise AssertionError(f"no answer: {answer!r}")  # pragma: no cover
