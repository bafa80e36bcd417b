"""Admission under ``max_active``: a slot per admitted instance, a queue of PENDING ones.

The core says which workflows are limited and in what order waiting instances
are admitted (:mod:`.._core._admission`); this module keeps, per limited
workflow name, the ids holding a slot and a heap of the PENDING instances, and
admits the next one whenever a slot frees: under the instance's write token
it applies ``Start``, persists that, and gives the instance its runner.

A PENDING instance has a passive registry entry (no runner, no task), so
``get``, ``wait``, ``cancel`` and ``resume`` reach it as usual; one cancelled
while it waits simply leaves the queue. The queue is rebuilt from storage by
``open_engine``, and slots from the RUNNING and WAITING instances it finds.
"""

from __future__ import annotations

import collections
import heapq
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, final

import trio

from .._core._admission import holds_slot, limits, queue_key
from .._core._engine import Command, Start, Transition, apply
from .._core._errors import RevisionConflict
from .._core._model import Instance, Status
from .._core._workflow import Workflow
from ..storage._shared import AdmissionFull, LeaseLost
from ._registry import Entry, State
from ._runner import RETRY_FIRST, RETRY_MAX, Runner

if TYPE_CHECKING:
    from ._engine import Engine
    from ._shared import SharedRuntime

_log = logging.getLogger("hephaestus.engine")


class Admission:
    """One engine's admission slots and queues, per limited workflow name."""

    __slots__ = ("admitted", "admitting", "engine", "limits", "queues", "ready", "sequence")

    def __init__(self, engine: Engine, workflows: list[Workflow]) -> None:
        self.engine = engine
        self.limits = limits(workflows)
        self.admitted: dict[str, set[str]] = {name: set() for name in self.limits}
        self.queues: dict[str, list[tuple[tuple[float, int, str], str]]] = {
            name: [] for name in self.limits
        }
        self.sequence = 0
        self.ready: dict[str, collections.deque[Entry]] = {
            name: collections.deque() for name in self.limits
        }
        """Instances given a slot, to be started in this order by the admitting task."""
        self.admitting: set[str] = set()
        """The workflow names whose admitting task runs."""

    def limited(self, name: str) -> bool:
        """True when workflow ``name`` has a ``max_active``."""
        return name in self.limits

    def try_admit(self, name: str, instance_id: str) -> bool:
        """Take a slot for a new instance now if one is free and nobody queues; else False.

        A slot taken must be given back with :meth:`release` if the start fails.
        """
        if name not in self.limits:
            return True
        admitted = self.admitted[name]
        if len(admitted) >= self.limits[name] or self.queues[name]:
            return False
        admitted.add(instance_id)
        return True

    def next_sequence(self) -> int:
        """The start order to store in the next PENDING instance."""
        self.sequence += 1
        return self.sequence

    def enqueue(self, instance: Instance, *, admit: bool = True) -> None:
        """Queue stored PENDING ``instance`` (its entry is passive) and admit what fits.

        With ``admit=False`` (recovery, which queues every stored one first)
        nothing is admitted until :meth:`fill_all`.
        """
        name = instance.workflow
        self.sequence = max(self.sequence, instance.sequence)
        heapq.heappush(self.queues[name], (queue_key(instance), instance.id))
        if admit:
            self.fill(name)

    def fill_all(self) -> None:
        """Admit what fits in every limited workflow."""
        for name in self.limits:
            self.fill(name)

    def recovered(self, instance: Instance) -> None:
        """Count an active instance that holds a slot (RUNNING or WAITING): recovered, retried."""
        if instance.workflow in self.limits and holds_slot(instance):
            self.admitted[instance.workflow].add(instance.id)

    def release(self, instance: Instance) -> None:
        """Give back the slot of ``instance``, which has ended (or failed to start)."""
        self.release_id(instance.workflow, instance.id)

    def release_id(self, name: str, instance_id: str) -> None:
        """Give back the slot that instance ``instance_id`` of workflow ``name`` holds, if any."""
        admitted = self.admitted.get(name)
        if admitted is not None and instance_id in admitted:
            admitted.discard(instance_id)
            self.fill(name)

    def fill(self, name: str) -> None:
        """Admit queued instances of ``name`` while slots are free, first come first served."""
        admitted = self.admitted[name]
        queue = self.queues[name]
        registry = self.engine._registry
        while queue and len(admitted) < self.limits[name]:
            _, instance_id = heapq.heappop(queue)
            entry = registry.get(instance_id)
            if (
                entry is None
                or entry.state is not State.PASSIVE
                or entry.status is not Status.PENDING
            ):
                continue  # cancelled (or deleted) while it waited
            admitted.add(instance_id)
            self.ready[name].append(entry)
        if self.ready[name] and name not in self.admitting:
            self.admitting.add(name)
            self.engine._nursery.start_soon(self._admit_ready, name)

    async def _admit_ready(self, name: str) -> None:
        """Start the instances given a slot one after another, so they start in queue order."""
        ready = self.ready[name]
        try:
            while ready:
                await self._admit(ready.popleft())
        finally:
            self.admitting.discard(name)

    async def _admit(self, entry: Entry) -> None:
        """Start the PENDING instance of ``entry`` (a slot is held for it) and give it a runner.

        Its snapshot is loaded from storage under the token (the entry is an
        index record); one changed or deleted under the engine meanwhile is
        left as stored and gives its slot back.
        """
        engine = self.engine
        workflow = entry.workflow
        assert workflow is not None
        await entry.token.acquire()
        try:
            if entry.state is not State.PASSIVE or entry.status is not Status.PENDING:
                self.release_id(workflow.name, entry.id)  # cancelled while the slot was on its way
                return
            if not await self._load(entry, workflow):
                self.release_id(workflow.name, entry.id)
                return
            before = entry.instance
            transition = apply(workflow, before, Start(), engine.clock.now())
            if not await self._persist(entry, transition, before.revision):
                entry.passivate()
                return
            entry.instance = transition.instance
        finally:
            entry.token.release()
        self._started(entry, workflow, transition.commands)

    def _started(self, entry: Entry, workflow: Workflow, commands: Sequence[Command]) -> None:
        """Announce an admitted instance whose Start is stored, and give it its runner."""
        engine = self.engine
        if engine.telemetry.enabled:
            engine.telemetry.emit(
                "workflow.admit",
                instance_id=entry.id,
                workflow=workflow.name,
                metadata={"version": workflow.version},
            )
        engine.activate(entry, commands)

    async def _load(self, entry: Entry, workflow: Workflow) -> bool:
        """Load the passive entry's snapshot, retrying storage errors; False if it is not there."""
        delay = RETRY_FIRST
        while True:
            try:
                return await Runner(self.engine, entry, workflow).load_passive()
            except Exception as exc:
                _log.warning(
                    "reading pending instance %r failed (%s: %s); retrying",
                    entry.id,
                    type(exc).__name__,
                    exc,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _persist(self, entry: Entry, transition: Transition, expected: int) -> bool:
        """Store the admitted snapshot, retrying storage errors; False if it was replaced."""
        delay = RETRY_FIRST
        failures = 0
        engine = self.engine
        while True:
            try:
                await engine.storage.put(transition.instance, expected_revision=expected)
            except RevisionConflict:
                _log.warning(
                    "instance %r changed in storage while it was being admitted; left as stored",
                    entry.id,
                )
                self.release_id(transition.instance.workflow, entry.id)
                return False
            except Exception as exc:
                failures += 1
                if failures == 1:
                    _log.warning(
                        "admitting instance %r failed (%s: %s); retrying",
                        entry.id,
                        type(exc).__name__,
                        exc,
                    )
                if engine.telemetry.enabled:
                    engine.telemetry.emit(
                        "storage.error",
                        instance_id=entry.id,
                        workflow=transition.instance.workflow,
                        metadata={
                            "operation": "put",
                            "error": type(exc).__name__,
                            "message": str(exc),
                            "failures": failures,
                            "retry_in": delay,
                        },
                    )
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            return True


@final
class SharedAdmission(Admission):
    """Admission on shared storage: the store counts the slots and keeps the queue.

    The counting of :class:`Admission` would hold per engine only, so here
    the store does it (``SharedStorage.put_limited``): every write that may
    change an instance's slot goes through it (:class:`._lease.LeasedStorage`),
    in the transaction that stores the snapshot. This class only:

    - stores every new instance of a limited workflow PENDING (the store
      gives it a slot in that very write if one is free and nobody queues);
      its registry record is dropped at once, since a queued instance has no
      owner in the store;
    - starts a PENDING instance its claimer claimed (a claim returns PENDING
      instances only once the store gave them a slot, :meth:`expect`):
      ``Start`` is applied and stored with ``put_limited``; ``AdmissionFull``
      (no slot after all) releases it again, to wait in the store's queue.
      One claimed for a request (``cancel``, an early ``resume``) is only
      served and let go, as any passivated instance;
    - on each claimer round (:meth:`heal`), asks the store to hand free slots
      to the queue (:meth:`SharedStorage.admit_pending`) and lets go of the
      PENDING instances it still holds (a claim then finds those with a slot).

    Slots of instances an engine dies with stay taken until another engine
    claims those instances and finishes them.
    """

    __slots__ = ("expected", "healed_at", "shared")

    def __init__(self, engine: Engine, workflows: list[Workflow], shared: SharedRuntime) -> None:
        super().__init__(engine, workflows)
        self.shared = shared
        self.expected: set[str] = set()
        """PENDING instances the claimer claimed with a slot, to start once adopted."""
        self.healed_at = -math.inf
        """Trio time of the last :meth:`heal`."""

    def expect(self, instance: Instance) -> None:
        """Note that a claim took PENDING ``instance`` (it holds a slot): start it once adopted."""
        if instance.status is Status.PENDING and instance.workflow in self.limits:
            self.expected.add(instance.id)
            # It holds its slot, so its Start is a plain (group-committed) fenced write: the
            # slot flag stays, and a write that could have cleared it would have changed its
            # revision, which the fence checks.
            self.shared.leased.slotted.add(instance.id)

    def adopted(self, instance_id: str, entry: Entry | None) -> None:
        """A claimed instance was adopted as ``entry`` (None: not run here).

        A claimed PENDING instance that was adopted fresh has been started
        already (:meth:`enqueue`). One whose entry is still LIVE and PENDING
        is a new instance whose ``start`` has not yet taken in the reply to
        its PENDING write: the claim made this engine its owner, so it stays
        expected, and :meth:`enqueue` starts it instead of forgetting it.
        """
        if entry is None or entry.state is not State.LIVE or entry.status is not Status.PENDING:
            self.expected.discard(instance_id)

    def try_admit(self, name: str, instance_id: str) -> bool:
        """Never admit on the spot: the store decides, in the PENDING write."""
        return name not in self.limits

    def enqueue(self, instance: Instance, *, admit: bool = True) -> None:
        """A PENDING instance: start it if this engine holds it, else forget it here.

        ``admit`` True: this engine has just stored it (released, see the
        class doc): its record leaves the registry, and the claimer looks at
        once in case the store gave it a slot; unless the claimer claimed it
        back during that write (:meth:`adopted`), which makes it as below.
        ``admit`` False: recovered from a claim, so this engine owns it: start
        it if the claimer claimed it with a slot (:meth:`expect`); else a
        request claimed it, and lets it go.
        """
        engine = self.engine
        entry = engine._registry.get(instance.id)
        if entry is None:
            return
        if admit and instance.id in self.expected:
            admit = False  # claimed back by this engine during its write (see adopted)
        if admit:
            if entry.state is State.PASSIVE:
                del engine._registry[instance.id]
                engine.timers.disarm_all(instance.id)
                entry.mark_done(State.FINISHED)
            self.shared.claimer_wake.set()
            return
        if instance.id in self.expected:
            self.expected.discard(instance.id)
            engine._nursery.start_soon(self._admit_held, entry)

    def recovered(self, instance: Instance) -> None:
        """Nothing to count here: the store counts the slots."""

    def release_id(self, name: str, instance_id: str) -> None:
        """Nothing to give back here: the write that ended the instance freed its slot."""

    def fill(self, name: str) -> None:
        """Nothing to fill here: the store hands freed slots on (see :meth:`heal`)."""

    async def heal(self) -> None:
        """Have the store hand free slots to its queues; let go of PENDING instances held here.

        At most once per poll interval (TTL/4), however often the claimer is
        woken: the writes that free slots hand them on themselves, this only
        mends what other writes left. Never raises (storage errors are logged;
        the next round tries again).
        """
        engine = self.engine
        now = trio.current_time()
        if now < self.healed_at + self.shared.poll:
            return
        self.healed_at = now
        for name, limit in self.limits.items():
            try:
                await self.shared.store.admit_pending(name, max_active=limit)
            except Exception as exc:
                _log.warning(
                    "engine %s could not hand on free slots of %r (%s: %s)",
                    self.shared.engine_id,
                    name,
                    type(exc).__name__,
                    exc,
                )
        for entry in list(engine._registry.values()):
            if (
                entry.state is State.PASSIVE
                and entry.status is Status.PENDING
                and entry.workflow is not None
                and entry.workflow.name in self.limits
                and entry.token.idle()
            ):
                engine._nursery.start_soon(self.shared.let_go, entry)

    async def _admit_held(self, entry: Entry) -> None:
        """Start the PENDING instance of ``entry``, which this engine owns, if it gets a slot.

        No slot (``AdmissionFull``), or a snapshot changed meanwhile: the
        instance is released to wait in the store's queue. A lost lease drops
        it. Storage errors are retried with backoff. Never raises.
        """
        engine = self.engine
        workflow = entry.workflow
        assert workflow is not None
        transition: Transition | None = None
        await entry.token.acquire()
        try:
            if entry.state is not State.PASSIVE or entry.status is not Status.PENDING:
                return
            delay = RETRY_FIRST
            while transition is None:
                try:
                    if not await Runner(engine, entry, workflow).load_passive():
                        break  # changed under us: what is stored wins
                    before = entry.instance
                    started = apply(workflow, before, Start(), engine.clock.now())
                    await engine.storage.put(started.instance, expected_revision=before.revision)
                    transition = started
                except AdmissionFull:
                    break
                except LeaseLost as exc:
                    self.shared.drop(entry, exc)
                    return
                except RevisionConflict:
                    break
                except Exception as exc:
                    _log.warning(
                        "admitting instance %r failed (%s: %s); retrying",
                        entry.id,
                        type(exc).__name__,
                        exc,
                    )
                    await trio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    if entry.state is not State.PASSIVE:
                        return
            if transition is not None:
                entry.instance = transition.instance
            else:
                entry.passivate()
        finally:
            entry.token.release()
        if transition is None:
            await self.shared.let_go(entry)
            return
        self._started(entry, workflow, transition.commands)
